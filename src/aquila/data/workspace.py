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


class DataWorkspace:
    def __init__(self, root: Path | str = "data"):
        self.root = Path(root)
        self.catalog = Catalog(self.root / "catalog.sqlite")

    def close(self) -> None:
        self.catalog.close()

    def part_path(self, stage: str, source: str, part: int) -> Path:
        return self.root / "stages" / stage / source / f"part-{part:05d}.jsonl"

    def stage_dir(self, stage: str, source: str) -> Path:
        return self.root / "stages" / stage / source

    def remove_parts_from(self, stage: str, source: str, first_stale: int) -> None:
        """Delete outputs numbered ``first_stale`` and above (their input no longer exists)."""
        d = self.stage_dir(stage, source)
        if d.is_dir():
            for p in d.glob("part-*.jsonl"):
                if int(p.stem.split("-")[1]) >= first_stale:
                    p.unlink()
        self.catalog.drop_parts_from(stage, source, first_stale)

    def final_parts(self, source: str) -> list[Path]:
        """Output parts of the last stage that has run for ``source`` (what tokenizing reads)."""
        for stage in reversed(STAGES):
            recs = self.catalog.parts(stage, source)
            if recs:
                return [self.part_path(stage, source, r.part) for r in recs]
        return []


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


def _fallback_documents(path: Path) -> Iterator[tuple[str, str]]:
    """.txt (the whole file is one document) and .jsonl (a ``text`` field per line)."""
    if path.suffix == ".txt":
        yield path.stem, path.read_text(encoding="utf-8")
        return
    if path.suffix != ".jsonl":
        raise UserError(f"{path}: unsupported file type (use .txt or .jsonl)")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise UserError(f"{path}:{n}: expected an object with a 'text' string")
                yield str(rec.get("id", f"{path.stem}:{n}")), rec["text"]


def iter_source_documents(source: Source) -> Iterator[dict]:
    """Every document of a source's files, in file order, with ids unique within the source."""
    try:
        from aquila.data.readers import iter_documents
    except ModuleNotFoundError:
        iter_documents = None
    for i, f in enumerate(source.files):
        path = Path(f.path)
        if not path.is_file():
            raise UserError(f"source {source.name!r}: file vanished: {path}")
        if iter_documents is not None:
            pairs = ((d.id, d.text) for d in iter_documents(path))
        else:
            pairs = _fallback_documents(path)
        for doc_id, text in pairs:
            yield {"id": f"{i}:{doc_id}", "text": text, "source": source.name}
