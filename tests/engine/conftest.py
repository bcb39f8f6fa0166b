"""A tiny real-text data directory (two sources) and a config factory for trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aquila.engine.config import load_config


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, tiny_tokenizer, english_text, chinese_text) -> Path:
    from aquila.data.shards import tokenize_source

    root = tmp_path_factory.mktemp("shards")
    raw = tmp_path_factory.mktemp("raw")
    for name, lang, text in (("kjv", "en", english_text), ("news", "zh", chinese_text)):
        path = raw / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i in range(0, len(text), 2000):
                f.write(json.dumps({"text": text[i : i + 2000]}, ensure_ascii=False) + "\n")
        tokenize_source(
            name, [path], tiny_tokenizer, root, lang=lang, kind="book", show_progress=False
        )
    return root


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
