"""The DMU stages over a workspace: clean -> dedup -> decontaminate.

Each stage splits every source into numbered parts, gives each part a fingerprint of its
inputs and settings, and only runs parts whose recorded fingerprint differs (or whose output is
missing): a crashed run resumes where it stopped, and a repeated run does nothing. Workers are
pure functions of their task; the coordinating process alone records results in the catalog.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aquila.data import clean, decontam, dedup
from aquila.data.catalog import PartRecord
from aquila.data.executor import run_tasks
from aquila.data.workspace import (
    DataWorkspace,
    fingerprint,
    iter_source_documents,
    read_part,
    write_part,
)
from aquila.errors import UserError

DEFAULT_PART_DOCS = 1000
# Bumped when a stage's rules change, so existing outputs count as stale.
STAGE_VERSION = {"clean": 2, "dedup": 1, "decontaminate": 1}
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


@dataclass(frozen=True)
class _Task:
    stage: str
    source: str
    lang: str
    part: int
    fingerprint: str
    out: Path
    docs: list[dict] | None = None  # clean: documents travel with the task
    src: Path | None = None  # later stages: the input part file
    removed: dict[str, tuple[str, str]] | None = None  # dedup: doc id -> (reason, detail)


def _result(task: _Task, docs: list[dict], kept: list[dict], removals, extra=None) -> PartResult:
    write_part(task.out, kept)
    rec = PartRecord(
        task.stage, task.source, task.part, task.fingerprint, len(docs), len(kept),
        sum(len(d["text"]) for d in docs), sum(len(d["text"]) for d in kept),
        dict(Counter(r for _, r, _ in removals)),
    )  # fmt: skip
    return PartResult(rec, removals, extra or {})


def _clean_part(task: _Task, cfg: clean.CleanConfig) -> PartResult:
    res = clean.clean_documents(task.docs or [], task.lang, cfg)
    return _result(task, task.docs or [], res.kept, res.removed, {"lines": res.boilerplate_lines})


def _signature_part(task: _Task, cfg: dedup.DedupConfig) -> tuple[_Task, list[str], np.ndarray]:
    docs = read_part(task.src)
    keys, sigs = dedup.signatures([d["text"] for d in docs], cfg)
    return task, keys, sigs


def _filter_part(task: _Task, _shared: object) -> PartResult:
    docs = read_part(task.src)
    removed = task.removed or {}
    kept = [d for d in docs if d["id"] not in removed]
    removals = [(d["id"], *removed[d["id"]]) for d in docs if d["id"] in removed]
    return _result(task, docs, kept, removals)


def _decontam_part(task: _Task, shared: tuple) -> PartResult:
    index, _cfg = shared
    docs = read_part(task.src)
    kept, removals = [], []
    for d, hit in zip(docs, decontam.find_matches([d["text"] for d in docs], index)):
        if hit:
            removals.append((d["id"], "contaminated", f"eval={hit[0]} ngram={hit[1]}"))
        else:
            kept.append(d)
    return _result(task, docs, kept, removals)


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

    def _run(self, fn, tasks: list[_Task], shared, summary: StageSummary) -> None:
        self.progress(0, len(tasks))
        lines = 0
        for n, res in enumerate(run_tasks(fn, tasks, shared, self.executor, self.workers), 1):
            self.ws.catalog.record_part(res.record, res.removals)
            lines += res.extra.get("lines", 0)
            self.progress(n, len(tasks))
        summary.parts_run += len(tasks)
        if lines:
            summary.extra["boilerplate_lines_removed"] = lines

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
        cfg = cfg or clean.CleanConfig()
        t0, summary = time.perf_counter(), StageSummary("clean")
        sources = self.ws.catalog.sources(names)
        inputs = self._begin("clean", [s.name for s in sources])
        tasks = []
        for src in sources:
            base = fingerprint(STAGE_VERSION["clean"], src.fingerprint, repr(cfg), part_docs)
            docs = iter_source_documents(src)
            k = 0
            while chunk := list(itertools.islice(docs, part_docs)):
                fp = fingerprint(base, k)
                if self._is_done("clean", src.name, k, fp):
                    summary.parts_skipped += 1
                else:
                    out = self.ws.part_path("clean", src.name, k)
                    tasks.append(_Task("clean", src.name, src.lang, k, fp, out, docs=chunk))
                k += 1
            self.ws.remove_parts_from("clean", src.name, k)
        self._run(_clean_part, tasks, cfg, summary)
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
        sig_tasks = [
            _Task("dedup", n, "", r.part, fingerprint("sig", r.fingerprint, repr(cfg)),
                  self.ws.root / "stages" / "dedup" / "_signatures" / n / f"part-{r.part:05d}.npz",
                  src=self.ws.part_path("clean", n, r.part))
            for n, r in inputs
        ]  # fmt: skip
        todo = [t for t in sig_tasks if not _signature_cached(t)]
        self.progress(0, len(todo))
        for i, (task, keys, sigs) in enumerate(
            run_tasks(_signature_part, todo, cfg, self.executor, self.workers), 1
        ):
            _save_signatures(task, keys, sigs)
            self.progress(i, len(todo))
        parts = []
        for t in sig_tasks:
            ids = [d["id"] for d in read_part(t.src)]
            keys, sigs = _load_signatures(t)
            parts.append((t.source, t.part, ids, keys, sigs))
        dups = dedup.find_duplicates(parts, cfg)
        removed: dict[tuple[str, int], dict[str, tuple[str, str]]] = {}
        for d in dups:
            detail = f"of {d.kept.source}/{d.kept.doc_id} jaccard={d.jaccard:.3f}"
            removed.setdefault((d.removed.source, d.removed.part), {})[d.removed.doc_id] = (
                d.reason, detail,
            )  # fmt: skip
        tasks = []
        for t, (n, r) in zip(sig_tasks, inputs):
            rem = removed.get((n, r.part), {})
            fp = fingerprint(STAGE_VERSION["dedup"], r.fingerprint, repr(cfg), sorted(rem.items()))
            if self._is_done("dedup", n, r.part, fp):
                summary.parts_skipped += 1
            else:
                out = self.ws.part_path("dedup", n, r.part)
                tasks.append(_Task("dedup", n, "", r.part, fp, out, src=t.src, removed=rem))
        for n in names:
            self.ws.remove_parts_from("dedup", n, len(self.ws.catalog.parts("clean", n)))
        self._run(_filter_part, tasks, None, summary)
        self._finish("dedup", recorded)
        near = sorted((d for d in dups if d.reason == "near_duplicate"), key=lambda d: d.jaccard)
        summary.extra["threshold"] = cfg.threshold
        summary.extra["cross_source_pairs"] = sum(d.removed.source != d.kept.source for d in dups)
        summary.extra["examples"] = [
            {"removed": f"{d.removed.source}/{d.removed.doc_id}",
             "kept": f"{d.kept.source}/{d.kept.doc_id}", "reason": d.reason, "jaccard": d.jaccard}
            for d in (near[:examples] + near[-examples:] if len(near) > 2 * examples else near)
        ]  # fmt: skip
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
        from aquila.data.catalog import file_sha256

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
                    tasks.append(_Task("decontaminate", n, "", r.part, fp, out, src=src))
            self.ws.remove_parts_from("decontaminate", n, len(recs))
        self._run(_decontam_part, tasks, (index, cfg), summary)
        self._finish("decontaminate", recorded)
        summary.extra["eval_ngrams"] = len(index)
        summary.extra["contaminated"] = [
            {"source": s, "doc_id": d, **dict(kv.split("=", 1) for kv in x.split(" ", 1))}
            for s, d, _, x in self.ws.catalog.removals("decontaminate")
        ]
        return self._collect("decontaminate", names, summary, t0)


def _signature_cached(task: _Task) -> bool:
    if not task.out.exists():
        return False
    with np.load(task.out, allow_pickle=False) as z:
        return str(z["fingerprint"]) == task.fingerprint


def _save_signatures(task: _Task, keys: list[str], sigs: np.ndarray) -> None:
    task.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = task.out.with_name(f".{task.out.name}.tmp.npz")
    np.savez(tmp, fingerprint=task.fingerprint, keys=np.array(keys, dtype="U32"), sigs=sigs)
    tmp.replace(task.out)


def _load_signatures(task: _Task) -> tuple[list[str], np.ndarray]:
    with np.load(task.out, allow_pickle=False) as z:
        return [str(k) for k in z["keys"]], z["sigs"]
