"""Language classification and `aquila tokenizer stats` (bytes per token per language)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aquila.cli import main
from aquila.tokenizer.stats import cjk_share, parse_input, text_language


def test_language_by_cjk_share(english_text, chinese_text):
    assert cjk_share(chinese_text[:5000]) > 0.9
    assert cjk_share(english_text[:5000]) == 0.0
    assert text_language(chinese_text[:3000]) == "zh"
    assert text_language(english_text[:3000]) == "en"
    # Mostly English with a few Chinese words stays English; the reverse is Chinese.
    assert text_language("The word for China is 中国, and Beijing is 北京.") == "en"
    assert text_language("我们使用 PyTorch 和 CUDA 训练模型，速度很快。") == "zh"
    assert text_language("   \n") == "en"


def test_parse_input_prefixes(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert parse_input(f"code={tmp_path}").lang == "code"
    assert parse_input(str(tmp_path / "a.txt")).lang is None
    # "=" that is not a language prefix is part of the path.
    odd = tmp_path / "k=v.txt"
    odd.write_text("y")
    assert parse_input(str(odd)).path == odd


@pytest.fixture()
def stats_inputs(tmp_path, english_text, chinese_text) -> Path:
    root = tmp_path / "in"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "en.txt").write_text(english_text[:30_000], encoding="utf-8")
    (root / "docs" / "zh.txt").write_text(chinese_text[:10_000], encoding="utf-8")
    (root / "src").mkdir()
    (root / "src" / "mod.py").write_text(Path(__file__).read_text(encoding="utf-8"))
    return root


def test_stats_json_by_language(tiny_tokenizer, tiny_tokenizer_dir, stats_inputs, capsys):
    assert main(["tokenizer", "stats", str(tiny_tokenizer_dir), "--input",
                 str(stats_inputs / "docs"), str(stats_inputs / "src"), "--json"]) == 0  # fmt: skip
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(stats) == ["en", "zh", "code"]
    for lang, name in (("en", "docs/en.txt"), ("zh", "docs/zh.txt"), ("code", "src/mod.py")):
        text = (stats_inputs / name).read_text(encoding="utf-8")
        s = stats[lang]
        assert s["documents"] == 1
        assert s["bytes"] == len(text.encode("utf-8"))
        assert s["tokens"] == len(tiny_tokenizer.encode(text))
        assert s["bytes_per_token"] == pytest.approx(s["bytes"] / s["tokens"], abs=1e-4)
    # A 512-token vocabulary still merges common English and Chinese byte sequences.
    assert stats["en"]["bytes_per_token"] > 1.5 and stats["zh"]["bytes_per_token"] > 1.5


def test_stats_language_prefix_and_table(tiny_tokenizer_dir, stats_inputs, capsys):
    assert main(["tokenizer", "stats", str(tiny_tokenizer_dir), "--input",
                 f"code={stats_inputs / 'docs' / 'en.txt'}"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["lang", "documents", "bytes", "tokens", "bytes/token"]
    assert [line.split()[0] for line in out[1:]] == ["code"]


def test_stats_errors(tiny_tokenizer_dir, tmp_path, capsys):
    assert main(["tokenizer", "stats", str(tmp_path / "none")]) == 2
    assert "no tokenizer at" in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"x = 1\n\xc3(\n")
    assert main(["tokenizer", "stats", str(tiny_tokenizer_dir), "--input", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "byte offset 6" in err
