"""Every script in bench/ in a tiny run: a few steps of a tiny model, so none can break silently.

Each is loaded by path and its ``main`` called with its smallest arguments; the assertions are
about the shape of what it reports, never about timings.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_every_script_has_a_smoke_test():
    tested = {"checkpoint_stall", "cpu_vs_hf", "mixing_experiment", "scale_experiment"}
    helpers = {"heldout"}  # imported by the experiments, no command of its own
    assert {p.stem for p in BENCH.glob("*.py")} == tested | helpers


def test_checkpoint_stall(capsys):
    script = load("checkpoint_stall")
    argv = ["--preset", "aquila-test", "--steps", "3", "--every", "1", "--batch", "2"]
    assert script.main([*argv, "--seq-len", "16", "--threads", "1", "--json"]) == 0
    out = last_json(capsys)
    for mode in ("sync", "async"):
        assert out[mode]["saves"] == 3 and out[mode]["checkpoint_mb"] > 0


def test_mixing_experiment(capsys, tmp_path):
    script = load("mixing_experiment")
    argv = ["--steps", "3", "--batch", "2", "--seq-len", "16", "--hidden", "32", "--layers", "1"]
    argv += ["--warmup", "1", "--every", "1", "--policy-warmup", "1", "--eval-every", "3"]
    argv += ["--heldout-per-source", "1", "--seeds", "0", "--threads", "1", "--vocab", "512"]
    argv += ["--out", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png"), "--json"]
    assert script.main(argv) == 0
    out = last_json(capsys)
    assert {"natural", "uniform", "odm", "ado", "doremi"} <= set(out["table"])
    assert Path(out["plot"]).is_file()


def test_scale_experiment(capsys, tmp_path):
    script = load("scale_experiment")
    argv = ["--smoke", "--methods", "fpi", "--top-k", "1", "--threads", "1", "--json"]
    argv += ["--out", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")]
    assert script.main(argv) == 0
    out = last_json(capsys)
    assert set(out["scale_up"]) == {"fpi"} and "top1" in out["scale_out"]["by_top_k"]


def test_cpu_vs_hf(capsys):
    script = load("cpu_vs_hf")
    argv = ["--preset", "aquila-test", "--seq-len", "16", "--batch", "2", "--steps", "2"]
    assert script.main([*argv, "--warmup", "1", "--json"]) == 0
    out = last_json(capsys)
    assert out["aquila_tokens_per_s"] > 0 and out["hf_llama_tokens_per_s"] > 0
