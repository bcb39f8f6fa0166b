"""Token shards: one directory per source holding its documents' tokens as a flat uint32 array.

Layout of ``DATA_DIR/<source>/``:

* ``tokens.bin``: little-endian uint32 token ids; every document is followed by the EOS id, so
  packing sequences is slicing.
* ``doc_offsets.npy``: int64 start offset of each document in ``tokens.bin``, plus the final end.
* ``manifest.json``: counts, the tokenizer hash, the input files; written last and atomically,
  so a directory without it is unfinished and is redone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from aquila.data.encode import document_lengths, encode_batches, encoded_batches
from aquila.data.kinds import check_lang_kind
from aquila.data.readers import ReadStats, iter_documents, list_files
from aquila.data.shard_check import (
    TOKEN_DTYPE,
    TOKENS_FILE,
    Scan,
    check_manifest,
    check_offsets,
    first_id_at_least,
    scan_tokens,
    write_scan,
)
from aquila.errors import UserError, WriteFailed
from aquila.progress import ByteProgress

FORMAT_VERSION = 1
OFFSETS_FILE = "doc_offsets.npy"
MANIFEST_FILE = "manifest.json"
SHARD_FILES = (TOKENS_FILE, OFFSETS_FILE, MANIFEST_FILE)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(source_dir: Path) -> dict | None:
    path = source_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise UserError(
            f"{path}: corrupt manifest (a JSON {type(manifest).__name__}, not an object)"
        )
    return manifest


def _file_documents(paths: list[Path], stats: ReadStats, per_file: list[dict], on_file_done):
    """Documents of every file in order, recording per-file document counts for tracing."""
    for path in paths:
        entry = {"path": str(path), "documents": 0, "bytes": path.stat().st_size}
        per_file.append(entry)
        for doc in iter_documents(path, stats):
            entry["documents"] += 1
            yield doc
        on_file_done(entry["bytes"])


# Errors of a disk that cannot take the shard (full, over quota, a file-size limit, read-only).
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _write_shard(
    out: Path,
    name: str,
    files: list[Path],
    tokenizer,
    lang: str,
    kind: str,
    batch_docs: int,
    show_progress: bool,
    workers: int,
) -> tuple[dict, float]:
    """Write ``out``'s three files (the manifest last); the manifest and the seconds taken."""
    stats = ReadStats()
    per_file: list[dict] = []
    total_bytes = sum(f.stat().st_size for f in files)
    lengths: list[np.ndarray] = []
    text_bytes = 0
    doc_tokens = 0  # tokens so far of a document whose pieces span batches
    max_id = -1
    t0 = time.perf_counter()
    with ByteProgress(show_progress, f"tokenize {name}", total_bytes) as advance:
        docs = _file_documents(files, stats, per_file, advance)
        with (out / TOKENS_FILE).open("wb") as f:
            batches = encode_batches(docs, batch_docs)
            for batch, enc in encoded_batches(batches, tokenizer, workers):
                f.write(enc.tokens.tobytes())
                max_id = max(max_id, int(enc.tokens.max()) if len(enc.tokens) else -1)
                text_bytes += enc.nbytes
                doc_lengths, doc_tokens = document_lengths(
                    enc.piece_lengths, batch.ends, doc_tokens
                )
                lengths.append(doc_lengths)
            f.flush()
            os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    sizes = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    np.save(out / OFFSETS_FILE, offsets)
    manifest = {
        "source": name,
        "lang": lang,
        "kind": kind,
        "documents": int(len(sizes)),
        "tokens": int(offsets[-1]),
        "bytes": int(text_bytes),
        "tokenizer_hash": tokenizer.hash,
        "eos_id": int(tokenizer.eos_id),
        "files": per_file,
        "skipped": stats.to_json(),
        "format_version": FORMAT_VERSION,
    }
    _write_json_atomic(out / MANIFEST_FILE, manifest)
    # The ids were seen while writing: opening the source needs no scan of its own.
    write_scan(out, Scan(max_id), SHARD_FILES)
    return manifest, seconds


def tokenize_source(
    name: str,
    paths: list[Path],
    tokenizer,
    data_dir: Path,
    lang: str = "en",
    kind: str = "web",
    batch_docs: int = 1024,
    show_progress: bool = True,
    force: bool = False,
    workers: int = 1,
) -> dict:
    """Tokenize the documents of ``paths`` into ``data_dir/name``; returns the manifest.

    A finished source (manifest present) is returned as is unless ``force``; an unfinished one
    is redone from scratch. ``workers > 1`` encodes in that many processes; the shard is the
    same byte for byte. The returned manifest also carries ``seconds``, ``mb_per_s`` and
    ``workers`` of the run that produced it (``skipped_existing`` is true when nothing was
    done); the one on disk does not.
    """
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--name {name!r}: a source name must be a plain directory name")
    check_lang_kind(lang, kind)
    out = Path(data_dir) / name
    existing = read_manifest(out)
    if existing is not None and not force:
        if existing.get("tokenizer_hash") != tokenizer.hash:
            raise UserError(
                f"{out / MANIFEST_FILE}: source {name!r} was tokenized with tokenizer "
                f"{existing.get('tokenizer_hash')}, not {tokenizer.hash}; use --force to redo it"
            )
        return {
            **existing,
            "skipped_existing": True,
            "seconds": 0.0,
            "mb_per_s": 0.0,
            "workers": workers,
        }
    files: list[Path] = []
    for p in paths:
        files.extend(list_files(Path(p)))
    if not files:
        raise UserError(f"no input files for source {name!r} in {', '.join(map(str, paths))}")
    if out.exists():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True)
        manifest, seconds = _write_shard(
            out, name, files, tokenizer, lang, kind, batch_docs, show_progress, workers
        )
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        # An unfinished source would be redone anyway: leave nothing holding the disk.
        shutil.rmtree(out, ignore_errors=True)
        raise WriteFailed(
            f"{out}: source {name!r} could not be written ({exc.strerror or exc}); nothing of "
            "it is left, tokenize it again once there is room"
        ) from None
    text_bytes = manifest["bytes"]
    mb_per_s = text_bytes / 1e6 / max(seconds, 1e-9)
    return {**manifest, "seconds": seconds, "mb_per_s": mb_per_s, "workers": workers}


class TokenSource:
    """A read-only memmap view of one tokenized source directory."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        manifest = read_manifest(self.dir)
        manifest_path = self.dir / MANIFEST_FILE
        if manifest is None:
            raise UserError(f"{self.dir}: no {MANIFEST_FILE} (not a token source, or unfinished)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{manifest_path}: format_version {manifest.get('format_version')!r}, "
                f"this version reads {FORMAT_VERSION}"
            )
        check_manifest(manifest, manifest_path)
        self.manifest = manifest
        self.name: str = manifest["source"]
        self.num_tokens: int = manifest["tokens"]
        tokens_path = self.dir / TOKENS_FILE
        expected = self.num_tokens * TOKEN_DTYPE.itemsize
        actual = tokens_path.stat().st_size if tokens_path.is_file() else None
        if actual != expected:
            raise UserError(
                f"{tokens_path}: {'missing' if actual is None else f'{actual} bytes'}, "
                f"manifest says {expected} ({self.num_tokens} tokens): truncated or corrupt shard"
            )
        offsets_path = self.dir / OFFSETS_FILE
        try:
            self.doc_offsets = np.load(offsets_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{offsets_path}: cannot read document offsets ({exc})") from None
        check_offsets(self.doc_offsets, offsets_path, manifest["documents"], self.num_tokens)
        self.tokens = (
            np.memmap(tokens_path, dtype=TOKEN_DTYPE, mode="r")
            if self.num_tokens
            else np.zeros(0, TOKEN_DTYPE)
        )
        self._scan: Scan | None = None

    def scan(self) -> Scan:
        """Every document ends with the EOS id, and the largest id (read once, then cached
        beside the shard by the files' size and modification time)."""
        if self._scan is None:
            self._scan = scan_tokens(
                self.dir, self.tokens, self.doc_offsets, self.manifest["eos_id"], SHARD_FILES
            )
        return self._scan

    def check_vocab(self, vocab_size: int) -> None:
        """Refuse a source holding an id the model has no embedding for, before training."""
        top = self.scan().max_token_id
        if top >= vocab_size:
            at = first_id_at_least(self.dir / TOKENS_FILE, vocab_size)
            raise UserError(
                f"{self.dir / TOKENS_FILE}: token id {top} is beyond the model's vocabulary "
                f"(model.vocab_size = {vocab_size}; first such id at token {at}): a corrupt "
                "shard, or one made with another tokenizer"
            )

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def tokenizer_hash(self) -> str:
        return self.manifest["tokenizer_hash"]

    def num_chunks(self, seq_len: int) -> int:
        """Chunks of ``seq_len + 1`` tokens that overlap by one (inputs and shifted targets)."""
        return max(0, (self.num_tokens - 1) // seq_len)

    def _check_chunk(self, i: int, seq_len: int) -> None:
        n = self.num_chunks(seq_len)
        if not 0 <= i < n:
            raise IndexError(f"chunk {i} out of range for source {self.name!r} ({n} chunks)")

    def chunk(self, i: int, seq_len: int) -> np.ndarray:
        self._check_chunk(i, seq_len)
        start = i * seq_len
        return np.asarray(self.tokens[start : start + seq_len + 1])

    def documents_in_chunk(self, i: int, seq_len: int) -> np.ndarray:
        """Indices of the documents whose tokens appear in chunk ``i``."""
        self._check_chunk(i, seq_len)
        start, last = i * seq_len, i * seq_len + seq_len
        first_doc, last_doc = np.searchsorted(self.doc_offsets, [start, last], side="right") - 1
        return np.arange(first_doc, last_doc + 1, dtype=np.int64)

    def document_file(self, doc: int) -> str:
        """The input file a document came from (per-file counts are in the manifest)."""
        seen = 0
        for entry in self.manifest["files"]:
            seen += entry["documents"]
            if doc < seen:
                return entry["path"]
        raise IndexError(f"document {doc} out of range for source {self.name!r}")


def load_sources(
    data_dir: Path,
    names: list[str] | None = None,
    tokenizer_hash: str | None = None,
    vocab_size: int | None = None,
) -> dict[str, TokenSource]:
    """Open the sources under ``data_dir`` (all finished ones, or exactly ``names``), each
    checked against its manifest; with ``vocab_size``, every token id is checked to be below
    it (a full read of each shard the first time, cached after)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory not found: {data_dir}")
    if names:
        missing = [n for n in names if not (data_dir / n / MANIFEST_FILE).is_file()]
        if missing:
            raise UserError(
                f"{data_dir}: no finished source {', '.join(missing)} "
                f"(available: {', '.join(available_sources(data_dir)) or 'none'})"
            )
        chosen = list(names)
    else:
        chosen = available_sources(data_dir)
        if not chosen:
            raise UserError(f"{data_dir}: no token sources (run `aquila data tokenize` first)")
    sources = {n: TokenSource(data_dir / n) for n in chosen}
    if tokenizer_hash is not None:
        for s in sources.values():
            if s.tokenizer_hash != tokenizer_hash:
                raise UserError(
                    f"{s.dir / MANIFEST_FILE}: source {s.name!r} was tokenized with tokenizer "
                    f"{s.tokenizer_hash}, but this run uses {tokenizer_hash}"
                )
    for s in sources.values():
        if s.num_tokens == 0:
            raise UserError(f"{s.dir}: source {s.name!r} holds no tokens")
        if vocab_size is not None:
            s.check_vocab(vocab_size)
    return sources


def available_sources(data_dir: Path) -> list[str]:
    return sorted(
        p.name for p in Path(data_dir).iterdir() if p.is_dir() and (p / MANIFEST_FILE).is_file()
    )
