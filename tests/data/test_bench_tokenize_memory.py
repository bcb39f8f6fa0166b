"""bench/tokenize_memory.py in its smoke mode: one line encoded in pieces gives the ids of the
tokenizer encoding the document whole (1 vs 2 workers: tests/data/test_shards.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "tokenize_memory.py"


def test_smoke_run(tiny_tokenizer_dir):
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--tokenizer", str(tiny_tokenizer_dir)]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["identical_to_peer"] and report["document_bytes"] >= 99_000
    assert [r["what"] for r in report["runs"]] == [
        "aquila data tokenize (workers 1)",
        "tokenizers Tokenizer.encode(whole document)",
    ]
    assert all(r["peak_rss_mb"] > 0 and r["tokens"] > 1000 for r in report["runs"])
