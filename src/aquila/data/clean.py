"""The clean stage for one part: normalise text, strip boilerplate lines, identify the language
and apply the quality heuristics. Pure functions of (documents, config); the pipeline runs them
in worker processes.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from aquila.data import langid, quality

# C0/C1 controls except \t and \n, plus zero-width characters and the BOM, which carry nothing.
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
# Boilerplate is recognised on short lines only: a long line that mentions cookies is prose.
BOILERPLATE_MAX_LEN = 200
BOILERPLATE_RE = re.compile(
    r"(?i)("
    r"\bcookies?\b.*\b(policy|consent|accept|use|settings)\b|\baccept (all )?cookies\b"
    r"|\ball rights reserved\b|^\s*(copyright|\(c\)|©)\s*(\d{4}|©)"
    r"|\bclick here\b|\bprivacy policy\b|\bterms (of|and) (use|service|conditions)\b"
    r"|\bsubscribe to (our|the) newsletter\b|\benable javascript\b|\bskip to (main )?content\b"
    r"|版权所有|版權所有|点击这里|點擊這裡|点击此处|点击查看|隐私政策|免责声明|使用条款"
    r"|本站所有|扫描二维码|关注我们|返回首页|上一篇|下一篇)"
)
# A short line repeated across many documents of one part is site navigation, not content.
NAV_MAX_LEN = 60
NAV_MIN_DOCS = 5
NAV_MIN_DOC_FRAC = 0.3


@dataclass(frozen=True)
class CleanConfig:
    lid_min_prob: float = 0.5
    boilerplate: bool = True
    quality: quality.QualityConfig = field(default_factory=quality.QualityConfig)


def normalise(text: str) -> str:
    """NFC, unified newlines, control characters removed (``\\n`` and ``\\t`` kept)."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return CONTROL_RE.sub("", text)


def nav_lines(texts: list[str]) -> set[str]:
    """Short lines present in at least 30% (and at least 5) of the part's documents."""
    if len(texts) < NAV_MIN_DOCS:
        return set()
    seen: Counter[str] = Counter()
    for t in texts:
        seen.update({ln.strip() for ln in t.split("\n") if 0 < len(ln.strip()) <= NAV_MAX_LEN})
    need = max(NAV_MIN_DOCS, NAV_MIN_DOC_FRAC * len(texts))
    return {ln for ln, c in seen.items() if c >= need}


def strip_boilerplate(text: str, nav: set[str]) -> tuple[str, int]:
    """Remove boilerplate and navigation lines; returns (text, lines removed)."""
    kept, removed = [], 0
    for ln in text.split("\n"):
        s = ln.strip()
        if s and (s in nav or (len(s) <= BOILERPLATE_MAX_LEN and BOILERPLATE_RE.search(s))):
            removed += 1
        else:
            kept.append(ln)
    return "\n".join(kept).strip("\n"), removed


@dataclass
class CleanResult:
    kept: list[dict]
    removed: list[tuple[str, str, str]]  # (doc_id, reason, detail)
    boilerplate_lines: int


def clean_documents(docs: list[dict], lang: str, cfg: CleanConfig) -> CleanResult:
    """Clean one part's documents (dicts with ``id`` and ``text``) of a source in ``lang``."""
    texts = [normalise(d["text"]) for d in docs]
    use_boilerplate = cfg.boilerplate and lang != "code"  # code repeats lines legitimately
    nav = nav_lines(texts) if use_boilerplate else set()
    kept, removed, lines_removed = [], [], 0
    for doc, text in zip(docs, texts):
        if use_boilerplate:
            text, n = strip_boilerplate(text, nav)
            lines_removed += n
        if not text.strip():
            removed.append((doc["id"], "empty", ""))
            continue
        guess = langid.contradicts(text, lang, cfg.lid_min_prob)
        if guess is not None:
            removed.append((doc["id"], "language", f"{guess.lang} p={guess.prob:.2f}"))
            continue
        reason = quality.check(text, lang, cfg.quality)
        if reason:
            removed.append((doc["id"], reason, ""))
            continue
        kept.append({**doc, "text": text})
    return CleanResult(kept, removed, lines_removed)
