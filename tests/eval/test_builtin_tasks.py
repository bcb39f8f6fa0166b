"""Built-in held-out tasks: cloze and word order in both languages, next sentence with context."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from aquila.eval import builtin
from aquila.eval.builtin import (
    en_word_cloze,
    en_word_order,
    next_sentence_examples,
    zh_char_order,
    zh_word_cloze,
    zh_word_order,
    zh_word_shuffle,
)
from aquila.eval.tasks import RunOptions, get_task

NEW_TASKS = {
    "en_word_cloze": en_word_cloze,
    "zh_word_cloze": zh_word_cloze,
    "en_word_order": en_word_order,
    "zh_word_order": zh_word_order,
    "zh_char_order": zh_char_order,
    "zh_word_shuffle": zh_word_shuffle,
}


@pytest.fixture(scope="module")
def corpus_text() -> dict[str, str]:
    """Held-out and training text of the sources the tasks use, joined per split and language."""
    from aquila.data.samples import load_sample_corpus

    out = {}
    for split in ("heldout", "train"):
        for src in load_sample_corpus(split):
            lang = {"kjv": "en", "asv": "en", "peoples_daily": "zh"}.get(src.name)
            if lang:
                key = f"{split}_{lang}"
                out[key] = out.get(key, "") + "\n".join(src.documents)
    return out


@pytest.mark.parametrize("name", NEW_TASKS)
def test_examples_are_deterministic_and_well_formed(name):
    load = NEW_TASKS[name]
    first, again = load(60), load(60)
    assert first == again
    assert load(25) == first[:25]  # --limit takes a prefix of the same order
    assert len(first) == 60
    for e in first:
        assert len(e.choices) == 4 and 0 <= e.gold < 4
        assert len(set(e.choices)) == 4  # every distractor differs from the answer
    assert len({e.gold for e in first}) == 4  # the answer's position is shuffled


def test_tasks_read_the_heldout_split_only(monkeypatch, corpus_text):
    from aquila.data import samples

    real, splits = samples.load_sample_corpus, []

    def spy(split, *args, **kwargs):
        splits.append(split)
        return real(split, *args, **kwargs)

    monkeypatch.setattr(samples, "load_sample_corpus", spy)
    builtin._bible_chapters.cache_clear()
    builtin._news_articles.cache_clear()
    try:
        examples = {name: load(40) for name, load in NEW_TASKS.items()}
    finally:
        builtin._bible_chapters.cache_clear()
        builtin._news_articles.cache_clear()
    assert splits and set(splits) == {"heldout"}
    for name, exs in examples.items():
        lang = name[:2]
        heldout = corpus_text[f"heldout_{lang}"].replace("\n", " " if lang == "en" else "")
        train = corpus_text[f"train_{lang}"]
        new = 0
        for e in exs:
            # The sentence with its true word, in its true order, is held-out text.
            tail = (e.context + e.choices[e.gold])[-40:]
            assert tail in heldout
            new += tail not in train
        # Set phrases ("the grace of our Lord Jesus Christ") recur in the training books.
        assert new >= 0.9 * len(exs)


def _cloze_words(e) -> tuple[list[str], set[str]]:
    """The word of each choice and the set of the rests of the sentence."""
    if e.choices[0][:1] == " ":
        words = [re.match(r" ([A-Za-z]+)", c).group(1) for c in e.choices]
        rests = {c[len(" " + w) :] for c, w in zip(e.choices, words)}
    else:
        words = [c[:2] for c in e.choices]
        rests = {c[2:] for c in e.choices}
    return words, rests


def test_en_cloze_distractors_match_the_answer():
    for e in en_word_cloze(80):
        words, rests = _cloze_words(e)
        assert len(rests) == 1  # only the blanked word differs
        answer = words[e.gold]
        # The blanked sentence itself; the context starts with the sentence before it.
        sentence = builtin._sentences(e.context + e.choices[e.gold], "en")[-1]
        for w in words:
            assert w.isalpha() and len(w) == len(answer)
            assert w[0].isupper() == answer[0].isupper()
            if w != answer:  # a distractor never repeats a word of its sentence
                assert not re.search(rf"\b{w}\b", sentence, re.IGNORECASE)


def test_zh_cloze_blanks_a_two_character_word():
    for e in zh_word_cloze(80):
        words, rests = _cloze_words(e)
        assert len(rests) == 1
        assert all(re.fullmatch(r"[\u4e00-\u9fff]{2}", w) for w in words)
        sentence = builtin._sentences(e.context + e.choices[e.gold], "zh")[-1]
        assert all(w not in sentence for j, w in enumerate(words) if j != e.gold)


def _heldout_counts(lang: str) -> Counter[str]:
    """Word counts of the held-out text the distractors are drawn from."""
    if lang == "en":
        text = " ".join(s for c in builtin._bible_chapters() for s in c)
        return Counter(re.findall(r"(?<![-'A-Za-z])[A-Za-z]+(?![-'A-Za-z])", text))
    return Counter(w for a in builtin._news_articles() for s in a for w in s)


@pytest.mark.parametrize("load", [en_word_cloze, zh_word_cloze])
def test_cloze_priors_that_ignore_context_stay_at_chance(load):
    examples = load(None)
    assert len(examples) > 1000
    counts = _heldout_counts(load.__name__[:2])
    by_freq = by_len = 0
    for e in examples:
        words, _ = _cloze_words(e)
        assert all(counts[w] > 0 for w in words)  # distractors are words of held-out text
        by_freq += max(range(4), key=lambda j: (counts[words[j]], -j)) == e.gold
        by_len += max(range(4), key=lambda j: (len(e.choices[j].encode()), -j)) == e.gold
    # Frequency ranks are balanced by construction; lengths are equal (the first choice wins).
    assert abs(by_freq / len(examples) - 0.25) < 0.04
    assert abs(by_len / len(examples) - 0.25) < 0.04


def test_en_word_order_swaps_two_adjacent_words():
    for e in en_word_order(80):
        assert e.context == ""
        answer = e.choices[e.gold].split()
        for j, c in enumerate(e.choices):
            words = c.split()
            diff = [i for i in range(len(words)) if words[i] != answer[i]]
            if j == e.gold:
                continue
            assert len(diff) == 2 and diff[1] == diff[0] + 1
            assert words[diff[0]] == answer[diff[1]] and words[diff[1]] == answer[diff[0]]
            assert all(w.isalpha() for w in words[diff[0] : diff[1] + 1])


def test_zh_word_order_swaps_two_adjacent_stretches():
    for e in zh_word_order(80):
        assert e.context == ""
        answer = e.choices[e.gold]
        for j, c in enumerate(e.choices):
            assert sorted(c) == sorted(answer)  # the same characters in another order
            if j == e.gold:
                continue
            lo = next(i for i in range(len(c)) if c[i] != answer[i])
            hi = len(c) - next(i for i in range(len(c)) if c[-1 - i] != answer[-1 - i])
            # One stretch differs: a stretch of the answer cut in two and its parts swapped (the
            # two words may share their outer characters, so the stretch can reach beyond).
            assert any(
                c[a:b] == answer[a:b][k:] + answer[a:b][:k]
                for a in range(max(0, lo - 6), lo + 1)
                for b in range(hi, min(len(c), hi + 6) + 1)
                for k in range(1, b - a)
            )


def test_zh_char_order_writes_one_word_backwards():
    counts = _heldout_counts("zh")
    for e in zh_char_order(80):
        answer = e.choices[e.gold]
        for j, c in enumerate(e.choices):
            if j == e.gold:
                continue
            diff = [i for i in range(len(c)) if c[i] != answer[i]]
            assert len(diff) == 2 and diff[1] == diff[0] + 1
            word = answer[diff[0] : diff[1] + 1]
            assert c[diff[0] : diff[1] + 1] == word[::-1]
            assert counts[word] > 0 and counts[word[::-1]] == 0  # backwards it is no word


def test_next_sentence_context_takes_the_preceding_sentences():
    docs = [[f"d{d} s{i} is here." for i in range(5)] for d in range(6)]
    ex = next_sentence_examples(docs, "en", limit=20, min_chars=5, context_sentences=3)
    for e in ex:
        d, i = re.match(r" d(\d) s(\d)", e.choices[e.gold]).groups()
        want = [f"d{d} s{k} is here." for k in range(max(0, int(i) - 3), int(i))]
        assert e.context == " ".join(want)


@pytest.mark.parametrize("name", [*NEW_TASKS, "en_next_verse", "zh_news_cloze"])
def test_tasks_report_chance_beside_the_score(name, eval_lm):
    from aquila.eval.runner import evaluate

    task = get_task(name)
    assert task.chance == 0.25 and task.lang == name[:2]
    result = evaluate(eval_lm, [task], limit=4, show_progress=False)[name]
    assert result["chance"] == 0.25 and result["n"] == 4
    assert {"acc", "acc_norm", "acc_pmi"} <= set(result)
    assert task.run(eval_lm, task.load(4), RunOptions())["n"] == 4


def test_heldout_news_keeps_its_word_segmentation():
    articles = builtin._news_articles()
    sentences = [s for a in articles for s in a]
    # Nearly every held-out paragraph is found in the tagged file.
    assert len(articles) == 160 and len(sentences) > 2000
    words = Counter(w for s in sentences for w in s if not w.startswith("\x00"))
    assert words["中国"] > 50 and words["经济"] > 20


def test_zh_word_shuffle_keeps_the_characters_and_the_final_punctuation():
    examples = zh_word_shuffle(80)
    assert len(examples) == 80
    for e in examples:
        answer = e.choices[e.gold]
        assert e.context == "" and len(set(e.choices)) == 4
        for c in e.choices:
            assert sorted(c) == sorted(answer)
            if answer[-1] in "。！？":
                assert c[-1] == answer[-1]
