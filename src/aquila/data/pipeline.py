"""The DMU stages over a workspace: clean -> dedup -> decontaminate.

Stages stream: the coordinating process holds descriptions of parts (a split of an input file,
an output part's path), never documents. Workers (local processes or Ray tasks) read their own
part from disk and write their own outputs, so a worker's memory is bounded by one part whatever
the corpus size. Every part has a fingerprint of its inputs and settings and only runs when the
recorded fingerprint differs or its output is missing: a crashed run resumes where it stopped,
and a repeated run does nothing. Only the coordinating process records results in the catalog.

Dedup runs as four parallel steps (see ``aquila.data.dedup``): signatures per part, buckets
per LSH band, verification of candidate pairs, then a filter per part.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aquila.data import clean, decontam, dedup
from aquila.data.catalog import PartRecord, file_sha256
from aquila.data.executor import default_workers, run_tasks
from aquila.data.readers import ReadStats, Split, iter_split, plan_splits
from aquila.data.workspace import PART_STRIDE, DataWorkspace, fingerprint, read_part, write_part
from aquila.errors import UserError

DEFAULT_PART_DOCS = 1000
# Bumped when a stage's rules change, so existing outputs count as stale.
STAGE_VERSION = {"clean": 3, "dedup": 2, "decontaminate": 1}
# Candidate pairs per verification task (it holds the texts and shingle sets of the documents
# they name, about 0.1 MB per pair at 8 K-character documents): small enough that a verification
# worker stays below a clean worker, so the largest worker does not grow with the corpus when
# a bigger corpus fills every task.
VERIFY_PAIRS = 256
Progress = Callable[[int, int], None]  # (parts done, parts total)


@dataclass
class StageSummary:
    stage: str
    documents_in: int = 0
    documents_kept: int = 0
    documents_removed: dict[str, int] = field(default_factory=dict)
    chars_in: int = 0
    chars_kept: int = 0
    parts_run: int = 0
    parts_skipped: int = 0
    seconds: float = 0.0
    per_source: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def add(self, rec: PartRecord) -> None:
        src = self.per_source.setdefault(
            rec.source, {"documents_in": 0, "documents_kept": 0, "removed": Counter()}
        )
        src["documents_in"] += rec.documents_in
        src["documents_kept"] += rec.documents_kept
        src["removed"].update(rec.removed)
        self.documents_in += rec.documents_in
        self.documents_kept += rec.documents_kept
        self.chars_in += rec.chars_in
        self.chars_kept += rec.chars_kept
        for k, v in rec.removed.items():
            self.documents_removed[k] = self.documents_removed.get(k, 0) + v

    def to_json(self) -> dict:
        per = {
            k: {**v, "removed": dict(sorted(v["removed"].items()))}
            for k, v in self.per_source.items()
        }
        mb = self.chars_in / 1e6
        return {
            "stage": self.stage,
            "documents_in": self.documents_in,
            "documents_kept": self.documents_kept,
            "documents_removed": dict(sorted(self.documents_removed.items())),
            "chars_in": self.chars_in,
            "chars_kept": self.chars_kept,
            "parts_run": self.parts_run,
            "parts_skipped": self.parts_skipped,
            "seconds": round(self.seconds, 3),
            "mchars_per_s": round(mb / self.seconds, 3)
            if self.seconds and self.parts_run
            else None,
            "per_source": per,
            **self.extra,
        }


@dataclass
class PartResult:
    record: PartRecord
    removals: list[tuple[str, str, str]]
    extra: dict = field(default_factory=dict)


def _result(stage, source, part, fp, out, docs, kept, removals, extra=None) -> PartResult:
    write_part(out, kept)
    rec = PartRecord(
        stage, source, part, fp, len(docs), len(kept),
        sum(len(d["text"]) for d in docs), sum(len(d["text"]) for d in kept),
        dict(Counter(r for _, r, _ in removals)),
    )  # fmt: skip
    return PartResult(rec, removals, extra or {})


# -- clean: one task per input split, writing parts of part_docs documents -----------------------
@dataclass(frozen=True)
class _CleanTask:
    source: str
    lang: str
    text_field: str
    file_index: int
    split: Split
    index: int  # the split's number within the source
    fingerprint: str
    out_dir: Path
    part_docs: int
    done: frozenset[int] = frozenset()  # segments already finished with this fingerprint


def _clean_split(
    task: _CleanTask, cfg: clean.CleanConfig
) -> tuple[str, int, int, list[PartResult], dict]:
    """(source, split, segments, results of the segments run, skipped records by reason)."""
    stats = ReadStats()
    results: list[PartResult] = []
    segments = 0

    def flush(docs: list[dict]) -> None:
        nonlocal segments
        seg, segments = segments, segments + 1
        if seg in task.done:  # finished before a crash: read past it, do not redo it
            return
        part = task.index * PART_STRIDE + seg
        out = task.out_dir / f"part-{task.index:05d}-{seg:05d}.jsonl"
        res = clean.clean_documents(docs, task.lang, cfg)
        results.append(
            _result("clean", task.source, part, task.fingerprint, out, docs, res.kept,
                    res.removed, {"lines": res.boilerplate_lines})
        )  # fmt: skip

    docs: list[dict] = []
    for doc in iter_split(task.split, stats, task.text_field):
        docs.append({"id": f"{task.file_index}:{doc.id}", "text": doc.text, "source": task.source})
        if len(docs) >= task.part_docs:
            flush(docs)
            docs = []
    if docs or not segments:  # a split always has at least one (maybe empty) part
        flush(docs)
    return task.source, task.index, segments, results, stats.counts


# -- dedup -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SigTask:
    src: Path  # the clean part
    base: Path  # where its signature files go (base.sig.npy, base.keys.npy, base.ids.json)
    fingerprint: str


def _sig_files(base: Path) -> list[Path]:
    """base.sig.npy, base.keys.npy, base.ids.json and base.fp (written last)."""
    return [
        base.with_name(base.name + ext) for ext in (".sig.npy", ".keys.npy", ".ids.json", ".fp")
    ]


def _signature_part(task: _SigTask, cfg: dedup.DedupConfig) -> int:
    docs = read_part(task.src)
    exact, sig = dedup.signatures([d["text"] for d in docs], cfg)
    sig_path, keys_path, ids_path, fp_path = _sig_files(task.base)
    task.base.parent.mkdir(parents=True, exist_ok=True)
    np.save(sig_path, sig)
    np.save(keys_path, dedup.band_keys(exact, sig, cfg))
    ids_path.write_text(json.dumps([d["id"] for d in docs], ensure_ascii=False))
    fp_path.write_text(task.fingerprint)  # last: the files above are complete
    return len(docs)


def _signature_cached(task: _SigTask) -> bool:
    fp_path = _sig_files(task.base)[3]
    return fp_path.is_file() and fp_path.read_text() == task.fingerprint


@dataclass(frozen=True)
class _BucketTask:
    row: int  # 0: exact hashes, 1..: LSH bands
    parts: tuple[tuple[int, str], ...]  # (part ordinal, signature base path)


def _gids(ordinal: int, n: int) -> np.ndarray:
    return (np.uint64(ordinal) << np.uint64(32)) + np.arange(n, dtype=np.uint64)


def _bucket(task: _BucketTask, _cfg) -> tuple[int, np.ndarray]:
    keys, gids = [], []
    for ordinal, base in task.parts:
        row = np.load(_sig_files(Path(base))[1], mmap_mode="r")[task.row]
        keys.append(np.array(row))
        gids.append(_gids(ordinal, len(row)))
    k, g = np.concatenate(keys), np.concatenate(gids)
    if task.row:  # documents without shingles (key 0) share no band
        g, k = g[k != 0], k[k != 0]
    return task.row, dedup.bucket_pairs(k, g)


@dataclass(frozen=True)
class _VerifyTask:
    pairs: np.ndarray
    parts: dict[int, tuple[str, str]]  # ordinal -> (clean part path, signature base path)


def _verify(task: _VerifyTask, cfg: dedup.DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    need: dict[int, set[int]] = {}
    for g in task.pairs.ravel().tolist():
        need.setdefault(g >> 32, set()).add(g & 0xFFFFFFFF)
    sigs, texts = {}, {}
    for o, rows in need.items():
        src, base = task.parts[o]
        sig = np.load(_sig_files(Path(base))[0], mmap_mode="r")
        for i in rows:
            sigs[(o << 32) | i] = np.array(sig[i])
        with open(src, "rb") as f:  # only the lines the pairs name are decoded
            for i, line in enumerate(f):
                if i in rows:
                    texts[(o << 32) | i] = json.loads(line)["text"]
    a = np.stack([sigs[g] for g in task.pairs[:, 0].tolist()])
    b = np.stack([sigs[g] for g in task.pairs[:, 1].tolist()])
    return dedup.verify(task.pairs, dedup.jaccard_estimates(a, b), texts, cfg)


@dataclass(frozen=True)
class _FilterTask:
    source: str
    part: int
    fingerprint: str
    src: Path
    out: Path
    removed: dict[int, tuple[str, str]]  # position -> (reason, detail)


def _filter_part(task: _FilterTask, _shared: object) -> PartResult:
    docs = read_part(task.src)
    kept = [d for i, d in enumerate(docs) if i not in task.removed]
    removals = [(docs[i]["id"], *task.removed[i]) for i in sorted(task.removed)]
    return _result(
        "dedup", task.source, task.part, task.fingerprint, task.out, docs, kept, removals
    )


# -- decontaminate ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _DecontamTask:
    source: str
    part: int
    fingerprint: str
    src: Path
    out: Path


def _decontam_part(task: _DecontamTask, index: decontam.EvalIndex) -> PartResult:
    docs = read_part(task.src)
    kept, removals = [], []
    for d, hit in zip(docs, decontam.find_matches([d["text"] for d in docs], index)):
        if hit:
            removals.append((d["id"], "contaminated", f"eval={hit[0]} ngram={hit[1]}"))
        else:
            kept.append(d)
    return _result("decontaminate", task.source, task.part, task.fingerprint, task.out, docs,
                   kept, removals)  # fmt: skip


class Pipeline:
    def __init__(
        self,
        ws: DataWorkspace,
        executor: str = "local",
        workers: int | None = None,
        progress: Progress | None = None,
    ):
        self.ws, self.executor, self.workers = ws, executor, workers
        self.progress = progress or (lambda done, total: None)

    def _map(self, fn, tasks: list, shared=None):
        """Yield results as they finish, with the progress bar following."""
        self.progress(0, len(tasks))
        for n, res in enumerate(run_tasks(fn, tasks, shared, self.executor, self.workers), 1):
            yield res
            self.progress(n, len(tasks))

    def _run(self, fn, tasks: list, shared, summary: StageSummary) -> None:
        for res in self._map(fn, tasks, shared):
            self.ws.catalog.record_part(res.record, res.removals)
        summary.parts_run += len(tasks)

    def _is_done(self, stage: str, source: str, part: int, fp: str) -> bool:
        rec = self.ws.catalog.part(stage, source, part)
        return (
            rec is not None
            and rec.fingerprint == fp
            and self.ws.part_path(stage, source, part).exists()
        )

    def _collect(
        self, stage: str, names: list[str], summary: StageSummary, t0: float
    ) -> StageSummary:
        for name in names:
            for rec in self.ws.catalog.parts(stage, name):
                summary.add(rec)
        summary.seconds = time.perf_counter() - t0
        return summary

    def _inputs(self, stage: str, name: str, before: str) -> list[PartRecord]:
        self.ws.check_fresh(before, name)  # never build on stale or unfinished output
        return self.ws.catalog.parts(before, name)

    def _begin(self, stage: str, names: list[str]) -> dict[str, str]:
        """What the stage reads for each source; its old record is dropped until it finishes."""
        inputs = {n: self.ws.expected_inputs(stage, n) for n in names}
        for n in names:
            self.ws.catalog.set_stage_inputs(stage, n, None)
        return inputs

    def _finish(self, stage: str, inputs: dict[str, str]) -> None:
        for n, fp in inputs.items():
            self.ws.catalog.set_stage_inputs(stage, n, fp)

    # -- clean ---------------------------------------------------------------------------------
    def clean(
        self, names: list[str] | None = None, cfg: clean.CleanConfig | None = None,
        part_docs: int = DEFAULT_PART_DOCS,
    ) -> StageSummary:  # fmt: skip
        if part_docs < 1:
            raise UserError(f"--part-docs must be >= 1, got {part_docs}")
        cfg = cfg or clean.CleanConfig()
        t0, summary = time.perf_counter(), StageSummary("clean")
        sources = self.ws.catalog.sources(names)
        inputs = self._begin("clean", [s.name for s in sources])
        tasks, wanted = [], {}
        for src in sources:
            base = fingerprint(STAGE_VERSION["clean"], src.lang, src.text_field, repr(cfg),
                               part_docs)  # fmt: skip
            done: dict[int, list[PartRecord]] = {}
            for r in self.ws.catalog.parts("clean", src.name):
                done.setdefault(r.part // PART_STRIDE, []).append(r)
            k = 0
            fps = wanted.setdefault(src.name, {})
            for i, f in enumerate(src.files):
                path = Path(f.path)
                if not path.is_file():
                    raise UserError(f"source {src.name!r}: file vanished: {path}")
                for split in plan_splits(path):
                    fp = fingerprint(base, f.sha256, i, split.start, split.end)
                    fps[k] = fp
                    recs = done.get(k, [])
                    finished = frozenset(
                        r.part % PART_STRIDE for r in recs
                        if r.fingerprint == fp
                        and self.ws.part_path("clean", src.name, r.part).exists()
                    )  # fmt: skip
                    summary.parts_skipped += len(finished)
                    if not finished or len(finished) < len(recs):
                        out = self.ws.stage_dir("clean", src.name)
                        tasks.append(_CleanTask(src.name, src.lang, src.text_field, i, split, k,
                                                fp, out, part_docs, finished))  # fmt: skip
                    k += 1
        lines, skipped = 0, Counter()
        for source, k, segments, results, counts in self._map(_clean_split, tasks, cfg):
            stale = [r.part for r in self.ws.catalog.parts("clean", source)
                     if r.part // PART_STRIDE == k and r.part % PART_STRIDE >= segments]  # fmt: skip
            self.ws.catalog.drop_parts("clean", source, stale)
            self.ws.catalog.record_parts([(r.record, r.removals) for r in results])
            lines += sum(r.extra.get("lines", 0) for r in results)
            skipped.update(counts)
            summary.parts_run += len(results)
        for src in sources:
            fps = wanted[src.name]
            keep = {r.part for r in self.ws.catalog.parts("clean", src.name)
                    if fps.get(r.part // PART_STRIDE) == r.fingerprint}  # fmt: skip
            self.ws.retain_parts("clean", src.name, keep)
        if lines:
            summary.extra["boilerplate_lines_removed"] = lines
        if skipped:
            summary.extra["records_skipped"] = dict(sorted(skipped.items()))
        self._finish("clean", inputs)
        return self._collect("clean", [s.name for s in sources], summary, t0)

    # -- dedup ---------------------------------------------------------------------------------
    def dedup(self, cfg: dedup.DedupConfig | None = None, examples: int = 5) -> StageSummary:
        """Deduplicate all sources together (duplicates across sources are the common case)."""
        cfg = cfg or dedup.DedupConfig()
        t0, summary = time.perf_counter(), StageSummary("dedup")
        names = self.ws.catalog.source_names()
        inputs = [(n, r) for n in names for r in self._inputs("dedup", n, "clean")]
        recorded = self._begin("dedup", names)
        sig_dir = self.ws.root / "stages" / "dedup" / "_signatures"
        sig_tasks = [
            _SigTask(self.ws.part_path("clean", n, r.part),
                     sig_dir / n / self.ws.part_path("clean", n, r.part).stem,
                     fingerprint("sig", r.fingerprint, repr(cfg)))
            for n, r in inputs
        ]  # fmt: skip
        todo = [t for t in sig_tasks if not _signature_cached(t)]
        for _ in self._map(_signature_part, todo, cfg):
            pass
        # The shuffle: one task per band reads that band's keys from every part.
        parts = tuple((o, str(t.base)) for o, t in enumerate(sig_tasks))
        bands, _ = dedup.lsh_bands(cfg)
        buckets = dict(self._map(_bucket, [_BucketTask(r, parts) for r in range(1 + bands)]))
        exact = buckets.pop(0)
        cand = [p for p in buckets.values() if len(p)]
        near = np.unique(np.concatenate(cand), axis=0) if cand else np.zeros((0, 2), np.uint64)
        where = {o: (str(t.src), str(t.base)) for o, t in enumerate(sig_tasks)}
        verify_tasks = []
        # At least one task per worker: a single task would run in this process and hold its
        # texts here, where memory must not grow with the corpus.
        workers = self.workers or default_workers()
        step = max(1, min(VERIFY_PAIRS, -(-len(near) // max(1, workers))))
        for lo in range(0, len(near), step):
            chunk = near[lo : lo + step]
            used = {g >> 32 for g in chunk.ravel().tolist()}
            verify_tasks.append(_VerifyTask(chunk, {o: where[o] for o in used}))
        verified = list(self._map(_verify, verify_tasks, cfg))
        pairs = (np.concatenate([v[0] for v in verified]) if verified
                 else np.zeros((0, 2), np.uint64))  # fmt: skip
        true_j = np.concatenate([v[1] for v in verified]) if verified else np.zeros(0)
        order = np.lexsort((pairs[:, 1], pairs[:, 0])) if len(pairs) else np.zeros(0, int)
        plan = dedup.plan_removals(exact, pairs[order], true_j[order])
        ids = _IdLookup(sig_tasks, inputs, {x for g, (_, k, _) in plan.items() for x in (g, k)})
        removed: dict[int, dict[int, tuple[str, str]]] = {}
        dups = []
        for g, (reason, k, jac) in sorted(plan.items()):
            detail = f"of {ids.ref(k)} jaccard={jac:.3f}"
            removed.setdefault(g >> 32, {})[g & 0xFFFFFFFF] = (reason, detail)
            dups.append((ids.ref(g), ids.ref(k), reason, jac))
        tasks = []
        for o, (n, r) in enumerate(inputs):
            rem = removed.get(o, {})
            fp = fingerprint(STAGE_VERSION["dedup"], r.fingerprint, repr(cfg), sorted(rem.items()))
            if self._is_done("dedup", n, r.part, fp):
                summary.parts_skipped += 1
            else:
                out = self.ws.part_path("dedup", n, r.part)
                tasks.append(_FilterTask(n, r.part, fp, sig_tasks[o].src, out, rem))
        for n in names:
            self.ws.retain_parts("dedup", n, {r.part for m, r in inputs if m == n})
        self._run(_filter_part, tasks, None, summary)
        self._finish("dedup", recorded)
        near_dups = sorted((d for d in dups if d[2] == "near_duplicate"), key=lambda d: d[3])
        summary.extra["threshold"] = cfg.threshold
        summary.extra["candidate_pairs"] = int(len(near))
        summary.extra["cross_source_pairs"] = sum(
            d[0].split("/", 1)[0] != d[1].split("/", 1)[0] for d in dups
        )
        shown = (near_dups[:examples] + near_dups[-examples:]
                 if len(near_dups) > 2 * examples else near_dups)  # fmt: skip
        summary.extra["examples"] = [
            {"removed": a, "kept": b, "reason": reason, "jaccard": j} for a, b, reason, j in shown
        ]
        return self._collect("dedup", names, summary, t0)

    # -- decontaminate -------------------------------------------------------------------------
    def decontaminate(
        self, eval_files: list[Path], cfg: decontam.DecontamConfig | None = None
    ) -> StageSummary:
        cfg = cfg or decontam.DecontamConfig()
        t0, summary = time.perf_counter(), StageSummary("decontaminate")
        if not eval_files:
            raise UserError("--against needs at least one evaluation file")
        index = decontam.build_index(eval_files, cfg)
        eval_fp = fingerprint(repr(cfg), *(f"{p}:{file_sha256(Path(p))}" for p in eval_files))
        names = self.ws.catalog.source_names()
        for n in names:
            self.ws.check_fresh("dedup", n)
        recorded = self._begin("decontaminate", names)
        tasks = []
        for n in names:
            recs = self._inputs("decontaminate", n, "dedup")
            for r in recs:
                fp = fingerprint(STAGE_VERSION["decontaminate"], r.fingerprint, eval_fp)
                if self._is_done("decontaminate", n, r.part, fp):
                    summary.parts_skipped += 1
                else:
                    out = self.ws.part_path("decontaminate", n, r.part)
                    src = self.ws.part_path("dedup", n, r.part)
                    tasks.append(_DecontamTask(n, r.part, fp, src, out))
            self.ws.retain_parts("decontaminate", n, {r.part for r in recs})
        self._run(_decontam_part, tasks, index, summary)
        self._finish("decontaminate", recorded)
        summary.extra["eval_ngrams"] = len(index)
        summary.extra["contaminated"] = [
            {"source": s, "doc_id": d, **dict(kv.split("=", 1) for kv in x.split(" ", 1))}
            for s, d, _, x in self.ws.catalog.removals("decontaminate")
        ]
        return self._collect("decontaminate", names, summary, t0)


class _IdLookup:
    """``source/doc_id`` of the global ids the removal plan names. Each part's ids are read once
    and only the wanted ones kept: the driver holds ids of duplicates, never of every document."""

    def __init__(
        self, sig_tasks: list[_SigTask], inputs: list[tuple[str, PartRecord]], wanted: set[int]
    ):
        by_part: dict[int, list[int]] = {}
        for g in wanted:
            by_part.setdefault(g >> 32, []).append(g)
        self.refs: dict[int, str] = {}
        for o in sorted(by_part):
            part_ids = json.loads(_sig_files(sig_tasks[o].base)[2].read_text("utf-8"))
            for g in by_part[o]:
                self.refs[g] = f"{inputs[o][0]}/{part_ids[g & 0xFFFFFFFF]}"

    def ref(self, gid: int) -> str:
        return self.refs[gid]
