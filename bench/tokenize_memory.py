"""Peak memory and speed of `aquila data tokenize`: one huge single-line document, or a corpus.

``--shape line`` (default) builds a bilingual document of ``--mb`` megabytes on ONE line
(sample-corpus English and Chinese text, joined by spaces, repeated) as a one-record JSONL file;
``--shape docs`` writes the sample corpus' documents, one JSONL record each, repeated to ``--mb``.
Each of these runs in a fresh process whose peak RSS is read with ``wait4``:

* ``aquila data tokenize`` of the file (``--workers`` 1, and N if given);
* the peer: Hugging Face ``tokenizers`` scripted by hand, as a user would: the whole document
  in one ``encode`` call (line), or ``encode_batch`` over batches of 1,024 records (docs).

It checks that the shards of 1 and N workers are identical and that their tokens equal the
peer's ids (each document followed by the EOS).

    python bench/tokenize_memory.py --mb 50 [--workers 2] [--json]
    python bench/tokenize_memory.py --shape docs --mb 20 --workers 2
    python bench/tokenize_memory.py --smoke --tokenizer DIR   # tiny, for the test suite
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


def build_corpus(path: Path, megabytes: float) -> int:
    """Sample-corpus documents, one JSONL record each, repeated to ``megabytes`` MB; bytes."""
    from aquila.data.samples import load_sample_corpus

    docs = [d for s in load_sample_corpus("train") for d in s.documents]
    target, written = int(megabytes * 1e6), 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            for d in docs:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
                written += len(d.encode("utf-8"))
                if written >= target:
                    break
    return written


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


DEFAULT_TOKENIZER = """
from aquila.train.run import cache_dir
from aquila.tokenizer.train import default_tokenizer
print(default_tokenizer(cache_dir()))
"""

PEER_LINE = """
import json, sys, numpy as np
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.encode_special_tokens = True
text = json.loads(open(sys.argv[2], encoding="utf-8").readline())["text"]
ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype="<u4")
ids.tofile(sys.argv[3])
"""

PEER_DOCS = """
import json, sys, numpy as np
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.encode_special_tokens = True
eos = np.array([tok.token_to_id("</s>")], dtype="<u4")
def flush(texts, out):
    parts = []
    for e in tok.encode_batch(texts, add_special_tokens=False):
        parts += [np.asarray(e.ids, dtype="<u4"), eos]
    out.write(np.concatenate(parts).tobytes())
with open(sys.argv[2], encoding="utf-8") as f, open(sys.argv[3], "wb") as out:
    texts = []
    for line in f:
        texts.append(json.loads(line)["text"])
        if len(texts) == 1024:
            flush(texts, out)
            texts = []
    if texts:
        flush(texts, out)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=("line", "docs"), default="line", help="one line or a corpus")
    p.add_argument("--mb", type=float, default=50.0, help="text size in MB (default 50)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer dir (default: the v8192 default)")
    p.add_argument("--workers", type=int, default=0, help="also run with this many workers")
    p.add_argument("--no-peer", action="store_true", help="skip the whole-document peer")
    p.add_argument("--smoke", action="store_true", help="0.1 MB, for the test suite")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # internal: write the input
    args = p.parse_args(argv)
    if args.build:
        sys.path.insert(0, SRC)
        build = build_document if args.shape == "line" else build_corpus
        print(build(args.build, args.mb))
        return 0
    if args.smoke:
        args.mb = 0.1
    # This process stays small (no numpy, no torch until the runs are done): a child's peak
    # RSS counts its parent's memory at the time it was spawned.
    tok_dir = args.tokenizer or Path(
        run_measured([sys.executable, "-c", DEFAULT_TOKENIZER])[2].strip()
    )
    results: dict = {"shape": args.shape, "mb": args.mb, "tokenizer": str(tok_dir), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "big.jsonl"
        # Built in a process of its own: a child's peak RSS counts its parent's memory at fork.
        cmd = [sys.executable, __file__, "--shape", args.shape, "--mb", str(args.mb)]
        results["document_bytes"] = int(run_measured([*cmd, "--build", str(doc)])[2])
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
            import numpy as np

            peer_out = Path(tmp) / "peer.bin"
            script = PEER_LINE if args.shape == "line" else PEER_DOCS
            cmd = [sys.executable, "-c", script, str(tok_dir / "tokenizer.json"), str(doc)]
            rss, seconds, _ = run_measured([*cmd, str(peer_out)])
            peer = np.fromfile(peer_out, dtype="<u4")
            if args.shape == "line":
                peer = np.append(peer, np.frombuffer(tokens[1][-4:], dtype="<u4"))  # its EOS
            ours = np.frombuffer(tokens[1], dtype="<u4")
            what = "Tokenizer.encode(whole document)" if args.shape == "line" else "encode_batch"
            results["runs"].append(
                {
                    "what": f"tokenizers {what}",
                    "peak_rss_mb": round(rss, 1),
                    "seconds": round(seconds, 2),
                    "mb_per_s": round(results["document_bytes"] / 1e6 / seconds, 3),
                    "tokens": int(len(peer)),
                }
            )
            results["identical_to_peer"] = bool(np.array_equal(ours, peer))
    if args.json:
        print(json.dumps(results))
    else:
        shape = "one line" if args.shape == "line" else "documents"
        print(f"{shape}, {results['document_bytes'] / 1e6:.1f} MB, tokenizer {tok_dir.name}")
        for r in results["runs"]:
            print(
                f"  {r['what']:<40} peak RSS {r['peak_rss_mb']:>8.1f} MB  "
                f"{r['seconds']:>7.2f} s  {r['mb_per_s']:>6.2f} MB/s  {r['tokens']:,} tokens"
            )
        for key in ("workers_identical", "identical_to_peer"):
            if key in results:
                print(f"  {key}: {results[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
