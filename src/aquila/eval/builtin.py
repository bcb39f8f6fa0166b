"""Multiple-choice tasks made from the held-out sample corpus (no downloads).

Every task reads only the text of ``load_sample_corpus("heldout")`` (the Chinese word tasks add
the word boundaries of the same paragraphs), draws with a fixed seed, and gives 4 choices
(chance 1 / 4). Distractors are matched to the answer so that a prior that ignores the
context (length, word frequency) stays at chance.

Next sentence (does the model know which sentence follows which; weak on small models):

* ``en_next_verse``: a sentence of a held-out KJV/ASV chapter is the context; the true next
  sentence of the same chapter is one of 4 choices, the 3 others are sentences of other held-out
  chapters, the closest in length among a random sample.
* ``zh_news_cloze``: the same with People's Daily held-out articles, split at 。！？.

Word cloze (does the model know which word fits):

* ``en_word_cloze``: a held-out KJV/ASV sentence with one word of 3+ letters blanked; the
  context is the previous sentence and the sentence up to the blank, each choice is a word
  followed by the rest of the sentence. The distractors are words of the held-out Bible text
  with the same number of letters and the same capitalisation, the neighbours of the answer in
  held-out frequency, with the answer's frequency rank among the 4 drawn at random (so "pick the
  most frequent word" scores 1 / 4), and none of them occurs in the sentence.
* ``zh_word_cloze``: the same on held-out People's Daily sentences with one two-character word
  blanked; words come from the corpus's own word segmentation (the tagged People's Daily file),
  and the distractors are other two-character words of the held-out articles, matched on
  frequency the same way.

Word and character order (BLiMP-style minimal sets: the same words, one in the right order):

* ``en_word_order``: a held-out KJV/ASV sentence of 6-30 words and 3 copies, each with one pair
  of adjacent words swapped (3 different pairs); no context.
* ``zh_word_order``: the same on held-out People's Daily sentences of 6-40 segmented words, two
  adjacent non-punctuation words swapped (many such swaps still read as Chinese: a weaker task).
* ``zh_char_order``: the same sentences, each distractor with one two-character word written
  backwards, only where the reversed form is no word of the held-out text (``带领`` / ``领带``
  never). A BPE vocabulary often holds the word as one token and its reverse as two, so even an
  untrained model prefers the true sentence (about 0.47 at 10M parameters): read a score against
  an untrained model's, not only against chance.

* ``zh_word_shuffle``: the same sentences and 3 copies with all their words in a random order
  (the final punctuation kept last): the coarsest order signal, the first a small model shows.

The choices of a cloze or word-order example differ in a word or two only, so ``acc`` (the
highest summed log-probability) is the score to read; ``acc_pmi`` divides out the choice's own
probability, which is where the difference lies, and word order has no context at all.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from collections import Counter
from collections.abc import Callable
from functools import cache

from aquila.eval.readers import MCExample

N_CHOICES = 4
SEED = 20240
_EN_SPLIT = re.compile(r"(?<=[.;:?!])\s+")
_ZH_SPLIT = re.compile(r"(?<=[。！？])")
# Whole words: not the parts of "Beth-lehem" or "LORD's".
_EN_WORD = re.compile(r"(?<![-'A-Za-z])[A-Za-z]+(?![-'A-Za-z])")
_EN_BLANK = re.compile(r"(?<= )[A-Za-z]{3,}(?![-'A-Za-z])")
_ZH_WORD = re.compile(r"[\u4e00-\u9fff]{2}")
_ZH_SENTENCE_END = frozenset("。！？")
# Part-of-speech tags of People's Daily tokens that are not words to blank or swap:
# punctuation, numerals, and the parts of names (surnames alone are often one character).
_ZH_SKIP_TAGS = frozenset({"w", "m", "nr"})
_TAGGED = re.compile(r"(\S+?)/([A-Za-z]+)")


def _sentences(doc: str, lang: str) -> list[str]:
    out = []
    for para in doc.split("\n"):
        parts = _EN_SPLIT.split(para) if lang == "en" else _ZH_SPLIT.split(para)
        out += [p.strip() for p in parts if p.strip()]
    return out


def next_sentence_examples(
    docs: list[list[str]],
    lang: str,
    limit: int | None,
    min_chars: int,
    seed: int = SEED,
    context_sentences: int = 1,
) -> list[MCExample]:
    """Examples from documents given as lists of sentences (see the module doc).

    The context is the ``context_sentences`` sentences before the answer (fewer at the start of
    a document).
    """
    rng = random.Random(seed)
    sep = " " if lang == "en" else ""
    pool = [(d, s) for d, sents in enumerate(docs) for s in sents if len(s) >= min_chars]
    candidates = [
        (d, sep.join(sents[max(0, i + 1 - context_sentences) : i + 1]), sents[i + 1])
        for d, sents in enumerate(docs)
        for i in range(len(sents) - 1)
        if len(sents[i]) >= min_chars and len(sents[i + 1]) >= min_chars
    ]
    rng.shuffle(candidates)
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


# ---------------------------------------------------------------------------------------------
# Held-out text, split into sentences of words


@cache
def _bible_chapters() -> tuple[tuple[str, ...], ...]:
    """Held-out KJV and ASV chapters as tuples of sentences, title lines dropped."""
    from aquila.data.samples import load_sample_corpus

    docs = []
    for src in load_sample_corpus("heldout"):
        if src.name in ("kjv", "asv"):
            # Drop the "Ruth 1" title line: it is not a verse.
            docs += [tuple(_sentences(doc.split("\n", 1)[-1], "en")) for doc in src.documents]
    return tuple(docs)


@cache
def _news_articles() -> tuple[tuple[tuple[str, ...], ...], ...]:
    """Held-out People's Daily articles as tuples of sentences, each a tuple of its words.

    The sample corpus stores the articles untagged; their word boundaries come back from the
    tagged file they were made from, matched paragraph by paragraph. Words whose tag is in
    ``_ZH_SKIP_TAGS`` are marked with a leading ``"\\x00"`` so that they are never blanked or
    swapped (the mark is dropped when the text is joined).
    """
    from aquila.data.samples import load_sample_corpus, peoples_daily_tagged, untag

    docs = next(s.documents for s in load_sample_corpus("heldout") if s.name == "peoples_daily")
    wanted = {p for d in docs for p in d.split("\n") if p}
    segmented: dict[str, tuple[str, ...]] = {}
    lines = peoples_daily_tagged().read_text(encoding="utf-8").split("\n")
    # The held-out articles are the last of the month: scan from the end and stop once found.
    for line in reversed(lines):
        if len(segmented) == len(wanted):
            break
        text = untag(line)
        if text in wanted and text not in segmented:
            words = [
                ("\x00" + w if t.lower() in _ZH_SKIP_TAGS else w)
                for w, t in _TAGGED.findall(line.replace("[", "").replace("]", " "))
            ]
            if "".join(w.lstrip("\x00") for w in words) == text:
                segmented[text] = tuple(words)
    out = []
    for doc in docs:
        sentences: list[tuple[str, ...]] = []
        for para in doc.split("\n"):
            current: list[str] = []
            for w in segmented.get(para, ()):
                current.append(w)
                if w.lstrip("\x00") in _ZH_SENTENCE_END:
                    sentences.append(tuple(current))
                    current = []
            if current:
                sentences.append(tuple(current))
        out.append(tuple(sentences))
    return tuple(out)


def _join_zh(words: tuple[str, ...] | list[str]) -> str:
    return "".join(w.lstrip("\x00") for w in words)


# ---------------------------------------------------------------------------------------------
# Word cloze


class FrequencyPools:
    """Words grouped by ``shape`` (e.g. length and capitalisation), each group sorted by count."""

    def __init__(self, counts: Counter[str], shape: Callable[[str], object]):
        self.counts, self.shape = counts, shape
        self.pools: dict[object, list[tuple[int, str]]] = {}
        for w, c in counts.items():
            self.pools.setdefault(shape(w), []).append((c, w))
        for pool in self.pools.values():
            pool.sort()

    def draw(
        self, word: str, allowed: Callable[[str], bool], rng: random.Random, k: int = N_CHOICES - 1
    ) -> list[str] | None:
        """``k`` allowed words of the answer's shape, its neighbours in frequency (or None).

        How many of them are more frequent than the answer is drawn uniformly from 0..k, so the
        answer's frequency rank among the choices is uniform and a frequency prior is at chance.
        """
        pool = self.pools.get(self.shape(word), [])
        pos = bisect.bisect_left(pool, (self.counts[word], word))
        above = rng.randint(0, k)
        lower = (w for _, w in reversed(pool[:pos]) if w != word and allowed(w))
        higher = (w for _, w in pool[pos:] if w != word and allowed(w))
        picked = list(itertools.islice(lower, k - above))
        picked += itertools.islice(higher, above)
        return picked if len(picked) == k else None


def _in_seeded_order(
    n: int,
    make: Callable[[int, random.Random], MCExample | None],
    limit: int | None,
    seed: int,
) -> list[MCExample]:
    """``make(i, rng)`` for the items 0..n-1 in a seeded random order (one generator for the
    order and the draws), skipping the items it returns None for, until ``limit`` examples."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    out: list[MCExample] = []
    for i in order:
        if limit and len(out) >= limit:
            break
        example = make(i, rng)
        if example is not None:
            out.append(example)
    return out


def cloze_examples(
    items: list[tuple[str, str, list[tuple[int, int]]]],
    pools: FrequencyPools,
    occurs: Callable[[str, str], bool],
    limit: int | None,
    seed: int = SEED,
) -> list[MCExample]:
    """One example per (context, sentence, candidate spans) item, in a seeded random order.

    One span of the sentence is blanked; the context ends where it begins and every choice is
    a word followed by the rest of the sentence. No distractor ``occurs(word, sentence)``: a
    word already in the sentence would often fit the blank as well.
    """

    def make(i: int, rng: random.Random) -> MCExample | None:
        context, sentence, spans = items[i]
        if not spans:
            return None
        start, end = rng.choice(spans)
        answer = sentence[start:end]
        distractors = pools.draw(answer, lambda w, s=sentence: not occurs(w, s), rng)
        if distractors is None:
            return None
        choices = [answer, *distractors]
        rng.shuffle(choices)
        prefix = (context + sentence[:start]).rstrip(" ")
        space = " " if sentence[start - 1 : start] == " " else ""
        rest = sentence[end:]
        return MCExample(prefix, [space + c + rest for c in choices], choices.index(answer))

    return _in_seeded_order(len(items), make, limit, seed)


def _en_shape(word: str) -> tuple[int, bool]:
    return len(word), word[:1].isupper()


def _en_occurs(word: str, sentence: str) -> bool:
    return re.search(rf"\b{word}\b", sentence, re.IGNORECASE) is not None


def en_word_cloze(limit: int | None = None) -> list[MCExample]:
    chapters = _bible_chapters()
    counts = Counter(w for sents in chapters for s in sents for w in _EN_WORD.findall(s))
    items, seen = [], set()
    for sents in chapters:
        for j, sentence in enumerate(sents):
            words = list(_EN_WORD.finditer(sentence))
            # KJV and ASV agree on many verses: each sentence once.
            if not 6 <= len(words) <= 40 or sentence in seen:
                continue
            seen.add(sentence)
            # Whole words after a space (not "lehem" of "Beth-lehem"), and not the first two:
            # the blank should have some of its own sentence before it.
            spans = [m.span() for m in _EN_BLANK.finditer(sentence) if m.start() > words[1].end()]
            context = sents[j - 1] + " " if j else ""
            items.append((context, sentence, spans))
    return cloze_examples(items, FrequencyPools(counts, _en_shape), _en_occurs, limit)


def _zh_words(sentence: tuple[str, ...]) -> list[str]:
    return [w for w in sentence if not w.startswith("\x00")]


def zh_word_cloze(limit: int | None = None) -> list[MCExample]:
    articles = _news_articles()
    counts = Counter(
        w for sents in articles for s in sents for w in _zh_words(s) if _ZH_WORD.fullmatch(w)
    )
    items, seen = [], set()
    for sents in articles:
        for j, sentence in enumerate(sents):
            text = _join_zh(sentence)
            if not 10 <= len(text) <= 80 or text in seen:
                continue
            seen.add(text)
            spans, pos = [], 0
            for k, w in enumerate(sentence):
                plain = w.lstrip("\x00")
                if k >= 2 and not w.startswith("\x00") and _ZH_WORD.fullmatch(w):
                    spans.append((pos, pos + 2))
                pos += len(plain)
            context = _join_zh(sents[j - 1]) if j else ""
            items.append((context, text, spans))
    return cloze_examples(items, FrequencyPools(counts, len), lambda w, s: w in s, limit)


# ---------------------------------------------------------------------------------------------
# Word order


def minimal_set_examples(
    sentences: list[list[str]],
    join: Callable[[list[str]], str],
    variants: Callable[[list[str]], list[list[str]]],
    limit: int | None,
    seed: int = SEED,
) -> list[MCExample]:
    """The true sentence and 3 of its ``variants`` (tried in a seeded random order), no context."""

    def make(i: int, rng: random.Random) -> MCExample | None:
        words = sentences[i]
        answer = join(words)
        candidates = variants(words)
        rng.shuffle(candidates)
        distractors: list[str] = []
        for changed in candidates:
            text = join(changed)
            if text != answer and text not in distractors:
                distractors.append(text)
            if len(distractors) == N_CHOICES - 1:
                break
        if len(distractors) < N_CHOICES - 1:
            return None
        choices = [answer, *distractors]
        rng.shuffle(choices)
        return MCExample("", choices, choices.index(answer))

    return _in_seeded_order(len(sentences), make, limit, seed)


def adjacent_swaps(swappable: Callable[[str], bool]) -> Callable[[list[str]], list[list[str]]]:
    """Every copy of a sentence with one pair of adjacent swappable words swapped."""

    def variants(words: list[str]) -> list[list[str]]:
        return [
            [*words[:k], words[k + 1], words[k], *words[k + 2 :]]
            for k in range(len(words) - 1)
            if swappable(words[k]) and swappable(words[k + 1]) and words[k] != words[k + 1]
        ]

    return variants


def en_word_order(limit: int | None = None) -> list[MCExample]:
    sentences, seen = [], set()
    for sents in _bible_chapters():
        for s in sents:
            words = s.split()
            if 6 <= len(words) <= 30 and s not in seen:
                seen.add(s)
                sentences.append(words)
    # Only words of letters swap: moving "land." away from the end would give the answer away.
    return minimal_set_examples(sentences, " ".join, adjacent_swaps(str.isalpha), limit)


def _news_sentences() -> list[list[str]]:
    """Held-out news sentences of 6-40 words, each once."""
    sentences, seen = [], set()
    for sents in _news_articles():
        for s in sents:
            text = _join_zh(s)
            if 6 <= len(s) <= 40 and text not in seen:
                seen.add(text)
                sentences.append(list(s))
    return sentences


def zh_word_order(limit: int | None = None) -> list[MCExample]:
    swappable = adjacent_swaps(lambda w: not w.startswith("\x00"))
    return minimal_set_examples(_news_sentences(), _join_zh, swappable, limit)


def zh_char_order(limit: int | None = None) -> list[MCExample]:
    counts = Counter(w for sents in _news_articles() for s in sents for w in s)

    def variants(words: list[str]) -> list[list[str]]:
        # A two-character word written backwards, where that is not itself a word ("带领").
        return [
            [*words[:k], w[::-1], *words[k + 1 :]]
            for k, w in enumerate(words)
            if _ZH_WORD.fullmatch(w) and w[0] != w[1] and w[::-1] not in counts
        ]

    return minimal_set_examples(_news_sentences(), _join_zh, variants, limit)


def zh_word_shuffle(limit: int | None = None) -> list[MCExample]:
    def variants(words: list[str]) -> list[list[str]]:
        # The words of the sentence in another order, its final punctuation kept last so the
        # end of the sentence does not give the answer away; seeded by the sentence itself.
        body, end = (words[:-1], words[-1:]) if words[-1][-1:] in _ZH_SENTENCE_END else (words, [])
        rng = random.Random(_join_zh(words))
        out = []
        for _ in range(2 * N_CHOICES):
            shuffled = list(body)
            rng.shuffle(shuffled)
            out.append([*shuffled, *end])
        return out

    return minimal_set_examples(_news_sentences(), _join_zh, variants, limit)


# ---------------------------------------------------------------------------------------------
# Next sentence


def en_next_verse(limit: int | None = None) -> list[MCExample]:
    return next_sentence_examples([list(c) for c in _bible_chapters()], "en", limit, min_chars=20)


def zh_news_cloze(limit: int | None = None) -> list[MCExample]:
    from aquila.data.samples import load_sample_corpus

    docs = []
    for src in load_sample_corpus("heldout"):
        if src.name == "peoples_daily":
            docs += [_sentences(doc, "zh") for doc in src.documents]
    return next_sentence_examples(docs, "zh", limit, min_chars=8)
