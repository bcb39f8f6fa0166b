"""Multiple-choice tasks made from the held-out sample corpus (no downloads).

* ``en_next_verse``: a sentence of a held-out KJV/ASV chapter is the context; the true next
  sentence of the same chapter is one of 4 choices, the 3 others are sentences of other held-out
  chapters.
* ``zh_news_cloze``: the same with People's Daily held-out articles, split at 。！？.

The distractors are drawn from other documents with a fixed seed and with lengths close to the
true answer's, so that a length prior alone does not win; chance is 1 / 4.
"""

from __future__ import annotations

import random
import re

from aquila.eval.readers import MCExample

N_CHOICES = 4
SEED = 20240
_EN_SPLIT = re.compile(r"(?<=[.;:?!])\s+")
_ZH_SPLIT = re.compile(r"(?<=[。！？])")


def _sentences(doc: str, lang: str) -> list[str]:
    out = []
    for para in doc.split("\n"):
        parts = _EN_SPLIT.split(para) if lang == "en" else _ZH_SPLIT.split(para)
        out += [p.strip() for p in parts if p.strip()]
    return out


def next_sentence_examples(
    docs: list[list[str]], lang: str, limit: int | None, min_chars: int, seed: int = SEED
) -> list[MCExample]:
    """Examples from documents given as lists of sentences (see the module doc)."""
    rng = random.Random(seed)
    pool = [(d, s) for d, sents in enumerate(docs) for s in sents if len(s) >= min_chars]
    candidates = [
        (d, sents[i], sents[i + 1])
        for d, sents in enumerate(docs)
        for i in range(len(sents) - 1)
        if len(sents[i]) >= min_chars and len(sents[i + 1]) >= min_chars
    ]
    rng.shuffle(candidates)
    sep = " " if lang == "en" else ""
    out = []
    for d, context, answer in candidates[: limit or len(candidates)]:
        # Distractors from other documents, the closest in length among a random sample.
        sample = [s for dd, s in rng.sample(pool, min(len(pool), 60)) if dd != d and s != answer]
        sample.sort(key=lambda s: abs(len(s) - len(answer)))
        distractors = sample[: N_CHOICES - 1]
        if len(distractors) < N_CHOICES - 1:
            continue
        choices = [answer, *distractors]
        rng.shuffle(choices)
        out.append(MCExample(context, [sep + c for c in choices], choices.index(answer)))
    return out


def en_next_verse(limit: int | None = None) -> list[MCExample]:
    from aquila.data.samples import load_sample_corpus

    docs = []
    for src in load_sample_corpus("heldout"):
        if src.name in ("kjv", "asv"):
            # Drop the "Ruth 1" title line: it is not a verse.
            docs += [_sentences(doc.split("\n", 1)[-1], "en") for doc in src.documents]
    return next_sentence_examples(docs, "en", limit, min_chars=20)


def zh_news_cloze(limit: int | None = None) -> list[MCExample]:
    from aquila.data.samples import load_sample_corpus

    docs = []
    for src in load_sample_corpus("heldout"):
        if src.name == "peoples_daily":
            docs += [_sentences(doc, "zh") for doc in src.documents]
    return next_sentence_examples(docs, "zh", limit, min_chars=8)
