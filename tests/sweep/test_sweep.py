"""`aquila sweep`: mixtures of a ratio, and a tiny sweep end to end (train, score, table, plot,
skip finished runs, resume an unscored one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aquila.cli import main
from aquila.errors import UserError
from aquila.sweep.mixtures import SourceInfo, parse_hold, parse_ratios, sweep_weights

SOURCES = [
    SourceInfo("kjv", "en", 300),
    SourceInfo("docs", "en", 100),
    SourceInfo("news", "zh", 500),
    SourceInfo("code", "code", 50),
]


def test_weights_split_languages_by_ratio_and_sources_by_size():
    (r,) = parse_ratios("1:2")
    w = sweep_weights(r, ("zh", "en"), {"code": 0.1}, SOURCES)
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["code"] == pytest.approx(0.1)
    assert w["news"] == pytest.approx(0.3)  # zh : en = 0.3 : 0.6 of the 0.9 left
    assert w["kjv"] == pytest.approx(0.6 * 0.75) and w["docs"] == pytest.approx(0.6 * 0.25)


def test_weights_refuse_an_unplaced_language():
    (r,) = parse_ratios("1:1")
    with pytest.raises(UserError, match="'code'.*neither swept nor held"):
        sweep_weights(r, ("zh", "en"), {}, SOURCES)
    with pytest.raises(UserError, match="no source of language 'fr'"):
        sweep_weights(r, ("zh", "fr"), {"code": 0.1}, SOURCES)


@pytest.mark.parametrize("text", ["1", "1:0", "a:b", "1:2,2:4", "1:inf"])
def test_bad_ratios_are_one_line_errors(text):
    with pytest.raises(UserError, match="--ratios"):
        parse_ratios(text)


def test_hold_parsing():
    assert parse_hold(["none"]) == {}
    assert parse_hold(["code=0.1"]) == {"code": 0.1}
    with pytest.raises(UserError):
        parse_hold(["code=0.6", "fr=0.5"])


@pytest.fixture()
def sweep_args(shard_dir, tiny_tokenizer_dir, english_text, chinese_text, tmp_path):
    held = tmp_path / "heldout"
    for lang, text in (("en", english_text[-3000:]), ("zh", chinese_text[-1500:])):
        (held / lang).mkdir(parents=True)
        (held / lang / "part.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "sweep"
    sets = [
        "model.preset='aquila-test'",
        f"data.dir='{shard_dir}'",
        f"tokenizer='{tiny_tokenizer_dir}'",
        f"data.heldout='{held}'",
        "data.seq_len=32",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.log_every=1",
    ]
    args = ["sweep", str(out), "--ratios", "1:1,1:3", "--seeds", "0", "--hold", "none"]
    args += ["--heldout-bytes", "2000", "--quiet", "--json"]
    for s in sets:
        args += ["--set", s]
    return out, args


def test_tiny_sweep_end_to_end(sweep_args, capsys):
    out, args = sweep_args
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["ratio"] for r in summary["rows"]] == ["1:1", "1:3"]
    assert summary["same_tokens"] and summary["tokens"] == [2 * 4 * 32]
    runs = {r["ratio"]: r for r in summary["runs"]}
    assert runs["1:1"]["weights"]["news"] == pytest.approx(0.5)
    assert runs["1:3"]["weights"]["news"] == pytest.approx(0.25)
    for r in runs.values():
        run_dir = Path(r["run_dir"])
        assert (run_dir / "config.toml").is_file() and any((run_dir / "checkpoints").iterdir())
        assert set(r["bpb"]) == {"en", "zh"}
        assert r["combined"] == pytest.approx((r["bpb"]["en"] + r["bpb"]["zh"]) / 2)
    assert summary["best"] in ("1:1", "1:3")
    assert (out / "sweep.png").stat().st_size > 0
    assert "| 1:3 | 1 |" in (out / "sweep.md").read_text()
    assert json.loads((out / "sweep.json").read_text())["rows"] == summary["rows"]

    # Again: both runs are skipped (their scores are not rewritten).
    first = Path(runs["1:1"]["run_dir"]) / "sweep-result.json"
    stamp = first.stat().st_mtime_ns
    unscored = Path(runs["1:3"]["run_dir"]) / "sweep-result.json"
    unscored.unlink()  # as if the sweep was stopped after training, before scoring
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first.stat().st_mtime_ns == stamp
    # The unscored run resumed from its final checkpoint: the same weights, the same score.
    assert again["rows"] == summary["rows"]

    # Other settings in the same directory: refused in one line.
    assert main([*args, "--set", "train.max_steps=3"]) == 2
    assert "other settings (overrides differ)" in capsys.readouterr().err
