"""Live control commands: queued in the run database, applied at the next step boundary."""

from __future__ import annotations

import json
import threading
import time

import pytest

from aquila.cli import main
from aquila.engine.callbacks import Callback
from aquila.engine.checkpoint import list_checkpoints
from aquila.engine.control import parse_weights
from aquila.engine.rundb import RunDB
from aquila.errors import UserError
from aquila.train.run import prepare_run


class At(Callback):
    """Runs ``fn(trainer)`` after step ``k``."""

    def __init__(self, k, fn):
        self.k, self.fn = k, fn

    def on_step(self, trainer, metrics):
        if metrics.step == self.k:
            self.fn(trainer)


class Reads(Callback):
    def __init__(self):
        self.g = {}

    def before_optimizer(self, trainer, info):
        self.g[trainer.state.step + 1] = info["global_indices"].tolist()


def test_parse_weights():
    assert parse_weights("kjv=0.5, news=1.5") == {"kjv": 0.5, "news": 1.5}
    assert parse_weights('{"kjv": 1}') == {"kjv": 1.0}
    for bad in ("kjv", "kjv=-1", "kjv=0", "kjv=x", "[1]", "kjv=nan"):
        with pytest.raises(UserError):
            parse_weights(bad)


def test_cli_validates_up_front(make_config, capsys):
    run = prepare_run(make_config("train.max_steps=1"), quiet=True)
    run.trainer.fit()  # the run's config is written once it trains
    d = str(run.run_dir)
    cases = [
        (["control", d + "-nope", "stop"], "not a run directory"),
        (["control", d, "set-mixture", "kjv=1,bible=2"], "unknown source(s) ['bible']"),
        (["control", d, "set-mixture", "kjv=-1"], ">= 0"),
        (["control", d, "set-lr", "-3"], "> 0"),
        (["control", d, "set-lr"], "VALUE or --scale"),
        (["control", d, "set-phase", "knowledge"], "unknown phase"),
        (["control", d, "add-source", "nope"], "not in the run's data dir"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.startswith("aquila: error:"), err
    assert RunDB(d).commands() == []
    assert main(["control", d, "set-lr", "1e-3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["kind"] == "set-lr" and out["status"] == "pending"
    assert main(["control", d, "status", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["commands"]
    assert [(r["id"], r["status"]) for r in rows] == [(out["id"], "pending")]


def test_commands_apply_at_the_next_boundary(make_config):
    run = prepare_run(make_config("train.max_steps=8", "train.checkpoint_every=0"), quiet=True)
    t, db = run.trainer, RunDB(run.run_dir)
    bad = db.enqueue("set-mixture", weights={"kjv": 1, "unknown": 1})
    lr = db.enqueue("set-lr", scale=0.5)
    mix = db.enqueue("set-mixture", weights={"news": 1.0})
    run.trainer.callbacks.append(At(3, lambda tr: db.enqueue("checkpoint-now")))
    run.trainer.callbacks.append(At(5, lambda tr: db.enqueue("stop")))
    lrs = {}
    run.trainer.callbacks.append(At(1, lambda tr: lrs.setdefault(1, tr.schedule(1))))
    assert t.fit() == "stopped by command"
    rows = {r["id"]: r for r in db.commands()}
    assert rows[bad]["status"] == "rejected" and "unknown" in rows[bad]["reason"]
    assert rows[lr]["status"] == rows[mix]["status"] == "applied"
    assert rows[lr]["applied_step"] == 0 and t.schedule.scale == 0.5
    assert [g for g, _ in run.data.history.segments] == [0]  # at sample 0: replaced
    assert run.data.current_weights() == {"kjv": 0.0, "news": 1.0}
    assert t.state.step == 5 and [s for s, _ in list_checkpoints(run.run_dir)] == [3, 5]
    kinds = [h["command"] for h in t.history]
    assert kinds == ["set-lr", "set-mixture", "checkpoint-now", "stop"]
    assert [h["step"] for h in t.history] == [0, 0, 3, 5]
    # The LR scale travels with the checkpoint.
    again = prepare_run(resume=run.run_dir, quiet=True)
    assert again.trainer.schedule.scale == 0.5 and again.trainer.history == t.history


def test_pause_holds_without_consuming_data(make_config):
    run = prepare_run(make_config("train.max_steps=4", "train.checkpoint_every=0"), quiet=True)
    db, reads = RunDB(run.run_dir), Reads()
    ctl = next(c for c in run.trainer.callbacks if type(c).__name__ == "ControlCallback")
    ctl.poll_seconds = 0.05
    run.trainer.callbacks.append(reads)
    paused_at = {}

    def pause(tr):
        db.enqueue("pause")

        def later():
            time.sleep(0.6)
            paused_at["step"] = tr.state.step
            db.enqueue("resume")

        threading.Thread(target=later, daemon=True).start()

    run.trainer.callbacks.append(At(2, pause))
    start = time.perf_counter()
    assert run.trainer.fit() == "completed"
    assert time.perf_counter() - start > 0.5
    assert paused_at["step"] == 2  # held at the boundary after step 2
    assert [g for s in sorted(reads.g) for g in reads.g[s]] == list(range(16))
    applied = [(r["kind"], r["applied_step"]) for r in db.commands()]
    assert applied == [("pause", 2), ("resume", 2)]


def test_mixture_phases_and_set_phase(make_config, tmp_path):
    mix = tmp_path / "mix.toml"
    mix.write_text(
        '[[phases]]\nname = "en"\nsteps = 2\nweights = { kjv = 1 }\n'
        '[[phases]]\nname = "zh"\nsteps = 2\nweights = { news = 1 }\n'
        '[[phases]]\nname = "both"\nsteps = 2\nweights = { kjv = 1, news = 1 }\n'
    )
    run = prepare_run(make_config(f"data.mixture='{mix}'", run_dir=tmp_path / "a"), quiet=True)
    run.trainer.fit()
    segs = run.data.history.segments
    assert [g for g, _ in segs] == [0, 8, 16] and segs[1][1] == {"kjv": 0.0, "news": 1.0}
    db = RunDB(tmp_path / "a")
    assert [(r["args"]["name"], r["applied_step"]) for r in db.commands()] == [
        ("zh", 2),
        ("both", 4),
    ]

    # set-phase jumps ahead: the skipped phase's boundary no longer changes anything.
    run = prepare_run(make_config(f"data.mixture='{mix}'", run_dir=tmp_path / "b"), quiet=True)
    run.trainer.callbacks.append(
        At(1, lambda tr: main(["control", str(tmp_path / "b"), "set-mixture", "both"]))
    )
    run.trainer.fit()
    assert [g for g, _ in run.data.history.segments] == [0, 4]
    assert run.data.current_weights() == {"kjv": 0.5, "news": 0.5}


def test_add_source_joins_and_survives_resume(make_config, tmp_path):
    run = prepare_run(make_config("data.sources=['kjv']", "train.max_steps=4"), quiet=True)
    assert run.data.source_names == ["kjv"]
    d = str(run.run_dir)
    run.trainer.callbacks.append(At(1, lambda tr: main(["control", d, "add-source", "news"])))
    run.trainer.callbacks.append(
        At(2, lambda tr: main(["control", d, "add-source", "news", "--weight", "0.5"]))
    )
    run.trainer.fit()
    rows = RunDB(d).commands()
    assert [r["status"] for r in rows] == ["applied", "applied"]  # weight 0 is not "in" it yet
    segs = run.data.history.segments
    assert segs[1] == (4, {"kjv": 1.0, "news": 0.0})
    assert segs[2] == (8, {"kjv": 0.5, "news": 0.5})
    again = prepare_run(resume=d, quiet=True, overrides=["train.max_steps=6"])
    assert again.data.source_names == ["kjv", "news"]
    assert again.trainer.fit() == "completed"
