"""A tiny real-text data directory (two sources) and a config factory for trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from aquila.engine.config import load_config


@pytest.fixture(scope="session")
def shard_dir(make_shards, english_text, chinese_text) -> Path:
    return make_shards((("kjv", "en", english_text), ("news", "zh", chinese_text)))


@pytest.fixture()
def make_config(shard_dir, tiny_tokenizer_dir, tmp_path):
    def make(*overrides: str, run_dir: Path | None = None):
        return load_config(
            None,
            [
                "model.preset='aquila-test'",
                f"data.dir='{shard_dir}'",
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
                # Checkpoint evaluation runs in its own process; tests of it live in tests/monitor.
                "monitor.eval.enabled=false",
                *overrides,
            ],
        )

    return make
