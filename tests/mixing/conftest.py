"""Three real-text sources (English scripture in two parts, Chinese news) and a config factory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mix_shards(make_shards, english_text, chinese_text) -> Path:
    half = len(english_text) // 2
    return make_shards(
        (
            ("kjv", "en", english_text[:half]),
            ("kjv_late", "en", english_text[half:]),
            ("news", "zh", chinese_text),
        )
    )


@pytest.fixture()
def mix_config(mix_shards, tiny_config, tmp_path):
    def make(*overrides: str, run_dir: Path | None = None):
        return tiny_config(
            mix_shards,
            run_dir or tmp_path / "run",
            "train.batch_size=8",
            "train.max_steps=12",
            "train.log_every=4",
            "train.checkpoint_every=0",
            "monitor.eval.enabled=false",
            *overrides,
        )

    return make


@pytest.fixture(scope="session")
def at_step():
    """``at_step(step, fn)``: a callback that calls ``fn(trainer)`` at the boundary before step
    ``step + 1`` (in ``before_step``, where commands and the policy apply)."""
    from aquila.engine.callbacks import Callback

    class At(Callback):
        def __init__(self, step, fn):
            self.step, self.fn = step, fn

        def before_step(self, trainer):
            if trainer.state.step == self.step:
                self.fn(trainer)

    return At
