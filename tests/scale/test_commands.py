"""`aquila grow` and `aquila upcycle` from the command line."""

from __future__ import annotations

import json
import shutil

import pytest

from aquila.cli import main
from aquila.model.io import load_model_dir


def _run(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and "--json" in argv else None), err


def test_grow_shape_and_upcycle_end_to_end(capsys, model_dir, tmp_path, text_tokens, loss_of):
    grown_dir = tmp_path / "grown"
    code, info, _ = _run(
        capsys, "grow", model_dir, "--to", "hidden=80,heads=10,layers=3,ffn=200",
        "--method", "fpi", "--identity-layers", "--depth-mode", "interpolate",
        "--out", grown_dir, "--verify", "--json",
    )  # fmt: skip
    assert code == 0
    assert info["config"]["hidden_size"] == 80 and info["config"]["n_layers"] == 3
    assert info["config"]["n_kv_heads"] == 2  # kept from the source
    assert info["max_abs_logit_diff"] < 1e-4
    assert info["params"] > info["source_params"]
    assert (grown_dir / "tokenizer.json").is_file()
    small, grown = load_model_dir(model_dir), load_model_dir(grown_dir)
    assert abs(loss_of(grown, text_tokens) - loss_of(small, text_tokens)) < 1e-4

    moe_dir = tmp_path / "moe"
    code, info, _ = _run(
        capsys, "upcycle", grown_dir, "--experts", 4, "--top-k", 2, "--out", moe_dir,
        "--router-std", 0.05, "--verify", "--json",
    )  # fmt: skip
    assert code == 0 and info["max_abs_logit_diff"] < 1e-4
    assert info["active_params"] < info["params"]
    moe = load_model_dir(moe_dir)
    assert moe.cfg.n_experts == 4 and moe.cfg.extra["router_std"] == 0.05
    assert abs(loss_of(moe, text_tokens) - loss_of(small, text_tokens)) < 1e-4


def test_grow_from_run_dir_plain_output(capsys, model_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "checkpoints" / "step-00000010")
    code, _, _ = _run(capsys, "grow", run, "--to", "hidden=128,heads=16", "--method", "aki",
                      "--out", tmp_path / "g")  # fmt: skip
    assert code == 0
    assert load_model_dir(tmp_path / "g").cfg.hidden_size == 128


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--to", "aquila-nonexistent"], "--to: unknown preset"),
        (["--to", "hidden=32,heads=4"], "cannot shrink"),
        (["--to", "layers=1"], "cannot shrink"),
        (["--to", "width=128"], "--to: unknown key"),
        (["--to", "hidden=abc"], "not an integer"),
        (["--to", "aquila2-7b"], "vocab_size"),
        (["--to", "hidden=80,heads=10", "--method", "aki-pro", "--depth-mode", "stack"], "aki-pro"),
    ],
)
def test_grow_errors_exit_2(capsys, model_dir, tmp_path, args, needle):
    code, _, err = _run(capsys, "grow", model_dir, *args, "--out", tmp_path / "x")
    assert code == 2
    assert err.startswith("aquila: error:") and needle in err
    assert not (tmp_path / "x").exists()


def test_missing_source_and_bad_upcycle_exit_2(capsys, model_dir, tmp_path):
    code, _, err = _run(
        capsys, "grow", tmp_path / "nope", "--to", "layers=4", "--out", tmp_path / "x"
    )
    assert code == 2 and "nope" in err
    code, _, err = _run(capsys, "upcycle", model_dir, "--top-k", 9, "--out", tmp_path / "x")
    assert code == 2 and "--top-k" in err
    code, _, err = _run(capsys, "upcycle", model_dir, "--out", model_dir)
    assert code == 2 and "--out" in err


def test_help_mentions_methods(capsys):
    with pytest.raises(SystemExit):
        main(["grow", "--help"])
    out = capsys.readouterr().out
    assert "aki-pro" in out and "--identity-layers" in out
