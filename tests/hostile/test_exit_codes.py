"""Exit codes a script can branch on: 0 only for a run that ended as asked."""

from __future__ import annotations

import json
import re
from pathlib import Path

from aquila import errors
from aquila.cli import main
from aquila.engine.callbacks import Callback
from aquila.engine.checkpoint import list_checkpoints

README = Path(__file__).resolve().parents[2] / "README.md"


def test_non_finite_values_stopped_by_the_monitor_exit_3(train_args, tmp_path, capsys):
    """Weights initialised huge make the first loss non-finite: the monitor stops the run (its
    default policy rewinds, and there is no checkpoint to rewind to)."""
    run_dir = tmp_path / "run"
    rc = main(train_args(run_dir, "model.init_std=1e30", "train.checkpoint_every=0") + ["--json"])
    out = capsys.readouterr()
    assert rc == errors.EXIT_MONITOR_STOP == 3, out.err
    summary = json.loads(out.out.splitlines()[-1])
    assert summary["status"].startswith("monitor: nonfinite at step 1")
    assert summary["exit_code"] == 3 and summary["steps"] == 1
    assert list_checkpoints(run_dir) == []  # weights after a non-finite update are not saved


def test_a_stop_policy_is_a_monitor_stop(train_args, tmp_path, capsys):
    class Spike(Callback):
        def before_optimizer(self, trainer, info):
            if trainer.state.step == 3:  # step 4's loss: one batch blows up
                info["loss"].fill_(float("inf"))

    from aquila.engine.config import load_config
    from aquila.train.commands import _exit_code
    from aquila.train.run import prepare_run

    args = train_args(tmp_path / "run", "monitor.nonfinite.policy='stop'")
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    run = prepare_run(
        load_config(None, [*sets, f"run_dir='{tmp_path / 'run'}'"]), callbacks=[Spike()], quiet=True
    )
    reason = run.trainer.fit()
    assert reason.startswith("monitor: nonfinite at step 4")
    assert run.trainer.stopped_by_anomaly and _exit_code(run.trainer, reason) == 3


def test_a_time_limit_exits_0(run_copy, capsys):
    rc = main(
        ["train", "--resume", str(run_copy), "--quiet", "--no-report", "--json"]
        + ["--set", "train.max_steps=100000", "--set", "train.max_seconds=0.5"]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out.splitlines()[-1])["status"] == "time limit"


def test_exit_codes_are_documented_in_the_readme():
    text = README.read_text()
    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", text, flags=re.M))
    codes = {
        errors.EXIT_OK: "success",
        errors.EXIT_USAGE: "bad input",
        errors.EXIT_MONITOR_STOP: "monitor",
        errors.EXIT_SAVE_FAILED: "checkpoint",
        errors.EXIT_RUN_BUSY: "in use",
        errors.EXIT_INTERRUPTED: "interrupted",
    }
    for code, word in codes.items():
        assert word in table.get(str(code), ""), (code, table)
