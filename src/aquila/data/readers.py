"""Read raw documents from the files users have (or directories and globs of them).

* ``.txt``: the whole file is one document (split a corpus into files, or use JSONL, to get
  several documents).
* ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``: one JSON object per line with a text string (the
  ``text`` field unless told otherwise) and optionally an ``id``. A line that is not valid JSON
  (a truncated last line, say) or has no text string is skipped and counted with its line
  number, so one bad record never stops a long run.
* ``.parquet``: the text column (and ``id`` if present), read with pyarrow in record batches.
* ``.arrow`` and Hugging Face ``datasets`` directories written by ``save_to_disk`` (their
  ``state.json`` lists the Arrow files; a ``DatasetDict`` holds one such directory per split):
  read with pyarrow in record batches, without importing ``datasets``.

A large plain ``.jsonl`` file is cut into splits at line boundaries (``plan_splits``) so workers
can read their own byte range; compressed and Arrow files are one split each.

Problems that mean the input is not what the user thinks it is (a missing path, a binary or
non-UTF-8 file, an unsupported extension) are a :class:`UserError` naming the file.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aquila.errors import UserError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".arrow")
# Metadata files of a `datasets` save_to_disk directory: not documents.
HF_METADATA = ("state.json", "dataset_info.json", "dataset_dict.json")
TEXT_FIELD = "text"
# Enough examples to find the bad lines without letting the manifest grow with the corpus.
MAX_EXAMPLES = 20
_SNIFF_BYTES = 8192
# A plain JSONL file is cut into splits of about this many bytes, one per worker task.
SPLIT_BYTES = 32 << 20


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

    def merge(self, other: ReadStats) -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.examples += other.examples[: MAX_EXAMPLES - len(self.examples)]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"total": self.total, **dict(sorted(self.counts.items())), "examples": self.examples}


def file_kind(path: Path) -> str:
    """The supported suffix ``path`` ends with, or a UserError naming the file."""
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise UserError(
        f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
        f"expected one of {', '.join(SUFFIXES)} or a `datasets` save_to_disk directory"
    )


def _hf_dataset_files(path: Path) -> list[Path] | None:
    """The Arrow files of a `datasets` save_to_disk directory, in order; None if it is not one."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        return [f for split in splits for f in (_hf_dataset_files(path / split) or [])]
    state = path / "state.json"
    if not state.is_file():
        return None
    try:
        names = [
            d["filename"] for d in json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        ]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{state}: not a `datasets` state file ({exc})") from None
    files = [path / n for n in names]
    for f in files:
        if not f.is_file():
            raise UserError(f"{path}: `datasets` directory lists a missing file {f.name}")
    return files


def list_files(path: Path) -> list[Path]:
    """``path`` itself, every supported file under it (recursively, sorted), or a glob's files."""
    path = Path(path)
    if not path.exists() and glob.has_magic(str(path)):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        if not matches:
            raise UserError(f"no input matches {path}")
        return [f for m in matches for f in list_files(m)]
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_file():
        file_kind(path)
        return [path]
    hf = _hf_dataset_files(path)
    if hf is not None:
        return hf
    files: list[Path] = []
    hf_dirs: set[Path] = set()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        # Hidden files and directories (.git, .DS_Store) are never data.
        if any(part.startswith(".") for part in rel.parts) or any(d in p.parents for d in hf_dirs):
            continue
        if p.is_dir():
            sub = _hf_dataset_files(p)
            if sub is not None:
                hf_dirs.add(p)
                files += sub
            continue
        file_kind(p)
        files.append(p)
    return files


def iter_documents(
    path: Path, stats: ReadStats | None = None, text_field: str = TEXT_FIELD
) -> Iterator[Document]:
    """Yield the documents of a file or directory; skipped records are counted in ``stats``."""
    stats = stats if stats is not None else ReadStats()
    for file in list_files(Path(path)):
        yield from iter_split(Split(str(file), file_kind(file)), stats, text_field)


@dataclass(frozen=True)
class Split:
    """A piece of one input file a worker reads on its own: a byte range of a plain JSONL file
    (``first_line`` numbers its first line), or a whole file (``end`` None)."""

    path: str
    kind: str
    start: int = 0
    end: int | None = None
    first_line: int = 1


def plan_splits(path: Path, split_bytes: int = SPLIT_BYTES) -> list[Split]:
    """Cut a file into splits; only plain JSONL is cut, at line boundaries, counting lines so
    that default ids (``stem:line``) do not depend on where the cuts fall."""
    kind = file_kind(path)
    size = path.stat().st_size
    if kind != ".jsonl" or size <= split_bytes:
        return [Split(str(path), kind)]
    splits, start, line = [], 0, 1
    with path.open("rb") as f:
        while start < size:
            f.seek(min(start + split_bytes, size))
            f.readline()  # to the end of the line the cut falls in
            end = min(f.tell(), size)
            f.seek(start)
            lines = 0
            remaining = end - start
            while remaining:  # count lines in bounded blocks
                block = f.read(min(remaining, 1 << 20))
                lines += block.count(b"\n")
                remaining -= len(block)
            splits.append(Split(str(path), kind, start, end, line))
            start, line = end, line + lines
    return splits


def iter_split(split: Split, stats: ReadStats, text_field: str = TEXT_FIELD) -> Iterator[Document]:
    path = Path(split.path)
    if path.stat().st_size == 0:
        stats.skip("empty_file", str(path))
        return
    if split.kind == ".txt":
        yield from _read_txt(path, stats)
    elif split.kind.startswith(".jsonl"):
        yield from _read_jsonl(split, stats, text_field)
    elif split.kind == ".parquet":
        yield from _read_parquet(path, stats, text_field)
    else:
        yield from _read_arrow(path, stats, text_field)


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


def _open_jsonl(path: Path, kind: str):
    if kind == ".jsonl":
        return path.open("rb")
    if kind == ".jsonl.gz":
        return gzip.open(path, "rb")
    try:
        import zstandard
    except ModuleNotFoundError:
        raise UserError(
            f"{path}: reading .zst needs zstandard: pip install 'aquila[zstd]'"
        ) from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb")))


def _read_jsonl(split: Split, stats: ReadStats, text_field: str) -> Iterator[Document]:
    path = Path(split.path)
    offset = split.start
    try:
        with _open_jsonl(path, split.kind) as f:
            head = f.read(_SNIFF_BYTES) if split.start == 0 else b""
            _check_not_binary(path, head)
            if split.kind == ".jsonl":
                f.seek(split.start)
                lines = f
            else:  # a stream: start again instead of seeking back
                f.close()
                lines = _open_jsonl(path, split.kind)
            with lines:
                for lineno, raw in enumerate(lines, split.first_line):
                    if split.end is not None and offset >= split.end:
                        break
                    line = _decode(path, raw, offset)
                    offset += len(raw)
                    doc = _json_document(line, f"{path}:{lineno}", stats, text_field)
                    if doc is not None:
                        yield Document(doc[0] or f"{_stem(path)}:{lineno}", doc[1])
    except UserError:
        raise
    except Exception as exc:  # a truncated or corrupt .gz / .zst (gzip, zlib, zstd errors)
        raise UserError(f"{path}: cannot read {split.kind} file: {exc}") from None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet", ".arrow", ".txt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _json_document(
    line: str, where: str, stats: ReadStats, text_field: str
) -> tuple[str | None, str] | None:
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        stats.skip("invalid_json", where)
        return None
    text = rec.get(text_field) if isinstance(rec, dict) else None
    if not isinstance(text, str):
        stats.skip("no_text", where)
        return None
    if not text.strip():
        stats.skip("empty", where)
        return None
    if not _is_valid_unicode(text):
        # JSON escapes can spell lone surrogates that no tokenizer can encode.
        stats.skip("invalid_unicode", where)
        return None
    doc_id = rec.get("id")
    return (str(doc_id) if doc_id is not None else None), text


def _batch_documents(
    batches, path: Path, stats: ReadStats, text_field: str, names: list[str]
) -> Iterator[Document]:
    if text_field not in names:
        raise UserError(f"{path}: no {text_field!r} column (columns: {names}); see --text-field")
    row = 0
    try:
        for batch in batches:
            texts = batch.column(text_field).to_pylist()
            ids = batch.column("id").to_pylist() if "id" in names else [None] * len(texts)
            for text, doc_id in zip(texts, ids):
                row += 1
                if not isinstance(text, str):
                    stats.skip("no_text", f"{path}:row {row}")
                elif not text.strip():
                    stats.skip("empty", f"{path}:row {row}")
                else:
                    yield Document(
                        str(doc_id) if doc_id is not None else f"{_stem(path)}:{row}", text
                    )
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot read file at row {row + 1}: {exc}") from None


def _pyarrow(path: Path):
    try:
        import pyarrow
    except ModuleNotFoundError:
        raise UserError(
            f"{path}: reading it needs pyarrow: pip install 'aquila[parquet]'"
        ) from None
    return pyarrow


def _read_parquet(path: Path, stats: ReadStats, text_field: str) -> Iterator[Document]:
    _pyarrow(path)
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a corrupt file
        raise UserError(f"{path}: cannot read parquet file: {exc}") from None
    names = pf.schema_arrow.names
    columns = [text_field] + (["id"] if "id" in names and text_field != "id" else [])
    batches = pf.iter_batches(batch_size=4096, columns=columns) if text_field in names else []
    yield from _batch_documents(batches, path, stats, text_field, names)


def _read_arrow(path: Path, stats: ReadStats, text_field: str) -> Iterator[Document]:
    """An Arrow IPC stream (what `datasets` writes) or file, one record batch at a time."""
    pa = _pyarrow(path)
    source = pa.memory_map(str(path))
    try:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            file_reader = pa.ipc.open_file(source)
            reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
            names = file_reader.schema.names
        else:
            names = reader.schema.names
    except Exception as exc:
        raise UserError(f"{path}: cannot read Arrow file: {exc}") from None
    yield from _batch_documents(reader, path, stats, text_field, names)
