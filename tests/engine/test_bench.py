"""`aquila bench` in every mode, tiny: a few steps of the test preset through the real CLI."""

from __future__ import annotations

import json

import pytest

from aquila.cli import main

TINY = ["--preset", "aquila-test", "--seq-len", "16", "--batch", "2", "--steps", "2"]
FAST = ["--warmup", "1", "--peak-seconds", "0.05", "--device", "cpu"]


def bench_json(capsys, *args: str) -> dict:
    assert main(["bench", *TINY, *FAST, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_eager_reports_throughput_and_cpu_peak_memory(capsys):
    out = bench_json(capsys)
    assert out["steps_timed"] == 2
    assert out["tokens_per_s"] > 0 and 0 < out["mfu"] < 1
    # CPU: the process's maximum RSS, at least what torch itself holds once imported.
    assert out["peak_memory_kind"] == "max RSS"
    assert isinstance(out["peak_memory"], int) and out["peak_memory"] > 50 * 2**20


def test_bench_micro_batches_and_overrides(capsys):
    out = bench_json(capsys, "--micro-batch", "1", "--set", "train.activation_checkpointing=true")
    assert out["steps_timed"] == 2 and out["batch"] == 2


def test_bench_compiled_path(capsys, monkeypatch):
    """--compile through dynamo and AOT autograd; inductor's C++ build (minutes on a cold cache)
    is left to the slow test below."""
    import torch

    real = torch.compile
    calls = []

    def traced(fn=None, **kwargs):
        calls.append(kwargs)
        return real(fn, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", traced)
    out = bench_json(capsys, "--compile")
    assert out["compile"] is True and out["steps_timed"] == 2 and calls


@pytest.mark.slow
def test_bench_compiled_inductor(capsys):
    out = bench_json(capsys, "--compile")
    assert out["compile"] is True and out["steps_timed"] == 2


def test_bench_text_output(capsys):
    assert main(["bench", *TINY, *FAST]) == 0
    text = capsys.readouterr().out
    assert "tokens_per_s" in text and "peak_memory" in text


def test_bench_data_pipeline(capsys, shard_dir):
    assert (
        main(["bench", "--data", str(shard_dir), "--seq-len", "16", "--batch", "2", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["mode"] == "data" and out["tokens_per_s"] > 0


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--peak-seconds", "0"]])
def test_bench_bad_arguments_exit_2(capsys, bad):
    assert main(["bench", "--preset", "aquila-test", *bad]) == 2
    assert "aquila: error:" in capsys.readouterr().err
