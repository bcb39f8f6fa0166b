"""The policy from a run's mixture file, steered through the control queue and the CLI."""

import subprocess
import sys

import pytest

from aquila.cli import main as cli
from aquila.errors import UserError
from aquila.mixing import MixingCallback
from aquila.train.run import prepare_run

MIXTURE = """
[[phases]]
name = "start"
weights = { kjv = 1, kjv_late = 1, news = 1 }
steps = 100

[policy]
name = "odm"
every = 2
warmup = 2
min_weight = 0.1
"""


def auto_steps(history):
    return [h["step"] for h in history if h["kind"] == "auto-mixture" and "weights" in h]


@pytest.fixture()
def mixture_file(tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text(MIXTURE)
    return path


def test_policy_table_of_mixture_file_steers_the_run(mix_config, mixture_file):
    run = prepare_run(mix_config(f"data.mixture='{mixture_file}'"), quiet=True)
    mixers = [cb for cb in run.trainer.callbacks if isinstance(cb, MixingCallback)]
    assert len(mixers) == 1 and mixers[0].config.name == "odm"
    run.trainer.fit()
    assert auto_steps(run.trainer.history) == [2, 4, 6, 8, 10]
    # The monitor labels the mixture by the policy that set it.
    from aquila.monitor import store

    labels = {m["label"] for m in store.mixtures(store.open_db(run.run_dir))}
    assert "auto (odm)" in labels


def test_control_queue_turns_the_policy_off_and_on(mix_config, mixture_file, at_step):
    from aquila.engine.rundb import RunDB

    run = prepare_run(
        mix_config(f"data.mixture='{mixture_file}'", "train.max_steps=14"), quiet=True
    )
    db = RunDB(run.run_dir)
    run.trainer.callbacks.insert(0, at_step(3, lambda tr: db.enqueue("auto-mixture", on=False)))
    run.trainer.callbacks.insert(0, at_step(7, lambda tr: db.enqueue("auto-mixture", on=True)))
    run.trainer.fit()
    # Off from 3 to 7; back on at 7 with a fresh interval of losses, so the next update is at 9.
    assert auto_steps(run.trainer.history) == [2, 9, 11, 13]
    applied = [c for c in db.commands() if c["kind"] == "auto-mixture"]
    assert [(c["status"], c["applied_step"]) for c in applied] == [("applied", 3), ("applied", 7)]


def test_auto_mixture_without_policy_is_rejected(mix_config, capsys):
    from aquila.engine.callbacks import Callback
    from aquila.engine.rundb import RunDB

    class AfterFirstStep(Callback):  # the run's config exists once it trains
        def on_step(self, trainer, metrics):
            if metrics.step == 1:
                self.rc = cli(["control", str(trainer.run_dir), "auto-mixture", "on"])
                # Queued behind the CLI's back, the trainer rejects it and changes nothing.
                RunDB(trainer.run_dir).enqueue("auto-mixture", on=True)

    probe = AfterFirstStep()
    run = prepare_run(mix_config("train.max_steps=4"), callbacks=[probe], quiet=True)
    run.trainer.fit()
    assert probe.rc == 2
    assert "no mixture policy" in capsys.readouterr().err
    (cmd,) = RunDB(run.run_dir).commands()
    assert cmd["status"] == "rejected" and "no mixture policy" in cmd["reason"]


def test_bad_policy_table_names_file_and_key(mix_config, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(MIXTURE.replace("every = 2", "cadence = 2"))
    with pytest.raises(UserError, match=r"bad.toml: \[policy\]: unknown key 'cadence'"):
        prepare_run(mix_config(f"data.mixture='{path}'"), quiet=True)


def test_control_cli_help_lists_auto_mixture():
    out = subprocess.run(
        [sys.executable, "-m", "aquila.cli", "control", "RUN", "auto-mixture", "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "on" in out.stdout and "off" in out.stdout
