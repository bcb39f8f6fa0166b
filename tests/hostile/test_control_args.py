"""`aquila control` arguments: the config rules, the run's own sources and phases, and whether a
training is running, all checked before anything is queued."""

from __future__ import annotations

import pytest

from aquila.cli import main
from aquila.engine.config import load_config
from aquila.engine.rundb import RunDB

from .conftest import one_line, tree

BAD = [
    (
        ["set-mixture", "bogus=1"],
        "unknown source(s) ['bogus']; the run's sources are ['kjv', 'news']",
    ),
    (["set-mixture", "kjv=nan"], "weight of 'kjv' must be finite and >= 0"),
    (["set-mixture", "kjv=0,news=0"], "positive sum"),
    (["set-mixture", '{"kjv": "x"}'], "is not a number"),
    (["set-lr", "nan"], "argument set-lr VALUE = nan: must be a finite number > 0"),
    (["set-lr", "inf"], "argument set-lr VALUE = inf"),
    (["set-lr", "0"], "argument set-lr VALUE = 0.0: must be a finite number > 0"),
    (["set-lr", "2"], "argument set-lr VALUE = 2.0: must be a finite number > 0 and <= 1.0"),
    (["set-lr", "--scale", "-1"], "argument set-lr --scale = -1.0: must be a finite number > 0"),
    (["set-lr", "1e-3", "--scale", "2"], "set-lr: give a VALUE or --scale F"),
    (["add-source", "kjv", "--weight", "1.5"], "argument add-source --weight = 1.5"),
    (["add-source", "kjv", "--weight", "nan"], "argument add-source --weight = nan"),
    (["add-source", "bible"], "source 'bible' is not in the run's data dir"),
    (["set-phase", "knowledge"], "unknown phase 'knowledge'"),
    (["auto-mixture", "on"], "the run has no mixture policy"),
    (["set-lr", "1e-3", "--wait", "--timeout", "-1"], "argument --timeout = -1.0"),
    (["stop"], "no training is running in"),
    (["pause"], "no training is running in"),
    (["checkpoint-now"], "no training is running in"),
]


@pytest.mark.parametrize(("argv", "says"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_refused_before_anything_is_queued(run_copy, capsys, argv, says):
    before = tree(run_copy)
    assert main(["control", str(run_copy), *argv]) == 2
    line = one_line(capsys.readouterr().err)
    assert says in line, line
    assert tree(run_copy) == before


def _sample_corpus_run(path):
    """A run directory of the bundled sample corpus (data.dir empty), as `aquila train` writes."""
    cfg = load_config(None, ["model.preset='aquila-test'", f"run_dir='{path}'"])
    path.mkdir()
    cfg.save(path / "config.toml")
    return path


def test_sample_corpus_sources_are_known(tmp_path, capsys):
    """The reproduction: on a sample-corpus run `set-mixture bogus=1` was queued and failed only
    when a trainer applied it."""
    run = _sample_corpus_run(tmp_path / "run")
    before = tree(run)
    assert main(["control", str(run), "set-mixture", "bogus=1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert (
        "unknown source(s) ['bogus']; the run's sources are ['asv', 'kjv', 'peoples_daily'" in line
    )
    assert tree(run) == before
    assert main(["control", str(run), "set-mixture", "kjv=1,reviews=1"]) == 0


def test_a_mixture_names_only_the_sources_the_run_trains_on(run_copy, capsys):
    cfg = load_config(run_copy / "config.toml")
    cfg.data.sources = ["kjv"]
    cfg.save(run_copy / "config.toml")
    assert main(["control", str(run_copy), "set-mixture", "kjv=1,news=1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "unknown source(s) ['news']; the run trains on ['kjv']; add one with add-source" in line
    assert main(["control", str(run_copy), "add-source", "news"]) == 0


def test_a_stop_queued_while_nothing_ran_does_not_stop_the_next_resume(run_copy, capsys):
    """Queued behind the CLI's back (an old dashboard, a script writing the database), a stop
    meant for a training that has ended is rejected by the next one instead of ending it."""
    db = RunDB(run_copy)
    stale = db.enqueue("stop")
    rc = main(
        ["train", "--resume", str(run_copy), "--quiet", "--no-report", "--json"]
        + ["--set", "train.max_steps=8"]
    )
    assert rc == 0, capsys.readouterr().err
    assert '"status": "completed"' in capsys.readouterr().out
    (row,) = [c for c in db.commands() if c["id"] == stale]
    assert row["status"] == "rejected" and row["reason"] == "queued while no training was running"


def test_wait_exit_codes_say_what_became_of_the_command(run_copy, capsys):
    import threading

    # No training is running: a queued set-lr stays pending past --timeout.
    assert main(["control", str(run_copy), "set-lr", "1e-3", "--wait", "--timeout", "0.3"]) == 7
    assert "(set-lr): pending" in capsys.readouterr().out
    db = RunDB(run_copy)
    (first,) = db.commands()

    def reject_when_queued():
        # What a training does with a command it cannot apply, seen from the waiting side.
        for _ in range(200):
            rows = [r for r in db.commands() if r["id"] != first["id"]]
            if rows:
                db.resolve(rows[0]["id"], "rejected", 7, "the run has ended")
                return
            threading.Event().wait(0.05)

    t = threading.Thread(target=reject_when_queued)
    t.start()
    rc = main(["control", str(run_copy), "set-lr", "2e-3", "--wait", "--timeout", "30"])
    t.join()
    assert rc == 6
    assert "rejected at step 7: the run has ended" in capsys.readouterr().out
