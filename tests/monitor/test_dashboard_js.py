"""The dashboard's evaluation charts, run in Node with Plotly stubbed (skipped without node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "src/aquila/monitor/static/app.js"

HARNESS = """
const src = require("fs").readFileSync(process.argv[1], "utf8");
const calls = {};
global.Plotly = { react: (id, traces) => { calls[id] = traces; } };
global.layoutBase = () => ({});
eval(src.slice(src.indexOf("const HEADLINE"), src.indexOf("function drawTrajectory"))
  + "; global.drawEvals = drawEvals;");
drawEvals(JSON.parse(process.argv[2]));
console.log(JSON.stringify(calls));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_task_results_are_drawn_over_steps():
    rows = [
        {"step": 10, "task": "heldout-bpb", "data": {"languages": {"en": {"bpb": 2.1}}}},
        {"step": 20, "task": "mc:a", "data": {"metrics": {"acc": 0.5, "n": 2}}},
        {"step": 10, "task": "mc:a", "data": {"metrics": {"acc": 0.25, "n": 2}}},
        {"step": 10, "task": "bpb:text", "data": {"metrics": {"bpb": 5.3, "bpb_en": 5.1}}},
        {"step": 10, "task": "gsm8k:t", "data": {"metrics": {"exact_match": 0.0, "n": 3}}},
    ]
    out = subprocess.run(
        ["node", "-e", HARNESS, str(APP), json.dumps(rows)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    charts = json.loads(out)
    bpb = {t["name"]: (t["x"], t["y"]) for t in charts["chart-evals"]}
    assert bpb == {"en bpb": ([10], [2.1]), "bpb:text bpb": ([10], [5.3])}
    scores = {t["name"]: (t["x"], t["y"]) for t in charts["chart-tasks"]}
    assert scores == {"mc:a acc": ([10, 20], [0.25, 0.5]), "gsm8k:t exact_match": ([10], [0.0])}
