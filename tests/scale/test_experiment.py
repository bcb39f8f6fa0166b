"""bench/scale_experiment.py in its smoke mode: the whole grow -> train -> upcycle path end to end."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "scale_experiment.py"


def load_script():
    spec = importlib.util.spec_from_file_location("scale_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run(tmp_path, capsys):
    exp = load_script()
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    assert exp.main(["--smoke", "--json", "--out", str(out), "--plot", str(png)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(out.read_text())
    assert last["bar"] == report["bar"]
    assert Path(report["plot"]).is_file()
    runs = report["runs"]
    small_final = runs["small"]["curve"][-1]["loss"]
    # FPI with identity layers keeps S's function: the grown L starts at S's held-out loss.
    assert report["scale_up"]["fpi"]["start_loss"] == pytest.approx(small_final, abs=1e-3)
    # AKI changes the function; a fresh L starts near ln(vocab).
    assert report["scale_up"]["aki"]["start_loss"] != pytest.approx(small_final, abs=1e-3)
    assert runs["scratch"]["curve"][0]["loss"] == pytest.approx(math.log(1024), abs=0.1)
    # Upcycling keeps the dense function; the phase-2 arms get equal FLOPs.
    out2 = report["scale_out"]
    best_final = runs[out2["upcycled_from"]]["curve"][-1]["loss"]
    f = report["flops_per_token"]
    # MoE FLOPs count the active experts: top-2 costs more than dense, top-1 about the same.
    assert f["moe_top2"] > f["moe_top1"] > f["large"] > f["small"]
    assert f["moe_top1"] < 1.01 * f["large"]
    for k in (2, 1):
        arm = out2["by_top_k"][f"top{k}"]
        assert arm["start_loss"] == pytest.approx(best_final, abs=1e-3)
        assert arm["dense_steps"] == round(arm["moe_steps"] * f[f"moe_top{k}"] / f["large"])
    assert out2["by_top_k"]["top2"]["dense_steps"] > out2["by_top_k"]["top2"]["moe_steps"]
    # Grown and upcycled curves start where the training they inherit left off on the FLOPs axis.
    s_flops = runs["small"]["curve"][-1]["tokens"] * f["small"]
    assert runs["fpi"]["flops_offset"] == pytest.approx(s_flops)
    assert runs["moe-upcycled-top2"]["flops_offset"] > s_flops
    assert report["seconds"] < 60
