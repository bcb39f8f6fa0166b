"""Three real-text sources (English scripture in two parts, Chinese news) and a config factory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aquila.engine.config import load_config


@pytest.fixture(scope="session")
def mix_shards(tmp_path_factory, tiny_tokenizer, english_text, chinese_text) -> Path:
    from aquila.data.shards import tokenize_source

    root = tmp_path_factory.mktemp("mix-shards")
    raw = tmp_path_factory.mktemp("mix-raw")
    half = len(english_text) // 2
    parts = (
        ("kjv", "en", english_text[:half]),
        ("kjv_late", "en", english_text[half:]),
        ("news", "zh", chinese_text),
    )
    for name, lang, text in parts:
        path = raw / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i in range(0, len(text), 2000):
                f.write(json.dumps({"text": text[i : i + 2000]}, ensure_ascii=False) + "\n")
        tokenize_source(
            name, [path], tiny_tokenizer, root, lang=lang, kind="book", show_progress=False
        )
    return root


@pytest.fixture()
def mix_config(mix_shards, tiny_tokenizer_dir, tmp_path):
    def make(*overrides: str, run_dir: Path | None = None):
        return load_config(
            None,
            [
                "model.preset='aquila-test'",
                f"data.dir='{mix_shards}'",
                f"tokenizer='{tiny_tokenizer_dir}'",
                f"run_dir='{run_dir or tmp_path / 'run'}'",
                "data.seq_len=32",
                "train.batch_size=8",
                "train.max_steps=12",
                "train.log_every=4",
                "train.checkpoint_every=0",
                "train.keep_last=5",
                "optim.lr=3e-3",
                "optim.warmup_steps=2",
                "monitor.eval.enabled=false",
                *overrides,
            ],
        )

    return make
