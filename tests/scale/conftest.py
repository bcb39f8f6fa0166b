"""Fixtures for EfficientScale tests: small dense models with non-trivial weights and real text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aquila.model import AquilaModel, get_preset


def random_model(seed: int = 0, **overrides) -> AquilaModel:
    """A tiny fp32 model with large weights and random norm gains, so every mapping matters."""
    cfg = get_preset("aquila-test", **{"init_std": 0.2, **overrides})
    model = AquilaModel(cfg)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


@pytest.fixture
def make_model():
    return random_model


@pytest.fixture(scope="session")
def text_tokens(tiny_tokenizer, english_text, chinese_text) -> torch.Tensor:
    """Held-out bilingual text as (8, 64) token windows."""
    ids = tiny_tokenizer.encode(english_text[-20_000:]) + tiny_tokenizer.encode(
        chinese_text[-8000:]
    )
    n = 8 * 65
    assert len(ids) > n
    return torch.tensor(ids[:n]).view(8, 65)


def mean_loss(model: AquilaModel, windows: torch.Tensor) -> float:
    with torch.no_grad():
        return model.token_losses(windows[:, :-1], windows[:, 1:]).mean().item()


@pytest.fixture
def model_dir(tmp_path: Path, tiny_tokenizer) -> Path:
    from aquila.model.io import save_model_dir

    model = random_model(n_heads=8, n_kv_heads=2)
    return save_model_dir(model, tmp_path / "small", tokenizer=tiny_tokenizer)


@pytest.fixture
def loss_of():
    return mean_loss
