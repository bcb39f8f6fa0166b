"""Read raw documents from ``.txt``, ``.jsonl`` and ``.parquet`` files (or directories of them).

* ``.txt``: the whole file is one document (split a corpus into files, or use JSONL, to get
  several documents).
* ``.jsonl``: one JSON object per line with a ``text`` string (and optionally an ``id``). A line
  that is not valid JSON (a truncated last line, say) or has no ``text`` string is skipped and
  counted with its line number, so one bad record never stops a long run.
* ``.parquet``: the ``text`` column (and ``id`` if present), read with pyarrow in record batches.

Problems that mean the input is not what the user thinks it is (a missing path, a binary or
non-UTF-8 file, an unsupported extension) are a :class:`UserError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aquila.errors import UserError

SUFFIXES = (".txt", ".jsonl", ".parquet")
# Enough examples to find the bad lines without letting the manifest grow with the corpus.
MAX_EXAMPLES = 20
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass
class ReadStats:
    """What was skipped while reading, by reason, with a few ``file:line`` examples."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"total": self.total, **dict(sorted(self.counts.items())), "examples": self.examples}


def list_files(path: Path) -> list[Path]:
    """``path`` itself, or every supported file under it (recursively, in sorted order)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_file():
        _check_suffix(path)
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        # Hidden files and directories (.git, .DS_Store) are never data.
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        _check_suffix(p)
        files.append(p)
    return files


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
            f"expected one of {', '.join(SUFFIXES)}"
        )


def iter_documents(path: Path, stats: ReadStats | None = None) -> Iterator[Document]:
    """Yield the documents of a file or directory; skipped records are counted in ``stats``."""
    stats = stats if stats is not None else ReadStats()
    for file in list_files(Path(path)):
        if file.stat().st_size == 0:
            stats.skip("empty_file", str(file))
            continue
        suffix = file.suffix.lower()
        if suffix == ".txt":
            yield from _read_txt(file, stats)
        elif suffix == ".jsonl":
            yield from _read_jsonl(file, stats)
        else:
            yield from _read_parquet(file, stats)


def _check_not_binary(path: Path, head: bytes) -> None:
    nul = head.find(b"\x00")
    if nul >= 0:
        raise UserError(f"{path}: binary file (NUL byte at offset {nul}), expected UTF-8 text")


def _decode(path: Path, data: bytes, base_offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not valid UTF-8 at byte offset {base_offset + exc.start} "
            f"(byte 0x{data[exc.start]:02x})"
        ) from None


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_txt(path: Path, stats: ReadStats) -> Iterator[Document]:
    data = path.read_bytes()
    _check_not_binary(path, data[:_SNIFF_BYTES])
    text = _decode(path, data)
    if not text.strip():
        stats.skip("empty", str(path))
        return
    yield Document(path.stem, text)


def _read_jsonl(path: Path, stats: ReadStats) -> Iterator[Document]:
    offset = 0
    with path.open("rb") as f:
        _check_not_binary(path, f.read(_SNIFF_BYTES))
        f.seek(0)
        for lineno, raw in enumerate(f, 1):
            line = _decode(path, raw, offset)
            offset += len(raw)
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                stats.skip("invalid_json", where)
                continue
            text = rec.get("text") if isinstance(rec, dict) else None
            if not isinstance(text, str):
                stats.skip("no_text", where)
                continue
            if not text.strip():
                stats.skip("empty", where)
                continue
            if not _is_valid_unicode(text):
                # JSON escapes can spell lone surrogates that no tokenizer can encode.
                stats.skip("invalid_unicode", where)
                continue
            doc_id = rec.get("id")
            yield Document(str(doc_id) if doc_id is not None else f"{path.stem}:{lineno}", text)


def _read_parquet(path: Path, stats: ReadStats) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise UserError(
            f"{path}: reading .parquet needs pyarrow: pip install 'aquila[parquet]'"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a corrupt file
        raise UserError(f"{path}: cannot read parquet file: {exc}") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise UserError(f"{path}: parquet file has no 'text' column (columns: {names})")
    columns = ["text", "id"] if "id" in names else ["text"]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=4096, columns=columns):
            texts = batch.column("text").to_pylist()
            ids = batch.column("id").to_pylist() if "id" in columns else [None] * len(texts)
            for text, doc_id in zip(texts, ids):
                row += 1
                if not isinstance(text, str):
                    stats.skip("no_text", f"{path}:row {row}")
                elif not text.strip():
                    stats.skip("empty", f"{path}:row {row}")
                else:
                    yield Document(
                        str(doc_id) if doc_id is not None else f"{path.stem}:{row}", text
                    )
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot read parquet file at row {row + 1}: {exc}") from None
