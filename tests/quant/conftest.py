"""Fixtures for quantization tests: a tiny model and real-text token batches."""

from __future__ import annotations

import pytest
import torch

from aquila.model import AquilaModel, get_preset


@pytest.fixture(scope="session")
def quant_model() -> AquilaModel:
    """aquila-test shape (hidden 64, FFN 160: a ragged last group at group size 64)."""
    model = AquilaModel(get_preset("aquila-test", init_std=0.1))
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model.eval()


@pytest.fixture(scope="session")
def text_tokens(tiny_tokenizer, english_text, chinese_text) -> torch.Tensor:
    """(40, 64) windows of real English and Chinese text."""
    ids = tiny_tokenizer.encode(english_text[:20000]) + tiny_tokenizer.encode(chinese_text[:8000])
    n = len(ids) // 64 * 64
    windows = torch.tensor(ids[:n]).view(-1, 64)
    return windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))[:40]]
