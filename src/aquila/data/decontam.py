"""Decontamination: remove training documents that share a long n-gram with an evaluation item.

English uses 13 word-grams (GPT-3's choice). Chinese counts characters: a 13-word English span
is about 20 Chinese characters, but C-Eval stems are short (often 15-40 characters), so the
default is 15-character grams over CJK characters and digits: longer than common set phrases
(four-character idioms, 8-10 character institution names), short enough to catch a short stem. Items shorter than n units contribute their whole text as one
gram when it has at least ``min_units`` units (GPT-3 did the same for short items).
Text is NFKC-normalised first, which maps full-width digits and letters to ASCII.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

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
