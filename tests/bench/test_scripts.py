"""Every script in bench/ in a tiny run: a few steps of a tiny model, so none can break silently.

Each is loaded by path and its ``main`` called with its smallest arguments; the assertions are
about the shape of what it reports, never about timings.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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
    tested |= {"gpu_check"}
    # Smoke-tested beside the code they measure.
    elsewhere = {
        "dmu_scale": "tests/data/test_dmu_scale_bench.py",
        "tokenize_memory": "tests/data/test_bench_tokenize_memory.py",
        "time_to_loss": "tests/engine/test_time_to_loss_bench.py",
    }
    root = BENCH.parent
    for name, test in elsewhere.items():
        assert f"{name}.py" in (root / test).read_text(), f"{test} does not load bench/{name}.py"
    tested |= set(elsewhere)
    helpers = {"heldout"}  # imported by the experiments, no command of its own
    assert {p.stem for p in BENCH.glob("*.py")} == tested | helpers
    assert {p.name for p in BENCH.glob("*.sh")} == {"gpu_check.sh"}


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


def test_cpu_vs_hf_eager(capsys):
    script = load("cpu_vs_hf")
    argv = ["--preset", "aquila-test", "--seq-len", "16", "--batch", "2", "--steps", "1"]
    argv += ["--warmup", "1", "--peak-seconds", "0.05", "--eager-only", "--profile", "--json"]
    assert script.main(argv) == 0
    out = last_json(capsys)
    assert out["aquila_eager_tokens_per_s"] > 0 and out["hf_eager_fused_adamw_tokens_per_s"] > 0
    assert out["eager_speedup_vs_hf_eager"] > 0 and out["aquila_loss"] == "full"
    assert out["aquila_profile"] and 0 < out["aquila_profile"][0]["self_share"] <= 1


@pytest.mark.slow
def test_cpu_vs_hf_compiled(capsys):
    script = load("cpu_vs_hf")
    argv = ["--preset", "aquila-test", "--seq-len", "16", "--batch", "2", "--steps", "1"]
    assert script.main([*argv, "--warmup", "1", "--peak-seconds", "0.05", "--json"]) == 0
    out = last_json(capsys)
    assert out["speedup_vs_hf_compiled"] > 0


def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path):
    import os
    import subprocess

    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["device"] is None and "no CUDA device" in report["skipped"]
    assert report["parts"] and all(p["status"] == "skipped" for p in report["parts"].values())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == report


def test_gpu_check_parts_are_valid_commands():
    """Each benchmark the GPU check runs parses as an `aquila bench` call and its config
    overrides validate, so a typo shows here, not on the GPU machine."""
    from aquila.cli import build_parser
    from aquila.engine.config import load_config

    script = load("gpu_check")
    for args in script.BENCHES.values():
        ns = build_parser().parse_args(["bench", *args])
        load_config(None, [f"model.preset='{ns.preset}'", *ns.overrides])
    compile(script.INT4_AND_GENERATION, "int4_and_generation", "exec")
    with pytest.raises(SystemExit):
        script.main(["--parts", "nope"])
