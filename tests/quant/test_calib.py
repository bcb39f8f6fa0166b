"""Calibration windows for GPTQ come from every sample source."""

from __future__ import annotations

import pytest

from aquila.errors import UserError
from aquila.quant.calib import calibration_tokens


def test_calibration_windows_mix_the_sources(tiny_tokenizer):
    calib = calibration_tokens(tiny_tokenizer, 4096, 64)
    assert calib.shape == (64, 64)
    assert int(calib.max()) < tiny_tokenizer.vocab_size
    text = tiny_tokenizer.decode(calib.flatten().tolist())
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)  # Chinese sources
    assert "def " in text or "import " in text or "the " in text  # English / code sources
    assert calibration_tokens(tiny_tokenizer, 4096, 64).equal(calib)  # deterministic


def test_too_few_tokens_is_a_user_error(tiny_tokenizer):
    with pytest.raises(UserError, match="--calib-tokens 10"):
        calibration_tokens(tiny_tokenizer, 10, 64)
