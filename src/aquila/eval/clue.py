"""CLUE-style Chinese classification sets as multiple choice over label words (HELM-style).

The Aquila2 report scores TNEWS, OCNLI, BUSTM, EPRSTMT and CLUEWSC: each example becomes an
instruction prompt that lists the label words, and the label words themselves are the choices
(log P(word | prompt), as for any multiple-choice task). Readers take local copies in the
upstream layout: JSON lines (CLUE and FewCLUE name the files ``.json``), fields as published.

| format    | upstream              | fields                                                      | label words |
|-----------|-----------------------|-------------------------------------------------------------|-------------|
| ``tnews``   | CLUE / FewCLUE TNEWS  | sentence, label ("102") and/or label_desc ("news_entertainment") | 15 news categories (故事, 文化, 娱乐, ...) |
| ``ocnli``   | CLUE OCNLI            | sentence1, sentence2, label (entailment/neutral/contradiction; "-": no majority, skipped) | 是的 / 可能 / 不是 |
| ``bustm``   | FewCLUE BUSTM         | sentence1, sentence2, label ("0"/"1")                      | 不同 / 相同 |
| ``eprstmt`` | FewCLUE EPRSTMT       | sentence, label (Positive/Negative)                         | 差评 / 好评 |
| ``cluewsc`` | CLUEWSC2020 / FewCLUE | text, target.span1_text/span1_index/span2_text/span2_index, label ("true"/"false") | 否 / 是 |

Every field is checked as in :mod:`aquila.eval.readers`: a malformed record is refused with one
line naming the file, the line and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aquila.errors import UserError
from aquila.eval.readers import MCExample, _field, _files, _kind, field_str, jsonl_records

SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")

# TNEWS: code, upstream label_desc, label word.
TNEWS_LABELS = [
    ("100", "news_story", "故事"),
    ("101", "news_culture", "文化"),
    ("102", "news_entertainment", "娱乐"),
    ("103", "news_sports", "体育"),
    ("104", "news_finance", "财经"),
    ("106", "news_house", "房产"),
    ("107", "news_car", "汽车"),
    ("108", "news_edu", "教育"),
    ("109", "news_tech", "科技"),
    ("110", "news_military", "军事"),
    ("112", "news_travel", "旅游"),
    ("113", "news_world", "国际"),
    ("114", "news_stock", "股票"),
    ("115", "news_agriculture", "农业"),
    ("116", "news_game", "电竞"),
]
OCNLI_LABELS = {"entailment": "是的", "neutral": "可能", "contradiction": "不是"}
BUSTM_LABELS = {"0": "不同", "1": "相同"}
EPRSTMT_LABELS = {"Negative": "差评", "Positive": "好评"}
CLUEWSC_LABELS = {"false": "否", "true": "是"}


def _label(obj: dict, key: str, allowed: list[str], where: str, ints: bool = False) -> int:
    """The index of ``obj[key]`` among ``allowed`` label strings (integers too where ``ints``)."""
    value = _field(obj, key, where)
    if ints and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or value not in allowed:
        raise UserError(
            f"{where}: field {key!r} = {value!r} is not one of {', '.join(allowed)}"
            + ("" if isinstance(value, str) else f" (got {_kind(value)})")
        )
    return allowed.index(value)


def _examples(path: str | Path, make) -> list[MCExample]:
    out = []
    for file in _files(Path(path), SUFFIXES):
        for where, obj in jsonl_records(file):
            ex = make(obj, where)
            if ex is not None:
                out.append(ex)
    if not out:
        raise UserError(f"{path}: no labelled records")
    return out


def _listing(words) -> str:
    words = list(words)
    return "、".join(words[:-1]) + "还是" + words[-1]


def read_tnews(path: str | Path) -> list[MCExample]:
    codes = [c for c, _, _ in TNEWS_LABELS]
    descs = [d for _, d, _ in TNEWS_LABELS]
    words = [w for _, _, w in TNEWS_LABELS]

    def make(obj: dict, where: str) -> MCExample:
        sentence = field_str(obj, "sentence", where, nonempty=True)
        if "label" not in obj and "label_desc" not in obj:
            raise UserError(f"{where}: missing field 'label' (or 'label_desc')")
        gold = _label(obj, "label", codes, where, ints=True) if "label" in obj else None
        if "label_desc" in obj:
            by_desc = _label(obj, "label_desc", descs, where)
            if gold is not None and by_desc != gold:
                raise UserError(
                    f"{where}: field 'label_desc' = {descs[by_desc]!r} contradicts 'label' = "
                    f"{codes[gold]!r} ({descs[gold]})"
                )
            gold = by_desc
        context = f"新闻标题：{sentence}\n问题：这条新闻属于哪一类？{'、'.join(words)}？\n答案："
        return MCExample(context, list(words), gold)

    return _examples(path, make)


def read_ocnli(path: str | Path) -> list[MCExample]:
    labels, words = list(OCNLI_LABELS), list(OCNLI_LABELS.values())

    def make(obj: dict, where: str) -> MCExample | None:
        premise = field_str(obj, "sentence1", where, nonempty=True)
        hypothesis = field_str(obj, "sentence2", where, nonempty=True)
        if obj.get("label") == "-":  # the annotators had no majority: no gold label
            return None
        gold = _label(obj, "label", labels, where)
        context = f"{premise}\n问题：由此可以推出“{hypothesis}”吗？{_listing(words)}？\n答案："
        return MCExample(context, list(words), gold)

    return _examples(path, make)


def read_bustm(path: str | Path) -> list[MCExample]:
    labels, words = list(BUSTM_LABELS), list(BUSTM_LABELS.values())

    def make(obj: dict, where: str) -> MCExample:
        a = field_str(obj, "sentence1", where, nonempty=True)
        b = field_str(obj, "sentence2", where, nonempty=True)
        gold = _label(obj, "label", labels, where, ints=True)
        context = (
            f"句子一：{a}\n句子二：{b}\n问题：这两句话的意思相同吗？{_listing(reversed(words))}？"
            "\n答案："
        )
        return MCExample(context, list(words), gold)

    return _examples(path, make)


def read_eprstmt(path: str | Path) -> list[MCExample]:
    labels, words = list(EPRSTMT_LABELS), list(EPRSTMT_LABELS.values())

    def make(obj: dict, where: str) -> MCExample:
        sentence = field_str(obj, "sentence", where, nonempty=True)
        gold = _label(obj, "label", labels, where)
        context = f"评论：{sentence}\n问题：这条评论是好评还是差评？\n答案："
        return MCExample(context, list(words), gold)

    return _examples(path, make)


def _span(target: dict, k: str, n: int, where: str) -> str:
    """``target.span{k}_text`` (a non-empty string) checked with its index into a text of ``n``
    characters."""
    text = field_str(target, f"span{k}_text", where, nonempty=True)
    index = _field(target, f"span{k}_index", where)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        raise UserError(f"{where}: field 'span{k}_index' = {index!r} is not a position in the text")
    return text


def read_cluewsc(path: str | Path) -> list[MCExample]:
    labels, words = list(CLUEWSC_LABELS), list(CLUEWSC_LABELS.values())

    def make(obj: dict, where: str) -> MCExample:
        text = field_str(obj, "text", where, nonempty=True)
        target: Any = _field(obj, "target", where)
        if not isinstance(target, dict):
            raise UserError(f"{where}: field 'target' must be an object, got {_kind(target)}")
        noun, pronoun = (_span(target, k, len(text), f"{where}: target") for k in "12")
        gold = _label(obj, "label", labels, where)
        context = f"{text}\n问题：句中的“{pronoun}”指的是“{noun}”吗？是或否？\n答案："
        return MCExample(context, list(words), gold)

    return _examples(path, make)


CLUE_READERS = {
    "tnews": read_tnews,
    "ocnli": read_ocnli,
    "bustm": read_bustm,
    "eprstmt": read_eprstmt,
    "cluewsc": read_cluewsc,
}
