"""Decontamination: planted English (GSM8K-like) and Chinese (C-Eval-like) items are found."""

from __future__ import annotations

import json

import pytest

from aquila.data.decontam import DecontamConfig, build_index, find_match, read_eval_items
from aquila.errors import UserError

GSM = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "72",
    },
    {
        "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
        "answer": "10",
    },
    {
        "question": "A baker puts 17 loaves on each of 9 shelves and sells a third of them before noon. How many loaves are left on the shelves at noon?",
        "answer": "102",
    },
]
CEVAL_CSV = """id,question,A,B,C,D,answer,explanation
0,下列关于我国社会主义市场经济体制基本特征的表述中正确的一项是,坚持公有制为主体,实行按劳分配,宏观调控,对外开放,A,
1,某企业在年度财务报告中将长期借款的利息支出全部计入当期损益这种处理方法说明了什么,谨慎性,重要性,一致性,可比性,B,
2,在计算机网络中负责把域名转换为网络地址的系统通常被称为什么系统,DNS,FTP,HTTP,SMTP,A,
"""


@pytest.fixture
def eval_files(tmp_path):
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text("\n".join(json.dumps(r) for r in GSM), encoding="utf-8")
    ceval = tmp_path / "ceval.csv"
    ceval.write_text(CEVAL_CSV, encoding="utf-8")
    mmlu = tmp_path / "mmlu.csv"
    mmlu.write_text(
        "What is the capital city of the country that is home to the Eiffel Tower and the Louvre museum?,Paris,Rome,Berlin,Madrid,A\n",
        encoding="utf-8",
    )
    return [gsm, ceval, mmlu]


def test_readers(eval_files, tmp_path):
    assert GSM[0]["question"] in read_eval_items(eval_files[0])
    ceval = read_eval_items(eval_files[1])
    assert ceval[0].startswith("下列关于") and "DNS" in ceval and "0" not in ceval
    assert read_eval_items(eval_files[2])[0].startswith("What is the capital")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(UserError, match="bad.jsonl:1"):
        read_eval_items(bad)
    with pytest.raises(UserError, match="must be .jsonl"):
        (tmp_path / "x.xml").write_text("x")
        read_eval_items(tmp_path / "x.xml")


def test_planted_items_found_and_real_text_clean(eval_files, english_text, chinese_text):
    index = build_index(eval_files, DecontamConfig())
    en_docs = [english_text[i * 2500 : (i + 1) * 2500] for i in range(40)]
    zh_lines = chinese_text.split("\n")
    zh_docs = ["\n".join(zh_lines[i : i + 8]) for i in range(0, 320, 8)]
    # Real text shares no long n-gram with the evaluation sets.
    assert [d for d in en_docs + zh_docs if find_match(d, index)] == []
    # Plant: an English problem (re-punctuated, lower-cased) inside a chapter, and a C-Eval
    # stem (with full-width digits and extra punctuation) inside news text.
    planted_en = (
        en_docs[5][:1200]
        + " "
        + GSM[1]["question"].lower().replace(",", "")
        + " "
        + en_docs[5][1200:]
    )
    stem = "在计算机网络中，负责把域名转换为网络地址的系统通常被称为什么系统？"
    planted_zh = zh_docs[7][:200] + stem + zh_docs[7][200:]
    hit_en, hit_zh = find_match(planted_en, index), find_match(planted_zh, index)
    assert hit_en and hit_en[0].endswith("gsm8k.jsonl") and "babysitting" in hit_en[1]
    assert hit_zh and hit_zh[0].endswith("ceval.csv") and "域名" in hit_zh[1]
    # A short stem fragment below the n-gram length is not enough on its own.
    assert find_match(zh_docs[7] + "域名转换为网络地址", index) is None


def test_vectorised_scan_decides_exactly_as_the_plain_scan(
    eval_files, english_text, chinese_text, tmp_path
):
    """Same document removed, same eval file, same (first) n-gram, over real text with planted
    items, short items, full-width and combining characters."""
    from aquila.data.decontam import find_matches

    short_en = "the quick brown fox jumps over the lazy dog"  # 9 words: matched whole
    short_zh = "域名系统的解析过程"  # 9 characters
    extra = tmp_path / "short.txt"
    extra.write_text(f"{short_en}\n{short_zh}\n", encoding="utf-8")
    index = build_index([*eval_files, extra], DecontamConfig())
    wide = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in GSM[2]["question"])
    en = [english_text[i : i + 1800] for i in range(0, 90_000, 1800)]
    lines = chinese_text.split("\n")
    zh = ["\n".join(lines[i : i + 6]) for i in range(0, 300, 6)]
    docs = en + zh + ["", "x", "Ｗｅｎｇ ｅａｒｎｓ", "e\u0301\u0323 ﬁ ① ㈱ 가\u11a8"]
    for k in range(0, len(docs) - 4, 7):
        item = [GSM[k % 3]["question"], CEVAL_CSV.split("\n")[1 + k % 3].split(",")[1]][k % 2]
        docs[k] = docs[k][:300] + item.upper().replace(" ", "  ") + docs[k][300:]
    docs[3] = docs[3][:100] + wide + docs[3][100:]
    # A short item before a 13-gram: the longer n-gram is reported, as the plain scan does.
    docs[4] = docs[4][:100] + short_en + docs[4][100:900] + GSM[0]["question"] + docs[4][900:]
    docs[5] = (
        zh[1][:50]
        + short_zh
        + zh[1][50:200]
        + "在计算机网络中负责把域名转换为网络地址的系统"
        + zh[1][200:]
    )
    expected = [find_match(d, index) for d in docs]
    assert sum(e is not None for e in expected) >= 15
    assert find_matches(docs, index) == expected


def test_fast_nfkc_is_nfkc():
    import unicodedata

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from aquila.data.decontam import fast_nfkc

    tricky = "aeiouAZ09 ,.，。１Ａｚ\u0301\u0323\u0308ﬁﬀ①㈱²ℌ𝐀\uf900\ufa0e가\u1100\u1161\u11a8ᄀ한ｶﾞİΣσ\u0344\u0f73"
    alphabet = st.sampled_from(tricky) | st.characters(max_codepoint=0x2FFFF)

    @settings(max_examples=400, deadline=None)
    @given(st.text(alphabet=alphabet, max_size=40))
    def check(s):
        assert fast_nfkc(s) == unicodedata.normalize("NFKC", s)

    check()
