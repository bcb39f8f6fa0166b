"""Language identification with py3langid (a maintained langid.py; its model ships in the wheel).

Chinese varieties the model distinguishes (Wu, Cantonese, Classical...) all count as ``zh``: the
model labels plain People's Daily news ``wuu`` for a few percent of lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

ZH_VARIETIES = frozenset({"zh", "wuu", "yue", "lzh", "gan", "hak", "cdo", "nan", "cjy", "hsn"})
# The model is character-n-gram based: a prefix decides as well as the whole document and
# keeps the cost per document bounded.
MAX_CHARS = 2000


@dataclass(frozen=True)
class LangGuess:
    lang: str  # ISO 639-1 code, Chinese varieties folded into "zh"
    prob: float


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect(text: str) -> LangGuess:
    """The most probable language of ``text`` and its normalised probability."""
    lang, prob = _identifier().classify(text[:MAX_CHARS])
    return LangGuess("zh" if lang in ZH_VARIETIES else lang, float(prob))


def contradicts(text: str, source_lang: str, min_prob: float = 0.5) -> LangGuess | None:
    """The confident guess when it disagrees with an ``en``/``zh`` source, else None.

    Code and mixed sources are never contradicted; a low-confidence guess (short text, code
    snippets in an English doc) never removes a document.
    """
    if source_lang not in ("en", "zh"):
        return None
    guess = detect(text)
    if guess.lang != source_lang and guess.prob >= min_prob:
        return guess
    return None
