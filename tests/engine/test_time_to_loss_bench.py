"""bench/time_to_loss.py in its smoke mode: sweep, seeds, crossing points, step cost and plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "time_to_loss.py"


def load_script():
    spec = importlib.util.spec_from_file_location("time_to_loss", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run(tmp_path, capsys):
    bench = load_script()
    out, png = tmp_path / "ttl.json", tmp_path / "ttl.png"
    assert bench.main(["--smoke", "--json", "--out", str(out), "--plot", str(png)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(out.read_text())
    assert last["bar"] == report["bar"] and Path(report["plot"]).is_file()
    assert set(report["runs"]) == {"adamw-s0", "adamw-s1", "muon-s0", "muon-s1"}
    for run in report["runs"].values():
        steps = [p["step"] for p in run["curve"]]
        assert steps == [0, 2, 3] and run["tokens"] == 3 * 2 * 32
        seconds = [p["seconds"] for p in run["curve"]]
        assert seconds[0] == 0 and seconds == sorted(seconds)
    # The target is the mean of AdamW's finals; each AdamW seed reaches it within its run or not.
    finals = [report["runs"][f"adamw-s{s}"]["curve"][-1]["loss"] for s in (0, 1)]
    assert report["adamw_final_mean"] == sum(finals) / 2
    cost = report["step_cost"]["median_s"]
    assert cost["muon"] > 0 and cost["adamw"] > 0 and cost["forward_backward"] > 0
