"""`aquila data tokenize` on a disk that cannot take the shard: one line, exit code 4, nothing
of the source left, the other sources of the data directory untouched, and it tokenizes once
there is room."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import SRC, one_line, tree

# A file-size limit makes every write past it fail with EFBIG, as a full disk fails with ENOSPC.
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from aquila.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_shard_that_does_not_fit(shard_dir, tiny_tokenizer_dir, english_text, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shard_dir, data)
    raw = tmp_path / "big.jsonl"
    with raw.open("w", encoding="utf-8") as f:
        for i in range(0, 150_000, 1500):
            f.write(json.dumps({"text": english_text[i : i + 1500]}) + "\n")
    before = tree(data)
    args = ["data", "tokenize", str(raw), "--name", "big", "--tokenizer", str(tiny_tokenizer_dir)]
    args += ["--out", str(data), "--json"]  # --json: no progress bar on stderr
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED, str(64 * 1024), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 4, proc.stderr
    line = one_line(proc.stderr)
    assert f"{data / 'big'}: source 'big' could not be written (File too large)" in line, line
    assert not (data / "big").exists() and tree(data) == before
    proc = subprocess.run(
        [sys.executable, "-m", "aquila", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (data / "big" / "manifest.json").is_file()
