"""The data catalog: one SQLite file recording sources, their files, stage results and mixtures.

The schema is deliberately plain (explicit column types, TEXT timestamps, JSON kept in TEXT
columns, no SQLite-only features beyond the WAL pragma) so it can move to a server database.
Only the coordinating process writes to it; workers return results instead.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from aquila.data.kinds import check_lang_kind
from aquila.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    lang TEXT NOT NULL,
    kind TEXT NOT NULL,
    position INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    text_field TEXT NOT NULL DEFAULT 'text'
);
CREATE TABLE IF NOT EXISTS source_files (
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (source, path)
);
CREATE TABLE IF NOT EXISTS stage_parts (
    stage TEXT NOT NULL,
    source TEXT NOT NULL,
    part INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    documents_in INTEGER NOT NULL,
    documents_kept INTEGER NOT NULL,
    chars_in INTEGER NOT NULL,
    chars_kept INTEGER NOT NULL,
    removed_json TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (stage, source, part)
);
CREATE TABLE IF NOT EXISTS removals (
    stage TEXT NOT NULL,
    source TEXT NOT NULL,
    part INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stage_inputs (
    stage TEXT NOT NULL,
    source TEXT NOT NULL,
    inputs TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (stage, source)
);
CREATE TABLE IF NOT EXISTS mixtures (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    toml TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SourceFile:
    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Source:
    name: str
    lang: str
    kind: str
    files: tuple[SourceFile, ...]
    text_field: str = "text"

    @property
    def fingerprint(self) -> str:
        """Changes whenever any file of the source changes (content, not timestamps)."""
        joined = "\n".join(f"{f.path}\t{f.sha256}" for f in self.files)
        field = "" if self.text_field == "text" else f"field={self.text_field}\n"
        return hashlib.sha256(f"{self.lang}\n{field}{joined}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PartRecord:
    stage: str
    source: str
    part: int
    fingerprint: str
    documents_in: int
    documents_kept: int
    chars_in: int
    chars_kept: int
    removed: dict[str, int]


class Catalog:
    """Reads and writes the workspace's ``catalog.sqlite``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(sources)")}
        if "text_field" not in columns:  # a catalog written before sources had a text field
            self.db.execute(
                "ALTER TABLE sources ADD COLUMN text_field TEXT NOT NULL DEFAULT 'text'"
            )
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    # -- sources -------------------------------------------------------------------------------
    def add_source(
        self,
        name: str,
        paths: list[Path],
        lang: str,
        kind: str,
        replace: bool = False,
        text_field: str = "text",
    ) -> Source:
        """Register files, directories (walked recursively), globs or `datasets` directories."""
        from aquila.data.readers import list_files

        check_lang_kind(lang, kind)
        if not text_field:
            raise UserError("--text-field must not be empty")
        found = [f for p in paths for f in list_files(Path(p))]
        if not found:
            raise UserError(f"source {name!r}: no input files in {', '.join(map(str, paths))}")
        files, seen = [], set()
        for p in found:
            path = str(p.resolve())
            if path not in seen:  # a file named twice (a directory and a glob) counts once
                seen.add(path)
                files.append(SourceFile(path, p.stat().st_size, file_sha256(p)))
        existing = self.db.execute("SELECT position FROM sources WHERE name=?", (name,)).fetchone()
        if existing and not replace:
            raise UserError(f"source {name!r} already exists (use --replace to overwrite it)")
        if existing:
            position = existing[0]
            self.db.execute("DELETE FROM source_files WHERE source=?", (name,))
            self.db.execute("DELETE FROM sources WHERE name=?", (name,))
        else:
            row = self.db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM sources").fetchone()
            position = row[0]
        self.db.execute(
            "INSERT INTO sources (name, lang, kind, position, created_at, text_field)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (name, lang, kind, position, _now(), text_field),
        )
        self.db.executemany(
            "INSERT INTO source_files (source, path, size_bytes, sha256) VALUES (?, ?, ?, ?)",
            [(name, f.path, f.size_bytes, f.sha256) for f in files],
        )
        self.db.commit()
        return self.source(name)

    def source(self, name: str) -> Source:
        row = self.db.execute(
            "SELECT name, lang, kind, text_field FROM sources WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            known = ", ".join(self.source_names()) or "none"
            raise UserError(f"unknown source {name!r} (known: {known})")
        files = self.db.execute(
            "SELECT path, size_bytes, sha256 FROM source_files WHERE source=? ORDER BY rowid",
            (name,),
        ).fetchall()
        return Source(row[0], row[1], row[2], tuple(SourceFile(*f) for f in files), row[3])

    def source_names(self) -> list[str]:
        """Sources in registration order: the deterministic order dedup keeps first."""
        return [r[0] for r in self.db.execute("SELECT name FROM sources ORDER BY position")]

    def sources(self, names: list[str] | None = None) -> list[Source]:
        return [self.source(n) for n in (names or self.source_names())]

    # -- stage parts ---------------------------------------------------------------------------
    def part(self, stage: str, source: str, part: int) -> PartRecord | None:
        row = self.db.execute(
            "SELECT stage, source, part, fingerprint, documents_in, documents_kept, chars_in,"
            " chars_kept, removed_json FROM stage_parts WHERE stage=? AND source=? AND part=?",
            (stage, source, part),
        ).fetchone()
        return None if row is None else PartRecord(*row[:8], json.loads(row[8]))

    def parts(self, stage: str, source: str) -> list[PartRecord]:
        rows = self.db.execute(
            "SELECT stage, source, part, fingerprint, documents_in, documents_kept, chars_in,"
            " chars_kept, removed_json FROM stage_parts WHERE stage=? AND source=? ORDER BY part",
            (stage, source),
        ).fetchall()
        return [PartRecord(*r[:8], json.loads(r[8])) for r in rows]

    def record_part(self, rec: PartRecord, removals: list[tuple[str, str, str]]) -> None:
        """Record one finished part and its removed documents (doc_id, reason, detail)."""
        self.record_parts([(rec, removals)])

    def record_parts(self, results: list[tuple[PartRecord, list[tuple[str, str, str]]]]) -> None:
        """Record finished parts in one transaction (a task's parts are all there or none)."""
        for rec, removals in results:
            self._record(rec, removals)
        self.db.commit()

    def _record(self, rec: PartRecord, removals: list[tuple[str, str, str]]) -> None:
        key = (rec.stage, rec.source, rec.part)
        self.db.execute("DELETE FROM stage_parts WHERE stage=? AND source=? AND part=?", key)
        self.db.execute("DELETE FROM removals WHERE stage=? AND source=? AND part=?", key)
        self.db.execute(
            "INSERT INTO stage_parts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, rec.fingerprint, rec.documents_in, rec.documents_kept, rec.chars_in,
             rec.chars_kept, json.dumps(rec.removed, sort_keys=True), _now()),
        )  # fmt: skip
        self.db.executemany(
            "INSERT INTO removals VALUES (?, ?, ?, ?, ?, ?)",
            [(*key, d, r, x) for d, r, x in removals],
        )

    def drop_parts(self, stage: str, source: str, parts: list[int]) -> None:
        """Forget these parts of a stage (their input no longer exists)."""
        for table in ("stage_parts", "removals"):
            self.db.executemany(
                f"DELETE FROM {table} WHERE stage=? AND source=? AND part=?",
                [(stage, source, p) for p in parts],
            )
        self.db.commit()

    def removals(self, stage: str, source: str | None = None) -> list[tuple[str, str, str, str]]:
        """(source, doc_id, reason, detail) for every document a stage removed."""
        q = "SELECT source, doc_id, reason, detail FROM removals WHERE stage=?"
        args: tuple = (stage,)
        if source:
            q, args = q + " AND source=?", (stage, source)
        return self.db.execute(q + " ORDER BY source, part, doc_id", args).fetchall()

    # -- what each stage read ------------------------------------------------------------------
    def stage_inputs(self, stage: str, source: str) -> str | None:
        """Fingerprint of the inputs a finished stage read for ``source`` (None: not finished)."""
        row = self.db.execute(
            "SELECT inputs FROM stage_inputs WHERE stage=? AND source=?", (stage, source)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_stage_inputs(self, stage: str, source: str, inputs: str | None) -> None:
        """Record (or, with None, forget: the stage started and has not finished) its inputs."""
        self.db.execute("DELETE FROM stage_inputs WHERE stage=? AND source=?", (stage, source))
        if inputs is not None:
            self.db.execute(
                "INSERT INTO stage_inputs VALUES (?, ?, ?, ?)", (stage, source, inputs, _now())
            )
        self.db.commit()

    # -- mixtures ------------------------------------------------------------------------------
    def record_mixture(self, name: str, toml_text: str) -> int:
        """Store a mixture file; the same content keeps its version, new content gets the next."""
        digest = hashlib.sha256(toml_text.encode()).hexdigest()
        row = self.db.execute(
            "SELECT version FROM mixtures WHERE name=? AND content_hash=?", (name, digest)
        ).fetchone()
        if row:
            return int(row[0])
        (version,) = self.db.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM mixtures WHERE name=?", (name,)
        ).fetchone()
        self.db.execute(
            "INSERT INTO mixtures VALUES (?, ?, ?, ?, ?)",
            (name, version, digest, toml_text, _now()),
        )
        self.db.commit()
        return int(version)

    def mixtures(self) -> list[tuple[str, int, str, str]]:
        """(name, version, content_hash, created_at), oldest first."""
        return self.db.execute(
            "SELECT name, version, content_hash, created_at FROM mixtures ORDER BY name, version"
        ).fetchall()
