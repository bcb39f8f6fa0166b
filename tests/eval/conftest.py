"""Fixtures for evaluation tests: a tiny random model with the shared tokenizer, saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aquila.model import AquilaModel, get_preset


def _random_model(seed: int = 0) -> AquilaModel:
    cfg = get_preset("aquila-test", init_std=0.2)
    model = AquilaModel(cfg)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()


@pytest.fixture(scope="session")
def eval_model() -> AquilaModel:
    return _random_model()


@pytest.fixture(scope="session")
def eval_lm(eval_model, tiny_tokenizer):
    from aquila.eval.lm import ModelLM

    return ModelLM(eval_model, tiny_tokenizer, batch_size=4)


@pytest.fixture(scope="session")
def eval_model_dir(eval_model, tiny_tokenizer, tmp_path_factory) -> Path:
    from aquila.model.io import save_model_dir

    return save_model_dir(
        eval_model, tmp_path_factory.mktemp("eval") / "model", tokenizer=tiny_tokenizer
    )
