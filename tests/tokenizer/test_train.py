"""`aquila tokenizer train`: balanced sampling, output files, errors, and the cached default."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from aquila.cli import main
from aquila.tokenizer import Tokenizer
from aquila.tokenizer.train import DEFAULT_SHARES, default_tokenizer, plan_selection


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, english_text, chinese_text) -> Path:
    """English as .txt files (one document each), Chinese as JSONL, Python code in a subdir."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(0, 120_000, 20_000):
        (root / f"kjv-{i}.txt").write_text(english_text[i : i + 20_000], encoding="utf-8")
    paragraphs = chinese_text.split("\n")
    with (root / "news.jsonl").open("w", encoding="utf-8") as f:
        for i in range(0, len(paragraphs), 10):
            f.write(json.dumps({"text": "\n".join(paragraphs[i : i + 10])}, ensure_ascii=False))
            f.write("\n")
    code = root / "code"
    code.mkdir()
    (code / "train.py").write_text(Path(__file__).read_text(encoding="utf-8"), encoding="utf-8")
    return root


def test_plan_meets_shares_exactly():
    langs = ["en"] * 50 + ["zh"] * 20 + ["code"] * 5
    sizes = [1000] * 50 + [3000] * 20 + [777] * 5
    plan = plan_selection(
        langs, sizes, {"zh": 0.5, "en": 0.5}, group_of=lambda x: x if x == "zh" else "en"
    )
    # en+code has 53,885 bytes and zh 60,000: en+code limits the total.
    assert sum(plan.used.values()) == 2 * 53_885
    assert plan.used["zh"] == 53_885
    assert plan.used["en"] + plan.used["code"] == 53_885
    capped = plan_selection(langs, sizes, {"zh": 0.25, "en": 0.75}, max_bytes=8000,
                            group_of=lambda x: x if x == "zh" else "en")  # fmt: skip
    assert capped.used["zh"] == 2000  # a prefix of one 3000-byte document
    assert sum(capped.keep) == 8000
    again = plan_selection(langs, sizes, {"zh": 0.25, "en": 0.75}, max_bytes=8000,
                           group_of=lambda x: x if x == "zh" else "en")  # fmt: skip
    assert again.keep == capped.keep
    other_seed = plan_selection(langs, sizes, {"zh": 0.25, "en": 0.75}, max_bytes=8000, seed=1,
                                group_of=lambda x: x if x == "zh" else "en")  # fmt: skip
    assert other_seed.keep != capped.keep


def test_plan_drops_a_missing_language():
    plan = plan_selection(["en", "en"], [100, 200], {"zh": 0.5, "en": 0.5})
    assert plan.used == {"en": 300}
    assert plan.notes == ["no zh documents in the input"]


def test_cli_train_vocab_1000(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    code = main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "1000",
                 "--out", str(out), "--zh-ratio", "0.4", "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["vocab_size"] == 1008
    used = summary["bytes_used"]
    assert used["zh"] / sum(used.values()) == pytest.approx(0.4, abs=0.001)
    assert used["code"] > 0  # code goes with English
    assert {p.name for p in out.iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "training.json"
    }  # fmt: skip
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 1008 and tok.eos_id == 1007 and tok.bos_id == 1006
    info = json.loads((out / "training.json").read_text())
    assert info["settings"]["zh_ratio"] == 0.4 and info["documents"] > 100
    assert info["bytes_used"] == used


def test_cli_train_human_summary(corpus, tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", f"zh={corpus / 'news.jsonl'}",
                 "--vocab-size", "300", "--out", str(tmp_path / "t")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "trained 308 tokens" in out and "note: no en documents in the input" in out


def _error(capsys, *argv: str) -> str:
    assert main(["tokenizer", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aquila: error: ") and "\n" not in err
    return err


def test_cli_train_errors(corpus, tmp_path, capsys):
    out = str(tmp_path / "out")
    missing = tmp_path / "nope.jsonl"
    assert f"--input {missing}: no such file" in _error(
        capsys, "train", "--input", str(missing), "--out", out
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    (empty / "b.jsonl").write_text('{"text": "   "}\n')
    assert "no text found" in _error(capsys, "train", "--input", str(empty), "--out", out)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good text, then " + b"\xff\xfe bad")
    err = _error(capsys, "train", "--input", str(bad), "--out", out)
    assert str(bad) in err and "byte offset 16" in err
    err = _error(capsys, "train", "--input", str(corpus), "--vocab-size", "200", "--out", out)
    assert "--vocab-size 200 is too small" in err
    err = _error(capsys, "train", "--input", str(corpus), "--zh-ratio", "1.5", "--out", out)
    assert "--zh-ratio 1.5" in err
    assert not Path(out).exists()


def test_default_tokenizer_is_cached_and_balanced(tmp_path):
    d = default_tokenizer(tmp_path, vocab_size=400, max_bytes=400_000)
    assert d.name.startswith("tokenizer-v400-") and d.name.endswith("-b400000")
    tok = Tokenizer.load(d)
    assert tok.vocab_size == 408
    info = json.loads((d / "training.json").read_text())
    for lang, share in DEFAULT_SHARES.items():
        assert info["bytes_used"][lang] == pytest.approx(share * 400_000, abs=2)
    mtime = (d / "tokenizer.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert default_tokenizer(tmp_path, vocab_size=400, max_bytes=400_000) == d
    assert time.perf_counter() - t0 < 0.1
    assert (d / "tokenizer.json").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [d.name]  # no temporary dir left behind


@pytest.mark.slow
def test_full_size_vocab_on_the_sample_corpus(tmp_path, capsys):
    from aquila.data.samples import write_sample_corpus

    write_sample_corpus(tmp_path / "train", "train")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "train"),
                 "--vocab-size", "100000", "--out", str(tmp_path / "tok"), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["vocab_size"] == 100_008
    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.bos_id == 100_006 and tok.eos_id == 100_007
