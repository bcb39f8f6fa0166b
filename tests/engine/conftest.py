"""The config factory of the trainer tests: the aquila-test model on two real-text sources."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def make_config(shard_dir, tiny_config, tmp_path):
    def make(*overrides: str, run_dir: Path | None = None):
        return tiny_config(
            shard_dir,
            run_dir or tmp_path / "run",
            "train.batch_size=4",
            "train.max_steps=6",
            "train.log_every=1",
            "train.checkpoint_every=3",
            # Checkpoint evaluation runs in its own process; tests of it live in tests/monitor.
            "monitor.eval.enabled=false",
            *overrides,
        )

    return make
