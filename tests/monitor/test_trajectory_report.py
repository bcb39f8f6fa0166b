"""The weight-trajectory report: the settle criterion on known distances, and a real two-phase
run through `aquila monitor RUN --report --json --trajectory-png` and the dashboard's API."""

from __future__ import annotations

import json

import pytest

from aquila.cli import main
from aquila.monitor.trajectory_report import settle_summary


def _rows(distances: dict[str, list[float]], labels: list[str], step_tokens: int = 100):
    rows = []
    for ptype, ds in distances.items():
        for i, (d, label) in enumerate(zip([None, *ds], labels)):
            step = i + 1
            rows.append(
                {
                    "step": step,
                    "ptype": ptype,
                    "tokens": step * step_tokens,
                    "label": label,
                    "curve": [],
                    "prev_step": step - 1 if d is not None else None,
                    "distance": d,
                }
            )
    return rows


def test_settle_criterion_and_verdict():
    labels = ["a", "a", "a", "b", "b", "b"]
    fast = [10.0, 5.0, 0.9, 2.0, 0.5]  # below 1.0 at the 4th checkpoint, rises, falls again
    slow = [10.0, 8.0, 6.0, 3.0, 0.8]  # below 1.0 only at the last
    rows = _rows(
        {"q": fast, "k": fast, "v": fast, "o": fast, "gate": slow, "up": slow, "down": fast}, labels
    )
    s = settle_summary(rows, fraction=0.1)
    assert s["types"]["q"]["settled_tokens"] == 400 and s["types"]["q"]["stays_below"] is False
    assert s["types"]["gate"]["settled_tokens"] == 600 and s["types"]["gate"]["stays_below"]
    # A group settles when its last type does: attention at 400, MLP (gate, up) at 600.
    assert s["attention"]["settled_tokens"] == 400 and s["mlp"]["settled_tokens"] == 600
    assert s["attention_first"] is True and s["verdict"].startswith("attention projections")
    assert [p["phase"] for p in s["phases"]] == ["a", "b"]
    (b,) = s["boundaries"]
    assert b["tokens"] == 400 and b["from"] == "a" and b["to"] == "b"
    # Across the boundary (checkpoint 4): the interval 3..4 (still phase a) against the larger
    # of 4..5 and 5..6 (b): fast 0.9 -> 2.0, slow 6.0 -> 3.0; the median of the seven types is
    # a fast one.
    assert b["median_ratio"] == pytest.approx(2.0 / 0.9)
    assert b["max_ratio"] == pytest.approx(2.0 / 0.9)
    one = settle_summary(rows, window=1)["boundaries"][0]
    assert one["median_ratio"] == pytest.approx(2.0 / 0.9)
    # MLP settled first when the roles swap; nothing settles with a 1 % threshold.
    swapped = settle_summary(_rows({"q": slow, "gate": fast}, labels))
    assert swapped["attention_first"] is False and swapped["verdict"].startswith("MLP")
    none = settle_summary(rows, fraction=0.01)
    assert none["attention_first"] is None and none["verdict"].startswith("undecided")


def test_two_phase_run_report_png_and_dashboard(make_config, tmp_path, capsys):
    from aquila.monitor.dashboard import Dashboard
    from aquila.train.run import prepare_run

    mix = tmp_path / "phases.toml"
    mix.write_text(
        '[[phases]]\nname = "general"\nsteps = 3\nweights = { kjv = 0.5, news = 0.5 }\n'
        '[[phases]]\nname = "knowledge"\nsteps = 3\nweights = { kjv = 0.1, news = 0.9 }\n'
    )
    cfg = make_config(
        f"data.mixture='{mix}'", "train.checkpoint_every=1", "monitor.eval.enabled=false"
    )
    run = prepare_run(cfg, quiet=True)
    assert run.trainer.fit() == "completed"
    png = tmp_path / "traj.png"
    code = main(["monitor", str(run.run_dir), "--json", "--trajectory-png", str(png)])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    traj = report["trajectory"]
    assert [p["phase"] for p in traj["phases"]] == ["general", "knowledge"]
    # Phase 2 starts at sample 12: the checkpoint of step 3 (4 x 32 tokens a step) is labelled
    # with it; the distance of step 3 (steps 2..3) still belongs to phase 1, step 4's to phase 2.
    assert traj["phases"][1] == {"phase": "knowledge", "from_tokens": 3 * 128, "from_step": 3}
    assert set(traj["types"]) >= {"q", "k", "v", "o", "gate", "up", "down"}
    assert all(t["checkpoints"] == 5 for t in traj["types"].values())  # 6 checkpoints
    assert traj["boundaries"][0]["median_ratio"] > 0
    assert "criterion" in traj and traj["verdict"]
    assert png.stat().st_size > 0 and report["trajectory_png"] == str(png)
    assert Dashboard(run.run_dir).trajectory_summary() == traj
    # The text report states the criterion and the verdict.
    assert main(["monitor", str(run.run_dir), "--report"]) == 0
    text = capsys.readouterr().out
    assert "below 10% of its first measured value" in text and traj["verdict"] in text
