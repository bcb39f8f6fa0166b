"""Decontamination: remove training documents that share a long n-gram with an evaluation item.

English uses 13 word-grams (GPT-3's choice). Chinese counts characters: a 13-word English span
is about 20 Chinese characters, but C-Eval stems are short (often 15-40 characters), so the
default is 15-character grams over CJK characters and digits: longer than common set phrases
(four-character idioms, 8-10 character institution names), short enough to catch a short stem. Items shorter than n units contribute their whole text as one
gram when it has at least ``min_units`` units (GPT-3 did the same for short items).
Text is NFKC-normalised first, which maps full-width digits and letters to ASCII.

``find_matches`` is the stage's scan: a part's documents are joined into one code-point array and
every n-gram becomes a 64-bit polynomial hash (numpy prefix sums, words hashed from their
characters), looked up by binary search in sorted arrays built once per evaluation set. A hash
hit is confirmed against the n-gram's text, so the decisions are those of the plain scan
(``find_match``, kept as the reference) whatever the hash collisions.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aquila.errors import UserError

_WORD_RE = re.compile(r"[a-z0-9]+")
_CJK_RUN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff0-9]+")
TEXT_FIELDS = ("text", "question", "query", "prompt", "passage", "context", "answer", "input")
CHOICE_FIELDS = ("choices", "options", "endings", "A", "B", "C", "D")


@dataclass(frozen=True)
class DecontamConfig:
    en_ngram: int = 13
    zh_ngram: int = 15
    min_units: int = 8


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def word_grams(text: str, n: int, whole_if_short: int = 0) -> list[str]:
    words = _WORD_RE.findall(_norm(text))
    if len(words) < n:
        return [" ".join(words)] if whole_if_short and len(words) >= whole_if_short else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def char_grams(text: str, n: int, whole_if_short: int = 0) -> list[str]:
    chars = "".join(_CJK_RUN_RE.findall(_norm(text)))
    if not any(c >= "\u3400" for c in chars):
        return []
    if len(chars) < n:
        return [chars] if whole_if_short and len(chars) >= whole_if_short else []
    return [chars[i : i + n] for i in range(len(chars) - n + 1)]


def _texts_of_record(rec: dict) -> list[str]:
    out = []
    for key in TEXT_FIELDS + CHOICE_FIELDS:
        val = rec.get(key)
        if isinstance(val, str):
            out.append(val)
        elif isinstance(val, list):
            out += [v for v in val if isinstance(v, str)]
        elif isinstance(val, dict):  # e.g. {"label": [...], "text": [...]}
            out += [v for v in val.get("text", []) if isinstance(v, str)]
    return out


def read_eval_items(path: Path) -> list[str]:
    """Text fields of every item of an evaluation file (.jsonl, .csv, .txt)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"evaluation file not found: {path}")
    suffix = path.suffix.lower()
    items: list[str] = []
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
                items += _texts_of_record(rec) if isinstance(rec, dict) else []
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        if "question" in header:  # C-Eval style: id,question,A,B,C,D,answer[,explanation]
            keep = [i for i, h in enumerate(header) if h not in ("id", "answer")]
            rows = rows[1:]
        else:  # MMLU style: question,A,B,C,D,answer without a header
            keep = list(range(max(0, len(rows[0]) - 1))) if rows else []
        items += [row[i] for row in rows for i in keep if i < len(row)]
    elif suffix == ".txt":
        items += [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    else:
        raise UserError(f"{path}: evaluation files must be .jsonl, .csv or .txt")
    return items


@dataclass
class EvalIndex:
    """Evaluation n-grams (mapped to their file) and the lengths of whole short items."""

    grams: dict[str, str]
    en_lengths: set[int]
    zh_lengths: set[int]
    # n -> sorted unique uint64 hashes of the evaluation n-grams (words for en, characters for zh)
    en_hashes: dict[int, np.ndarray] = field(default_factory=dict)
    zh_hashes: dict[int, np.ndarray] = field(default_factory=dict)
    filter: np.ndarray | None = None  # _prefilter of both

    def __len__(self) -> int:
        return len(self.grams)


def build_index(paths: list[Path], cfg: DecontamConfig) -> EvalIndex:
    """Every evaluation n-gram mapped to the file it came from (first file wins)."""
    index = EvalIndex({}, {cfg.en_ngram}, {cfg.zh_ngram})
    for p in paths:
        for item in read_eval_items(p):
            for g in word_grams(item, cfg.en_ngram, cfg.min_units):
                index.grams.setdefault(g, str(p))
                index.en_lengths.add(g.count(" ") + 1)
            for g in char_grams(item, cfg.zh_ngram, cfg.min_units):
                index.grams.setdefault(g, str(p))
                index.zh_lengths.add(len(g))
    # Word grams are joined by spaces (n >= 3 words); character grams never contain one.
    index.en_hashes = _gram_sets([g for g in index.grams if " " in g], _word_items)
    index.zh_hashes = _gram_sets([g for g in index.grams if " " not in g], _char_items)
    index.filter = _prefilter({**{-k: v for k, v in index.en_hashes.items()}, **index.zh_hashes})
    return index


def find_match(text: str, index: EvalIndex) -> tuple[str, str] | None:
    """(eval file, matched n-gram) for the first evaluation n-gram found in ``text``.

    Besides the full n-grams, whole short items are looked up as spans of their own length.
    """
    words = _WORD_RE.findall(_norm(text))
    for n in sorted(index.en_lengths, reverse=True):
        for i in range(len(words) - n + 1):
            g = " ".join(words[i : i + n])
            if g in index.grams:
                return index.grams[g], g
    chars = "".join(_CJK_RUN_RE.findall(_norm(text)))
    for n in sorted(index.zh_lengths, reverse=True):
        for i in range(len(chars) - n + 1):
            g = chars[i : i + n]
            if g in index.grams:
                return index.grams[g], g
    return None


# -- the vectorised scan -----------------------------------------------------------------------
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64
_BASE_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_BATCH_CHARS = 1 << 20  # documents are scanned in batches of about this many characters
_powers_cache: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**k and BASE**-k (mod 2**64) for k < n."""
    pw, ipw = _powers_cache
    if len(pw) < n:
        # A full batch at once: growing step by step would redo the products many times.
        size = max(n, 2 * len(pw), _BATCH_CHARS + (1 << 17))
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.full(size, _BASE, np.uint64)) * _BASE_INV
            ipw = np.cumprod(np.full(size, _BASE_INV, np.uint64)) * _BASE
        _powers_cache[:] = [pw, ipw]
    return pw[:n], ipw[:n]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads small code points and word hashes over 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _prefix(items: np.ndarray) -> np.ndarray:
    """P[j] = sum of items[m] * BASE**m for m < j (mod 2**64)."""
    pw, _ = _powers(len(items))
    out = np.zeros(len(items) + 1, np.uint64)
    np.cumsum(items * pw, out=out[1:])
    return out


def _window_hashes(prefix: np.ndarray, n: int) -> np.ndarray:
    """Hash of items[j:j+n] for every j, independent of j (the prefix difference unshifted)."""
    count = len(prefix) - n
    if count <= 0:
        return np.zeros(0, np.uint64)
    _, ipw = _powers(count)
    return (prefix[n:] - prefix[:count]) * ipw


@dataclass
class _Batch:
    text: str  # the normalised documents joined by NUL (neither a word nor a CJK character)
    cps: np.ndarray  # its code points
    doc_of: np.ndarray  # the document of each code point


def _batch(texts: list[str]) -> _Batch:
    # NUL separates documents; one inside a document is, like a space, neither word nor CJK.
    joined = "\x00".join(t.replace("\x00", " ") if "\x00" in t else t for t in texts)
    text = fast_nfkc(joined).lower()
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    return _Batch(text, cps, np.cumsum(cps == 0))


# -- NFKC at numpy speed -------------------------------------------------------------------------
# unicodedata.normalize costs as much as the whole scan on Chinese text (its quick check fails on
# every full-width comma). Each code point is classified once: "safe" (NFKC leaves it alone and
# nothing composes with it from before: a normalisation boundary), "mapped" (NFKC turns it into
# one safe character whatever its neighbours) or "complex" (combining marks, composing jamo,
# ligatures...). Mapped points are replaced in the code-point array; only the runs of complex
# points, with the character before each run, go through unicodedata.
_SAFE, _MAPPED, _COMPLEX = 0, 1, 2
_STATE = np.full(0x110000, -1, np.int8)
_TARGET = np.zeros(0x110000, np.uint32)
_second: set[int] = set()


def _composing_seconds() -> set[int]:
    if not _second:
        for c in range(0x30000):
            dec = unicodedata.decomposition(chr(c))
            if dec and not dec.startswith("<") and len(dec.split()) == 2:
                _second.add(int(dec.split()[1], 16))
        _second.update(range(0x1161, 0x1176), range(0x11A8, 0x11C3))  # Hangul V and T jamo
    return _second


def _is_boundary(c: int) -> bool:
    ch = chr(c)
    return (
        unicodedata.is_normalized("NFKC", ch)
        and unicodedata.combining(ch) == 0
        and c not in _composing_seconds()
    )


def _classify(points: np.ndarray) -> None:
    for c in points.tolist():
        ch = chr(c)
        if _is_boundary(c):
            _STATE[c] = _SAFE
            continue
        out = unicodedata.normalize("NFKC", ch)
        first = unicodedata.normalize("NFKD", ch)[:1]
        if (
            len(out) == 1
            and _is_boundary(ord(out))
            and unicodedata.combining(ch) == 0
            and c not in _composing_seconds()
            and first
            and _is_boundary(ord(first)) | (unicodedata.combining(first) == 0)
            and ord(first) not in _composing_seconds()
        ):
            _STATE[c], _TARGET[c] = _MAPPED, ord(out)
        else:
            _STATE[c] = _COMPLEX


def fast_nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)``, vectorised over code points."""
    if text.isascii():
        return text
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32).copy()
    state = _STATE[cps]
    if (state < 0).any():
        _classify(np.unique(cps[state < 0]))
        state = _STATE[cps]
    mapped = state == _MAPPED
    if mapped.any():
        cps[mapped] = _TARGET[cps[mapped]]
    if not (state == _COMPLEX).any():
        return cps.tobytes().decode("utf-32-le", "surrogatepass")
    out = cps.tobytes().decode("utf-32-le", "surrogatepass")
    edge = np.diff(np.concatenate([[False], state == _COMPLEX, [False]]).view(np.int8))
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    starts = np.maximum(starts - 1, 0)  # the character a complex run may compose with
    pieces, prev = [], 0
    for a, b in zip(starts.tolist(), ends.tolist()):
        a = max(a, prev)
        pieces.append(out[prev:a])
        pieces.append(unicodedata.normalize("NFKC", out[a:b]))
        prev = b
    pieces.append(out[prev:])
    return "".join(pieces)


def _word_items(b: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per word ([a-z0-9]+): its hash, document, start and end offset in the batch text."""
    c = b.cps
    is_w = ((c >= 97) & (c <= 122)) | ((c >= 48) & (c <= 57))
    edge = np.diff(np.concatenate([[False], is_w, [False]]).view(np.int8))
    s, e = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    prefix = _prefix(_mix(c.astype(np.uint64) + np.uint64(1)))
    _, ipw = _powers(len(c) + 1)
    words = _mix((prefix[e] - prefix[s]) * ipw[s])
    return words, b.doc_of[s], s, e


_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (48, 57))


def _char_items(b: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per CJK character or digit: its hash, document, start and end offset."""
    c = b.cps
    keep = np.zeros(len(c), bool)
    for lo, hi in _CJK_RANGES:
        keep |= (c >= lo) & (c <= hi)
    pos = np.flatnonzero(keep)
    items = _mix(c[pos].astype(np.uint64) + np.uint64(1))
    return items, b.doc_of[pos], pos, pos + 1


def _grams(prefix, docs, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, first item index) of every n-item window inside one document."""
    h = _window_hashes(prefix, n)
    if not len(h):
        return h, np.zeros(0, np.int64)
    j = np.flatnonzero(docs[: len(h)] == docs[n - 1 :])
    return h[j], j


def _gram_sets(grams: list[str], itemize) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    if not grams:
        return out
    b = _batch(grams)
    items, docs, _, _ = itemize(b)
    counts = np.bincount(docs, minlength=len(grams))
    for n in np.unique(counts):
        if n == 0:
            continue
        h, j = _grams(_prefix(items), docs, int(n))
        whole = counts[docs[j]] == n  # the gram spanning its whole (single-gram) document
        out[int(n)] = np.union1d(out.get(int(n), h[:0]), h[whole])
    return out


def _prefilter(tables: dict[int, np.ndarray]) -> np.ndarray:
    """A presence table over the low bits of every hash, about 16 slots per n-gram (at most
    16 MB): most windows are settled by one load from a table that stays in cache."""
    total = sum(len(t) for t in tables.values())
    bits = np.zeros(1 << int(np.clip(np.ceil(np.log2(max(total, 1) * 16)), 16, 24)), bool)
    for t in tables.values():
        bits[t & np.uint64(len(bits) - 1)] = True
    return bits


def _scan(texts: list[str], index: EvalIndex, out: list) -> None:
    b = _batch(texts)
    found: dict[int, tuple] = {}  # doc -> (order key, (file, gram))
    for lang, itemize, lengths, tables, sep in (
        (0, _word_items, index.en_lengths, index.en_hashes, " "),
        (1, _char_items, index.zh_lengths, index.zh_hashes, ""),
    ):
        if not any(n in tables for n in lengths):
            continue
        items, docs, s, e = itemize(b)
        prefix = _prefix(items)
        bits = index.filter
        mask = np.uint64(len(bits) - 1)
        for n in lengths:
            if n not in tables:
                continue
            # Every window, across document ends too: the rare hits are checked after.
            h = _window_hashes(prefix, n)
            cand = np.flatnonzero(bits[h & mask])
            if not len(cand):
                continue
            table = tables[n]
            pos = np.minimum(np.searchsorted(table, h[cand]), len(table) - 1)
            cand = cand[table[pos] == h[cand]]
            for k in cand[docs[cand] == docs[cand + n - 1]].tolist():
                d = int(docs[k])
                key = (lang, -n, k)
                if d in found and found[d][0] <= key:
                    continue
                gram = sep.join(b.text[s[i] : e[i]] for i in range(k, k + n))
                if gram in index.grams:  # confirm: a hash hit alone could be a collision
                    found[d] = (key, (index.grams[gram], gram))
    out.extend(found[d][1] if d in found else None for d in range(len(texts)))


def find_matches(texts: list[str], index: EvalIndex) -> list[tuple[str, str] | None]:
    """``find_match`` for many documents at once: the same (eval file, n-gram) or None each."""
    out: list[tuple[str, str] | None] = []
    batch: list[str] = []
    size = 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= _BATCH_CHARS:
            _scan(batch, index, out)
            batch, size = [], 0
    if batch:
        _scan(batch, index, out)
    return out
