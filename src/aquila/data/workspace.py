"""The data workspace: a directory holding ``catalog.sqlite`` and every stage's output parts.

    WORKSPACE/
      catalog.sqlite
      stages/<stage>/<source>/part-00000.jsonl   one JSON document per line: id, text, source

Parts are written to a temporary name and renamed into place, so a crash never leaves a
half-written part that looks finished; raw input files are only ever read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from aquila.data.catalog import Catalog, Source
from aquila.errors import UserError

STAGES = ("clean", "dedup", "decontaminate")
# A part number is split * PART_STRIDE + segment: clean cuts every input split (a file, or a
# byte range of a large JSONL file) into segments of --part-docs documents.
PART_STRIDE = 100_000


class DataWorkspace:
    def __init__(self, root: Path | str = "data"):
        self.root = Path(root)
        self.catalog = Catalog(self.root / "catalog.sqlite")

    def close(self) -> None:
        self.catalog.close()

    def part_path(self, stage: str, source: str, part: int) -> Path:
        split, seg = divmod(part, PART_STRIDE)
        return self.root / "stages" / stage / source / f"part-{split:05d}-{seg:05d}.jsonl"

    def stage_dir(self, stage: str, source: str) -> Path:
        return self.root / "stages" / stage / source

    def retain_parts(self, stage: str, source: str, keep: set[int]) -> None:
        """Delete outputs (files and records) other than ``keep``: their input is gone."""
        stale = [r.part for r in self.catalog.parts(stage, source) if r.part not in keep]
        self.catalog.drop_parts(stage, source, stale)
        wanted = {self.part_path(stage, source, k).name for k in keep}
        d = self.stage_dir(stage, source)
        if d.is_dir():
            for p in d.glob("part-*.jsonl"):
                if p.name not in wanted:
                    p.unlink()

    # -- freshness -----------------------------------------------------------------------------
    def output_fingerprint(self, stage: str, source: str) -> str:
        """Changes whenever any output part of ``stage`` for ``source`` changes."""
        return fingerprint(
            *(f"{r.part}:{r.fingerprint}" for r in self.catalog.parts(stage, source))
        )

    def expected_inputs(self, stage: str, source: str) -> str:
        """The fingerprint of what ``stage`` would read for ``source`` now.

        Dedup decides over all sources together, so its input is every source's clean output:
        a source added or re-cleaned anywhere makes every source's dedup output stale.
        """
        if stage == "clean":
            return self.catalog.source(source).fingerprint
        if stage == "dedup":
            return fingerprint(
                *(f"{n}:{self.output_fingerprint('clean', n)}" for n in self.catalog.source_names())
            )
        return self.output_fingerprint(STAGES[STAGES.index(stage) - 1], source)

    def stale_reason(self, stage: str, source: str) -> str | None:
        """Why ``stage``'s output for ``source`` cannot be used as it is, or None when fresh."""
        recorded = self.catalog.stage_inputs(stage, source)
        if recorded is None:
            return f"source {source!r} has no finished {stage} output"
        if recorded != self.expected_inputs(stage, source):
            what = {
                "clean": "its files changed",
                "dedup": "a source was added, replaced or re-cleaned",
                "decontaminate": "dedup ran again",
            }[stage]
            return f"the {stage} output of source {source!r} is stale ({what} since)"
        missing = [
            r.part for r in self.catalog.parts(stage, source)
            if not self.part_path(stage, source, r.part).is_file()
        ]  # fmt: skip
        if missing:
            return f"the {stage} output of source {source!r} lost part {missing[0]}"
        return None

    def check_fresh(self, stage: str, source: str) -> None:
        """Refuse (naming the stage to run) when ``stage``'s output for ``source`` is not fresh."""
        reason = self.stale_reason(stage, source)
        if reason:
            raise UserError(f"{reason}: run `aquila data {stage}` first")

    def depth(self) -> int:
        """Index in STAGES of the furthest stage any source has finished (-1: none)."""
        names = self.catalog.source_names()
        reached = [
            i for i, st in enumerate(STAGES)
            # Parts without a record of their inputs (an interrupted stage) count as reached.
            if any(self.catalog.stage_inputs(st, n) is not None or self.catalog.parts(st, n)
                   for n in names)
        ]  # fmt: skip
        return max(reached, default=-1)

    def final_parts(self, source: str) -> list[Path]:
        """Output parts of the furthest stage the workspace has run (what tokenizing reads).

        Every stage up to that one must be fresh for ``source``: a source added, replaced or
        re-cleaned after a later stage is refused with the stage to run, never read stale.
        An empty list means no stage has run at all (tokenize the raw files).
        """
        depth = self.depth()
        if depth < 0:
            return []
        for stage in STAGES[: depth + 1]:
            if stage == "dedup":  # dedup reads every source: name the one to clean first
                for name in self.catalog.source_names():
                    self.check_fresh("clean", name)
            self.check_fresh(stage, source)
        stage = STAGES[depth]
        return [self.part_path(stage, source, r.part) for r in self.catalog.parts(stage, source)]


def fingerprint(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:20]


def write_part(path: Path, docs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_part(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def iter_source_documents(source: Source) -> Iterator[dict]:
    """Every document of a source's files, in file order, with ids unique within the source."""
    from aquila.data.readers import iter_documents

    for i, f in enumerate(source.files):
        path = Path(f.path)
        if not path.is_file():
            raise UserError(f"source {source.name!r}: file vanished: {path}")
        for doc in iter_documents(path, text_field=source.text_field):
            yield {"id": f"{i}:{doc.id}", "text": doc.text, "source": source.name}
