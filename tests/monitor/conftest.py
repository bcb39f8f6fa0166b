"""A tiny real-text data directory (two sources) and a config factory for monitor tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from aquila.engine.config import load_config


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a headless Chromium (needs playwright)")


@pytest.fixture(scope="session")
def shard_dir(make_shards, english_text, chinese_text) -> Path:
    return make_shards((("kjv", "en", english_text), ("news", "zh", chinese_text)))


@pytest.fixture(scope="session")
def heldout_dir(tmp_path_factory, english_text, chinese_text) -> Path:
    root = tmp_path_factory.mktemp("heldout")
    for lang, text in (("en", english_text[-6000:]), ("zh", chinese_text[-3000:])):
        (root / lang).mkdir()
        (root / lang / "part.txt").write_text(text, encoding="utf-8")
    return root


@pytest.fixture()
def make_config(shard_dir, tiny_tokenizer_dir, heldout_dir, tmp_path):
    def make(*overrides: str, run_dir: Path | None = None):
        return load_config(
            None,
            [
                "model.preset='aquila-test'",
                f"data.dir='{shard_dir}'",
                f"data.heldout='{heldout_dir}'",
                f"tokenizer='{tiny_tokenizer_dir}'",
                f"run_dir='{run_dir or tmp_path / 'run'}'",
                "data.seq_len=32",
                "train.batch_size=4",
                "train.max_steps=6",
                "train.log_every=1",
                "train.checkpoint_every=3",
                "train.keep_last=5",
                "optim.lr=3e-3",
                "optim.warmup_steps=2",
                *overrides,
            ],
        )

    return make


@pytest.fixture(scope="session")
def monitored_run(shard_dir, tiny_tokenizer_dir, heldout_dir, tmp_path_factory) -> Path:
    """A finished 12-step run of the aquila-test model with every monitor callback attached."""
    from aquila.engine.run import prepare_run
    from aquila.monitor import MonitorOptions, monitor_callbacks

    run_dir = tmp_path_factory.mktemp("monitored") / "run"
    cfg = load_config(
        None,
        [
            "model.preset='aquila-test'",
            f"data.dir='{shard_dir}'",
            f"data.heldout='{heldout_dir}'",
            f"tokenizer='{tiny_tokenizer_dir}'",
            f"run_dir='{run_dir}'",
            "data.seq_len=32",
            "train.batch_size=4",
            "train.max_steps=12",
            "train.log_every=2",
            "train.checkpoint_every=6",
            "optim.lr=3e-3",
            "optim.warmup_steps=2",
        ],
    )
    opts = MonitorOptions.from_any({"eval": {"max_bytes": 3000}})
    prepare_run(cfg, callbacks=monitor_callbacks(opts), quiet=True, monitor=False).trainer.fit()
    return run_dir
