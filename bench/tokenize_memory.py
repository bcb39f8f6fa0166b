"""Peak memory and speed of `aquila data tokenize` on one huge single-line document.

Builds a bilingual document of ``--mb`` megabytes on ONE line (sample-corpus English and Chinese
text, joined by spaces, repeated), writes it as a one-record JSONL file, and runs, each in a
fresh process whose peak RSS is read with ``wait4``:

* ``aquila data tokenize`` of the file (``--workers`` 1, and N if given);
* the peer: Hugging Face ``tokenizers`` encoding the whole document in one call
  (``Tokenizer.from_file(...).encode(text)``), what a user scripting it by hand would do.

It also checks that the shard's tokens equal the peer's ids (plus the EOS).

    python bench/tokenize_memory.py --mb 50 [--workers 2] [--json]
    python bench/tokenize_memory.py --smoke        # 1 MB, seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def build_document(path: Path, megabytes: float) -> int:
    """One JSONL record holding ``megabytes`` MB of bilingual text on one line; its bytes."""
    from aquila.data.samples import load_sample_corpus

    parts = []
    for source in load_sample_corpus("train"):
        parts.extend(d.replace("\n", " ") for d in source.documents[:40])
    unit = " ".join(parts)
    target = int(megabytes * 1e6)
    reps = max(1, -(-target // len(unit.encode("utf-8"))))
    text = (" ".join([unit] * reps)).encode("utf-8")[:target].decode("utf-8", errors="ignore")
    path.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(text.encode("utf-8"))


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds, stdout) of ``cmd`` run in its own process."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
        out.seek(0)
        text = out.read()
    return usage.ru_maxrss / 1024, seconds, text  # ru_maxrss is in KiB on Linux


PEER = """
import json, sys, numpy as np
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.encode_special_tokens = True
text = json.loads(open(sys.argv[2], encoding="utf-8").readline())["text"]
ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype="<u4")
ids.tofile(sys.argv[3])
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=50.0, help="document size in MB (default 50)")
    p.add_argument("--workers", type=int, default=0, help="also run with this many workers")
    p.add_argument("--no-peer", action="store_true", help="skip the whole-document peer")
    p.add_argument("--smoke", action="store_true", help="1 MB, for the test suite")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.smoke:
        args.mb = 1.0
    sys.path.insert(0, SRC)
    import numpy as np

    from aquila.engine.run import cache_dir
    from aquila.tokenizer.train import default_tokenizer

    tok_dir = default_tokenizer(cache_dir())
    results: dict = {"document_mb": args.mb, "tokenizer": str(tok_dir), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "big.jsonl"
        results["document_bytes"] = build_document(doc, args.mb)
        runs = [1] + ([args.workers] if args.workers > 1 else [])
        tokens = {}
        for workers in runs:
            out = Path(tmp) / f"out-{workers}"
            cmd = [sys.executable, "-m", "aquila", "data", "tokenize", str(doc), "--name", "big"]
            cmd += ["--tokenizer", str(tok_dir), "--out", str(out), "--json"]
            if workers > 1:
                cmd += ["--workers", str(workers)]
            rss, seconds, stdout = run_measured(cmd)
            manifest = json.loads(stdout)
            tokens[workers] = (out / "big" / "tokens.bin").read_bytes()
            results["runs"].append(
                {
                    "what": f"aquila data tokenize (workers {workers})",
                    "peak_rss_mb": round(rss, 1),
                    "seconds": round(seconds, 2),
                    "mb_per_s": round(manifest["bytes"] / 1e6 / seconds, 3),
                    "tokens": manifest["tokens"],
                }
            )
        results["workers_identical"] = len(set(tokens.values())) == 1
        if not args.no_peer:
            peer_out = Path(tmp) / "peer.bin"
            cmd = [sys.executable, "-c", PEER, str(tok_dir / "tokenizer.json"), str(doc)]
            rss, seconds, _ = run_measured([*cmd, str(peer_out)])
            peer = np.fromfile(peer_out, dtype="<u4")
            ours = np.frombuffer(tokens[1], dtype="<u4")
            results["runs"].append(
                {
                    "what": "tokenizers Tokenizer.encode(whole document)",
                    "peak_rss_mb": round(rss, 1),
                    "seconds": round(seconds, 2),
                    "mb_per_s": round(results["document_bytes"] / 1e6 / seconds, 3),
                    "tokens": int(len(peer)) + 1,
                }
            )
            results["identical_to_whole_document"] = bool(
                len(ours) == len(peer) + 1 and np.array_equal(ours[:-1], peer)
            )
    if args.json:
        print(json.dumps(results))
    else:
        print(f"one line of {results['document_bytes'] / 1e6:.1f} MB, tokenizer {tok_dir.name}")
        for r in results["runs"]:
            print(
                f"  {r['what']:<46} peak RSS {r['peak_rss_mb']:>8.1f} MB  "
                f"{r['seconds']:>7.2f} s  {r['mb_per_s']:>6.2f} MB/s  {r['tokens']:,} tokens"
            )
        for key in ("workers_identical", "identical_to_whole_document"):
            if key in results:
                print(f"  {key}: {results[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
