"""train.init_from: a new run starts from a model or run dir's weights, with a fresh optimizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aquila.engine.callbacks import Callback
from aquila.engine.config import load_config
from aquila.engine.rundb import RunDB
from aquila.errors import UserError
from aquila.model.io import load_model_dir, resolve_model_dir, save_model_dir
from aquila.train.run import prepare_run


class FirstLoss(Callback):
    """The loss of the first step: computed on the starting weights, before any update."""

    def __init__(self) -> None:
        self.loss: float | None = None

    def on_step(self, trainer, metrics) -> None:
        if self.loss is None:
            self.loss = float(metrics.loss)


def batch_loss(model, data, n: int) -> float:
    batch = data.read(np.arange(n, dtype=np.int64))
    with torch.no_grad():
        return float(model.token_losses(batch.inputs, batch.targets).mean())


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, shard_dir, tiny_tokenizer_dir) -> Path:
    """A trained 3-layer run (the preset has 2): the new run must take its shape from the dir."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    cfg = load_config(
        None,
        [
            "model.preset='aquila-test'",
            "model.n_layers=3",
            f"data.dir='{shard_dir}'",
            f"tokenizer='{tiny_tokenizer_dir}'",
            f"run_dir='{run_dir}'",
            "data.seq_len=32",
            "train.batch_size=4",
            "train.max_steps=8",
            "train.log_every=4",
            "train.checkpoint_every=0",
            "optim.lr=3e-3",
            "optim.warmup_steps=2",
            "monitor.eval.enabled=false",
        ],
    )
    prepare_run(cfg, quiet=True, monitor=False).trainer.fit()
    return run_dir


def test_new_run_starts_from_the_run_dirs_weights(make_config, source_run, tmp_path):
    first = FirstLoss()
    cfg = make_config(f"train.init_from='{source_run}'", "train.max_steps=2")
    run = prepare_run(cfg, callbacks=[first], quiet=True, monitor=False)
    src_dir = resolve_model_dir(source_run)
    assert src_dir.name == "step-00000008"
    # Model section from the dir, fresh optimizer, step 0.
    assert run.cfg.model.n_layers == 3
    assert run.trainer.state.step == 0 and not run.trainer.optimizer.state
    source = load_model_dir(src_dir)
    for name, t in source.state_dict().items():
        assert torch.equal(run.trainer.model.state_dict()[name], t), name
    expected = batch_loss(source, run.data, cfg.train.batch_size)
    run.trainer.fit()
    assert first.loss == pytest.approx(expected, abs=1e-5)
    # A fresh model of the same shape and seed starts elsewhere: the equality is not an accident.
    fresh = FirstLoss()
    scratch = make_config("model.n_layers=3", "train.max_steps=1", run_dir=tmp_path / "scratch")
    prepare_run(scratch, callbacks=[fresh], quiet=True, monitor=False).trainer.fit()
    assert fresh.loss > expected + 0.2
    # Recorded: the saved config names the step dir, the run database has an event.
    saved = load_config(run.run_dir / "config.toml")
    assert saved.train.init_from == str(src_dir.resolve())
    assert saved.model.n_layers == 3
    assert run.extra["init_from"] == str(src_dir.resolve())
    events = RunDB(run.run_dir).events("init-from")
    assert len(events) == 1 and str(src_dir.resolve()) in events[0]["message"]


def test_upcycled_model_dir_starts_at_the_dense_loss(make_config, source_run, tmp_path):
    from aquila.scale import upcycle
    from aquila.tokenizer import Tokenizer

    dense = load_model_dir(resolve_model_dir(source_run))
    tok = Tokenizer.load(source_run / "tokenizer")
    moe_dir = save_model_dir(upcycle(dense, n_experts=4, top_k=2), tmp_path / "moe", tok)
    first = FirstLoss()
    # A non-shape key may differ from the weights' own value: it overrides it.
    cfg = make_config(f"train.init_from='{moe_dir}'", "train.max_steps=1", "model.max_seq_len=64")
    run = prepare_run(cfg, callbacks=[first], quiet=True, monitor=False)
    assert run.cfg.model.n_experts == 4 and run.cfg.model.max_seq_len == 64
    expected = batch_loss(dense, run.data, cfg.train.batch_size)
    run.trainer.fit()
    assert first.loss == pytest.approx(expected, abs=1e-5)


def test_resume_ignores_init_from(make_config, source_run, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(f"train.init_from='{source_run}'", "train.max_steps=3", run_dir=run_dir)
    prepare_run(cfg, quiet=True, monitor=False).trainer.fit()
    at3 = load_model_dir(run_dir / "checkpoints" / "step-00000003")
    resumed = prepare_run(resume=run_dir, overrides=["train.max_steps=4"], quiet=True)
    assert resumed.resumed_from is not None and resumed.trainer.state.step == 3
    assert "init_from" not in resumed.extra
    assert resumed.trainer.optimizer.state  # Adam moments from the checkpoint
    for name, t in at3.state_dict().items():
        assert torch.equal(resumed.trainer.model.state_dict()[name], t), name
    assert len(RunDB(run_dir).events("init-from")) == 1


def test_shape_key_that_disagrees_is_named(make_config, source_run):
    cfg = make_config(f"train.init_from='{source_run}'", "model.hidden_size=128")
    with pytest.raises(UserError, match=r"model\.hidden_size=128 .* hidden_size=64"):
        prepare_run(cfg, quiet=True, monitor=False)


def test_other_tokenizer_is_refused(make_config, source_run, tmp_path, english_text):
    from aquila.tokenizer import train_bpe

    other = train_bpe([english_text[:50_000]], vocab_size=504).save(tmp_path / "other-tok")
    cfg = make_config(f"train.init_from='{source_run}'", f"tokenizer='{other}'")
    with pytest.raises(UserError, match="train.init_from: the run's tokenizer"):
        prepare_run(cfg, quiet=True, monitor=False)


def test_vocab_smaller_than_tokenizer_is_refused(make_config, tmp_path):
    from aquila.model import AquilaModel, get_preset

    small = save_model_dir(AquilaModel(get_preset("aquila-test", vocab_size=256)), tmp_path / "m")
    cfg = make_config(f"train.init_from='{small}'")
    with pytest.raises(UserError, match="train.init_from: .* vocab_size 256"):
        prepare_run(cfg, quiet=True, monitor=False)


def test_missing_dir_is_a_user_error(make_config, tmp_path):
    cfg = make_config(f"train.init_from='{tmp_path / 'nowhere'}'")
    with pytest.raises(UserError, match="train.init_from: .*nowhere does not exist"):
        prepare_run(cfg, quiet=True, monitor=False)
