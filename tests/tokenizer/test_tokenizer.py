"""The tokenizer is lossless on any Unicode text and loads in transformers with the same ids."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aquila.errors import UserError
from aquila.tokenizer import SPECIAL_TOKENS, Tokenizer

_pieces = st.one_of(
    st.text(),  # any code point except surrogates
    st.text(alphabet="天地玄黄宇宙洪荒，。、“”：１２３ＡＢ"),  # CJK, CJK punctuation, full-width
    st.text(alphabet="Съешь ещё этих мягких французских булок"),
    st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)),  # emoji
    st.text(alphabet=st.characters(categories=["Cc", "Zs", "Zl", "Zp"])),  # controls, spaces
    st.sampled_from(["   ", "\t\t\n", "\r\n\r\n", " \n \n  ", "\u200d", "e\u0301", "👩‍👩‍👧"]),
)
mixed_text = st.lists(_pieces, max_size=8).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_text)
def test_decode_encode_is_identity(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == text
    assert all(0 <= i < tiny_tokenizer.vocab_size - len(SPECIAL_TOKENS) for i in ids)


def test_real_text_round_trips_and_compresses(tiny_tokenizer, english_text, chinese_text):
    for text in (english_text[:20_000], chinese_text[:20_000]):
        ids = tiny_tokenizer.encode(text)
        assert tiny_tokenizer.decode(ids) == text
        assert len(ids) < len(text.encode("utf-8")) / 1.5  # merges were learned for both


def test_lone_surrogates_are_rejected(tiny_tokenizer):
    with pytest.raises(UserError, match="lone surrogate"):
        tiny_tokenizer.encode("abc\ud800def")
    with pytest.raises(UserError, match="offset 1"):
        tiny_tokenizer.encode_batch(["fine", "x\udfffy"])


def test_specials_are_the_last_ids(tiny_tokenizer):
    n = tiny_tokenizer.vocab_size
    assert n == 512
    assert [tiny_tokenizer.hf.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(n - 8, n))
    assert tiny_tokenizer.eos_id == n - 1 and tiny_tokenizer.bos_id == n - 2
    # A special token's text inside a document is plain text: it must not end the document.
    for special in SPECIAL_TOKENS:
        ids = tiny_tokenizer.encode(f"end{special}start")
        assert max(ids) < n - 8
        assert tiny_tokenizer.decode(ids) == f"end{special}start"
    assert tiny_tokenizer.decode([5, tiny_tokenizer.eos_id]).endswith("</s>")


def test_save_load_round_trip(tiny_tokenizer, tiny_tokenizer_dir, chinese_text):
    loaded = Tokenizer.load(tiny_tokenizer_dir)
    assert loaded.hash == tiny_tokenizer.hash
    assert loaded.encode(chinese_text[:2000]) == tiny_tokenizer.encode(chinese_text[:2000])


def test_transformers_loads_the_same_ids(
    tiny_tokenizer, tiny_tokenizer_dir, english_text, chinese_text
):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    by_file = PreTrainedTokenizerFast(tokenizer_file=str(tiny_tokenizer_dir / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    texts = [english_text[5000:9000], chinese_text[3000:6000], "Mixed 中英文 text, 2024年!"]
    for text in texts:
        ours = tiny_tokenizer.encode(text)
        assert by_file.encode(text, add_special_tokens=False) == ours
        assert auto.encode(text, add_special_tokens=False) == ours
        assert auto.decode(ours) == text
    n = len(auto)
    assert n == tiny_tokenizer.vocab_size
    assert auto.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(n - 8, n))
    assert auto.eos_token == "</s>" and auto.eos_token_id == n - 1
    assert auto.bos_token == "[CLS]" and auto.bos_token_id == n - 2
