"""train.compile fails loudly: a compiler error stops the run naming its cause, unless
train.compile_fallback, which trains eagerly and says so; what was compiled is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aquila.engine.config import load_config
from aquila.engine.trainer import Trainer
from aquila.errors import EXIT_COMPILE_FAILED, CompileFailed
from aquila.model.transformer import AquilaModel
from aquila.train.bench import SyntheticData


def _trainer(tmp_path: Path, *overrides: str) -> Trainer:
    cfg = load_config(
        None,
        [
            "model.preset='aquila-test'",
            "data.seq_len=16",
            "train.batch_size=2",
            "train.max_steps=2",
            "train.checkpoint_every=0",
            "train.compile=true",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    model = AquilaModel(cfg.model)
    return Trainer(cfg, model, SyntheticData(cfg.model.vocab_size, 16), tmp_path)


@pytest.fixture
def broken_compiler(monkeypatch):
    """Every torch.compile gets a backend that fails the way a missing toolchain does."""

    def backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler found (test)")

    real = torch.compile

    def compile_with_broken_backend(fn=None, **kwargs):
        return real(fn, **{**kwargs, "backend": backend})

    monkeypatch.setattr(torch, "compile", compile_with_broken_backend)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_error_stops_the_run_naming_the_cause(tmp_path, broken_compiler):
    trainer = _trainer(tmp_path)
    assert trainer.compiled == "model"
    with pytest.raises(CompileFailed, match="no C.. compiler found.*compile_fallback") as info:
        trainer.train_step()
    assert info.value.exit_code == EXIT_COMPILE_FAILED
    assert trainer.state.step == 0  # nothing was applied


@pytest.mark.parametrize("ac", ["false", "true"], ids=["model", "blocks"])
def test_compile_fallback_trains_eagerly_and_records_it(tmp_path, broken_compiler, capsys, ac):
    trainer = _trainer(
        tmp_path, "train.compile_fallback=true", f"train.activation_checkpointing={ac}"
    )
    scope = "model" if ac == "false" else "blocks"
    assert trainer.compiled == scope
    trainer.train_step()
    trainer.train_step()
    assert trainer.state.step == 2 and trainer.compiled == "eager-fallback"
    kinds = [(h["kind"], h.get("scope")) for h in trainer.history]
    assert kinds == [("compile", scope), ("compile-fallback", scope)]
    assert "no C++ compiler found" in trainer.history[1]["error"]
    assert "torch.compile failed, training eagerly" in capsys.readouterr().err


def test_model_errors_are_not_taken_for_compile_errors(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, "train.compile_fallback=true")

    def broken(*a, **k):
        raise ValueError("a bug in the model")

    monkeypatch.setattr(trainer, "loss_fn", broken)
    with pytest.raises(ValueError, match="a bug in the model"):
        trainer.train_step()
