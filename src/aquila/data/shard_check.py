"""What a token source directory must hold before training reads a token of it.

* the manifest: every field of its type and range (:data:`MANIFEST_RULES`), its per-file
  document counts adding up;
* ``tokens.bin``: exactly ``tokens`` uint32 ids;
* ``doc_offsets.npy``: ``documents + 1`` integers from 0 to ``tokens``, strictly increasing (a
  document holds at least its EOS);
* the tokens themselves (:func:`scan_tokens`): every document ends with the manifest's EOS id,
  and the largest id, which a training compares with its model's vocabulary.

The token scan reads the whole file (vectorised, in blocks of bounded memory) once: its result
is kept in ``.scan.json`` beside the shard, keyed by the size, modification time and inode of
the three files, so reopening a source costs a ``stat``. A data directory that cannot be written
keeps the result in the process only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aquila.checks import Rule, integer, refuse
from aquila.data.kinds import KINDS, LANGS
from aquila.errors import UserError

TOKENS_FILE = "tokens.bin"
TOKEN_DTYPE = np.dtype("<u4")
SCAN_FILE = ".scan.json"
SCAN_VERSION = 1
# Tokens read at a time by the scan: 64 MB of uint32.
SCAN_BLOCK = 1 << 24


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _file_entry(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and isinstance(v.get("path"), str)
        and integer(at_least=0).ok(v.get("documents"))
        and integer(at_least=0).ok(v.get("bytes"))
    )


MANIFEST_RULES: dict[str, Rule] = {
    "format_version": integer(at_least=1),
    "source": Rule(_text, "must be a non-empty string"),
    "lang": Rule(lambda v: v in LANGS, "must be one of " + ", ".join(LANGS)),
    "kind": Rule(lambda v: v in KINDS, "must be one of " + ", ".join(KINDS)),
    "documents": integer(at_least=0),
    "tokens": integer(at_least=0),
    "bytes": integer(at_least=0),
    "tokenizer_hash": Rule(_text, "must be a non-empty string"),
    "eos_id": integer(at_least=0),
    "files": Rule(
        lambda v: isinstance(v, list) and all(_file_entry(e) for e in v),
        'must be a list of {"path": string, "documents": integer >= 0, "bytes": integer >= 0}',
    ),
    "skipped": Rule(lambda v: isinstance(v, dict), "must be a table"),
}


def check_manifest(manifest: Any, path: Path) -> None:
    """Refuse a manifest with a field missing, of the wrong type or out of range, in one line
    naming the file and the field."""
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: a manifest is a JSON object, got {type(manifest).__name__}")
    for key, rule in MANIFEST_RULES.items():
        if key not in manifest:
            raise UserError(f"{path}: manifest field {key!r} is missing: corrupt shard")
        if not rule.ok(manifest[key]):
            raise UserError(f"{path}: {refuse(key, manifest[key], rule.allowed, 'manifest field')}")
    listed = sum(e["documents"] for e in manifest["files"])
    if listed != manifest["documents"]:
        raise UserError(
            f"{path}: manifest field 'files' counts {listed} documents, 'documents' says "
            f"{manifest['documents']}: corrupt shard"
        )


def check_offsets(offsets: np.ndarray, path: Path, documents: int, tokens: int) -> None:
    """``documents + 1`` integer offsets from 0 to ``tokens``, strictly increasing."""
    where = f"{path}: corrupt shard:"
    if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise UserError(f"{where} offsets of shape {offsets.shape} and type {offsets.dtype}")
    if len(offsets) != documents + 1:
        raise UserError(
            f"{where} {len(offsets)} offsets, the manifest's {documents} documents need "
            f"{documents + 1}"
        )
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != tokens:
        raise UserError(
            f"{where} offsets run from {first} to {last}, the manifest's tokens from 0 to {tokens}"
        )
    steps = np.diff(offsets)
    bad = np.flatnonzero(steps < 1)
    if len(bad):
        i = int(bad[0])
        raise UserError(
            f"{where} document {i} runs from offset {int(offsets[i])} to {int(offsets[i + 1])} "
            "(offsets must increase: every document holds at least its EOS)"
        )


@dataclass(frozen=True)
class Scan:
    """What reading every token found: the largest id (-1 when there are none)."""

    max_token_id: int


def _key(directory: Path, files: tuple[str, ...]) -> list[list[int]]:
    out = []
    for name in files:
        st = os.stat(directory / name)
        out.append([st.st_size, st.st_mtime_ns, st.st_ino])
    return out


_MEMORY: dict[tuple[str, str], Scan] = {}


def scan_tokens(
    directory: Path,
    tokens: np.ndarray,
    offsets: np.ndarray,
    eos_id: int,
    files: tuple[str, ...],
) -> Scan:
    """Every document ends with ``eos_id``; the largest id. Cached by the files' stat."""
    key = json.dumps(_key(directory, files))
    memo = _MEMORY.get((str(directory), key))
    if memo is not None:
        return memo
    cache = directory / SCAN_FILE
    try:
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("version") == SCAN_VERSION and json.dumps(saved.get("key")) == key:
            scan = Scan(int(saved["max_token_id"]))
            _MEMORY[(str(directory), key)] = scan
            return scan
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # no cache, or one from other files: scan again
    scan = _scan(directory, tokens, offsets, eos_id)
    _MEMORY[(str(directory), key)] = scan
    write_scan(directory, scan, files)
    return scan


def write_scan(directory: Path, scan: Scan, files: tuple[str, ...]) -> None:
    """Keep ``scan`` beside the shard (best effort: a read-only data directory is fine)."""
    cache = directory / SCAN_FILE
    tmp = cache.with_name(f"{SCAN_FILE}.{os.getpid()}.tmp")
    body = {"version": SCAN_VERSION, "key": _key(directory, files), **scan.__dict__}
    try:
        tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)


def _scan(directory: Path, tokens: np.ndarray, offsets: np.ndarray, eos_id: int) -> Scan:
    ends = np.asarray(offsets[1:], dtype=np.int64) - 1
    # A gather of one id per document (sorted, so the pages are read in order).
    not_eos = np.flatnonzero(np.asarray(tokens[ends]) != eos_id) if len(ends) else ends
    if len(not_eos):
        d = int(not_eos[0])
        raise UserError(
            f"{directory}: corrupt shard: document {d} ends with id {int(tokens[ends[d]])} at "
            f"token {int(ends[d])}, not the EOS id {eos_id} (doc_offsets.npy does not match "
            "tokens.bin)"
        )
    top = -1
    for _, block in token_blocks(directory / TOKENS_FILE):
        top = max(top, int(block.max()))
    return Scan(top)


def token_blocks(path: Path):
    """(first index, ids) of ``path`` in blocks read into one reused buffer: reading a shard
    of any size keeps SCAN_BLOCK ids in memory (a memmap would map every page it touched)."""
    buf = np.empty(SCAN_BLOCK, dtype=TOKEN_DTYPE)
    start = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(memoryview(buf).cast("B")) // TOKEN_DTYPE.itemsize
            if n <= 0:
                return
            yield start, buf[:n]
            start += n


def first_id_at_least(path: Path, limit: int) -> int:
    """Index of the first token of ``path`` with an id >= ``limit`` (-1 if none)."""
    for start, block in token_blocks(path):
        hit = np.flatnonzero(block >= limit)
        if len(hit):
            return start + int(hit[0])
    return -1
