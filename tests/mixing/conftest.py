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
