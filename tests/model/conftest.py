"""Fixtures for model tests: small random models with non-trivial weights, saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aquila.model import AquilaModel, get_preset


def random_model(seed: int = 0, **overrides) -> AquilaModel:
    """A tiny fp32 model; init std 0.2 makes the logits far from uniform, so argmax is decisive."""
    cfg = get_preset("aquila-test", init_std=0.2, **overrides)
    model = AquilaModel(cfg)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    # Norm gains of one would make every layer look alike; random gains exercise the mapping.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


@pytest.fixture
def make_model():
    return random_model


@pytest.fixture
def tiny_model() -> AquilaModel:
    return random_model()


@pytest.fixture
def model_dir(tmp_path: Path, tiny_model, tiny_tokenizer) -> Path:
    from aquila.model.io import save_model_dir

    return save_model_dir(tiny_model, tmp_path / "model", tokenizer=tiny_tokenizer)


MEMORISED = "In the beginning God created the heaven and the earth. 中华人民共和国的经济发展了。"


@pytest.fixture(scope="session")
def memorised_text() -> str:
    return MEMORISED


@pytest.fixture(scope="session")
def memorised_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny model overfitted on one bilingual document, saved with its tokenizer.

    Greedy decoding from a prefix reproduces the rest, multi-byte characters included, which
    gives the generation command a known answer.
    """
    from aquila.model.io import save_model_dir

    torch.manual_seed(0)
    model = AquilaModel(get_preset("aquila-test"))
    ids = [tiny_tokenizer.eos_id, *tiny_tokenizer.encode(MEMORISED), tiny_tokenizer.eos_id]
    seq = torch.tensor([ids])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        loss = model.token_losses(seq[:, :-1], seq[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
    return save_model_dir(
        model.eval(), tmp_path_factory.mktemp("memorised") / "model", tiny_tokenizer
    )
