"""The clean stage on real text: normalisation, boilerplate, language and quality rules."""

from __future__ import annotations

import unicodedata

from aquila.data.clean import CleanConfig, clean_documents, nav_lines, normalise, strip_boilerplate
from aquila.data.quality import QualityConfig, check


def _chapters(english_text: str, n: int) -> list[str]:
    return [english_text[i * 3000 : (i + 1) * 3000] for i in range(n)]


def test_normalise_nfc_and_controls():
    decomposed = "Cafe\u0301\x00\x07 ok\r\nnext\tline\u200b"
    out = normalise(decomposed)
    assert out == "Café ok\nnext\tline"
    assert unicodedata.is_normalized("NFC", out)


def test_boilerplate_and_navigation_lines(english_text):
    body = english_text[:2000]
    text = f"Home | About | Contact\n{body}\nCopyright 2024 Example Inc. All rights reserved.\nClick here to subscribe\n版权所有 人民网"
    docs = [text.replace(body, english_text[i * 2000 : (i + 1) * 2000]) for i in range(6)]
    nav = nav_lines(docs)
    assert "Home | About | Contact" in nav
    cleaned, removed = strip_boilerplate(docs[0], nav)
    assert removed == 4
    assert cleaned == body.strip("\n")
    # A long line that merely mentions cookies is prose and stays.
    prose = "She baked cookies for the policy meeting, " * 10
    assert strip_boilerplate(prose, set())[1] == 0


def test_real_text_passes_quality(english_text, chinese_text):
    cfg = QualityConfig()
    # Genesis 1 ("And God said, Let ...") is formulaic enough to trip the 5-gram rule.
    assert sum(check(t, "en", cfg) is None for t in _chapters(english_text, 10)) >= 8
    zh_docs = ["\n".join(chinese_text.split("\n")[i : i + 5]) for i in range(0, 200, 5)]
    kept = sum(check(t, "zh", cfg) is None for t in zh_docs)
    assert kept >= 0.9 * len(zh_docs)


def test_quality_rejects_spam_with_reasons(english_text, chinese_text):
    cfg = QualityConfig()
    assert check("Too short to be a document.", "en", cfg) == "too_short"
    spam_en = "buy cheap watches now best price " * 40
    assert check(spam_en, "en", cfg) in {
        "top_ngram_repetition",
        "dup_5gram_repetition",
        "few_stop_words",
    }
    sentence = chinese_text.split("\n")[3][:30]
    spam_zh = "".join(f"{sentence}第{i}期。" for i in range(20))
    assert check(spam_zh, "zh", cfg) == "char_repetition"
    assert check("好书。", "zh", cfg) == "too_short"
    hashes = " ".join(f"#tag{i} #more{i}" for i in range(60)) + " the and of " * 5
    assert check(hashes, "en", cfg) == "symbol_ratio"
    # Code keeps repeated lines and needs no prose punctuation.
    code = "def f(x):\n    return x\n\n" * 20
    assert check(code, "code", cfg) is None


def test_clean_documents_counts_every_removal(english_text, chinese_text):
    docs = [{"id": f"c{i}", "text": t} for i, t in enumerate(_chapters(english_text, 5)[1:])]
    docs.append({"id": "zh", "text": chinese_text[:800]})  # wrong language for an en source
    docs.append({"id": "short", "text": "Amen."})
    docs.append({"id": "blank", "text": "\x00\x01  \n"})
    res = clean_documents(docs, "en", CleanConfig())
    assert [d["id"] for d in res.kept] == [f"c{i}" for i in range(4)]
    reasons = {doc_id: reason for doc_id, reason, _ in res.removed}
    assert reasons == {"zh": "language", "short": "too_short", "blank": "empty"}
    assert len(res.kept) + len(res.removed) == len(docs)
