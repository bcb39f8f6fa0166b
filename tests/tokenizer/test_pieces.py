"""Encoding a text piece by piece gives exactly the ids of encoding it whole."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aquila.tokenizer.pieces import SEARCH_CHARS, is_boundary, pieces


def _by_pieces(tok, text: str, max_chars: int) -> list[int]:
    parts = list(pieces(text, max_chars))
    assert "".join(parts) == text and all(len(p) <= max_chars for p in parts)
    return [i for ids in tok.encode_batch(parts) for i in ids]


@pytest.fixture(scope="module")
def python_code() -> str:
    from aquila.data.samples import load_sample_corpus

    code = next(s for s in load_sample_corpus("train") if s.name == "python_code")
    return "\n".join(code.documents[:30])[:20_000]


@pytest.mark.parametrize("max_chars", [120, 4096])
def test_real_text_in_pieces_encodes_as_a_whole(
    tiny_tokenizer, english_text, chinese_text, python_code, max_chars
):
    # Scripture (spaces, apostrophes, verse numbers), news without a single space, source code
    # (indentation runs, operators), and all three on one line.
    texts = {"en": english_text[:20_000], "zh": chinese_text[:10_000], "code": python_code}
    texts["one line"] = " ".join(t.replace("\n", " ") for t in texts.values())
    for name, text in texts.items():
        assert _by_pieces(tiny_tokenizer, text, max_chars) == tiny_tokenizer.encode(text), name


_alphabet = st.sampled_from(
    list("ab'sdtm lr\n\t 1234.,!?-中文，。\u3000\xa0\x1c\u0301") + ["'s", "'ll", "  ", "\r\n", "١"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_alphabet, min_size=2, max_size=40).map("".join))
def test_every_boundary_splits_the_ids(tiny_tokenizer, text):
    whole = tiny_tokenizer.encode(text)
    for i in range(1, len(text)):
        if is_boundary(text, i):
            assert tiny_tokenizer.encode(text[:i]) + tiny_tokenizer.encode(text[i:]) == whole, i


def test_a_run_without_boundary_is_still_cut():
    text = "x" * (3 * SEARCH_CHARS)
    parts = list(pieces(text, SEARCH_CHARS))
    assert "".join(parts) == text and max(map(len, parts)) == SEARCH_CHARS
    assert list(pieces("short", 100)) == ["short"]


def test_a_contraction_is_never_cut(english_text):
    from aquila.tokenizer import train_bpe

    # A vocabulary where "'s", "'ll" and "'t" are tokens of their own, as in any large one.
    talk = "it's he'll we're don't I'm you've she'd Noah's ark can't won't they'll " * 50
    tok = train_bpe([talk, english_text[:20_000]], vocab_size=320)
    assert len(tok.encode("'ll")) == 1 and tok.encode("'") + tok.encode("ll") != tok.encode("'ll")
    text = (talk[:700] + english_text[:2000]).replace("\n", " ")
    whole = tok.encode(text)
    cuts = [i for i in range(1, len(text)) if is_boundary(text, i)]
    assert all(tok.encode(text[:i]) + tok.encode(text[i:]) == whole for i in cuts)
    assert _by_pieces(tok, text, 64) == whole
