import math

import pytest

from aquila.engine.callbacks import Callback
from aquila.engine.checkpoint import list_checkpoints
from aquila.mixing import MixingCallback, PolicyConfig
from aquila.train.run import prepare_run

ODM = {"name": "odm", "every": 3, "warmup": 3, "min_weight": 0.1}


class Record(Callback):
    def __init__(self):
        self.batches, self.losses = {}, {}

    def before_optimizer(self, trainer, info):
        self.batches[trainer.state.step + 1] = info["global_indices"].tolist()

    def on_step(self, trainer, metrics):
        if metrics.logged:
            self.losses[metrics.step] = metrics.loss


class CrashAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, metrics):
        if trainer.state.step == self.step:
            raise RuntimeError("simulated kill")


def auto(history):
    return [h for h in history if h["kind"] == "auto-mixture" and "weights" in h]


def test_updates_apply_at_boundaries_within_bounds_and_are_recorded(mix_config):
    mixer = MixingCallback(PolicyConfig.from_dict(ODM))
    run = prepare_run(mix_config(), callbacks=[mixer], quiet=True)
    run.trainer.fit()
    updates = auto(run.trainer.history)
    assert [u["step"] for u in updates] == [3, 6, 9]
    segments = run.data.history.segments
    assert [g for g, _ in segments] == [0, 24, 48, 72]  # step * batch: at step boundaries
    for u, (g, w) in zip(updates, segments[1:]):
        assert u["samples"] == g and u["by"] == "policy" and u["policy"] == "odm"
        assert w == pytest.approx(u["weights"])
        assert math.isclose(sum(w.values()), 1.0) and min(w.values()) >= 0.1 - 1e-9
        assert set(u["losses"]) == {"kjv", "kjv_late", "news"}
        assert all(2.0 < v < 8.0 for v in u["losses"].values())
    assert updates[0]["weights"] != updates[1]["weights"]  # the policy really moves


def test_repetition_cap_holds_a_source_down(mix_config):
    cfg = {**ODM, "min_weight": 0.3, "source_max_epochs": {"news": 0.02}}
    run = prepare_run(
        mix_config(), callbacks=[MixingCallback(PolicyConfig.from_dict(cfg))], quiet=True
    )
    run.trainer.fit()
    chunks = run.data.num_chunks["news"]
    for u in auto(run.trainer.history):
        left = (12 - u["step"]) * 8
        drawn = run.data.sampler.counts_at(u["samples"])["news"]
        # The cap beats the 0.3 floor: at this share news ends the run within 0.02 epochs.
        assert u["weights"]["news"] <= max(0.02 * chunks - drawn, 0) / left + 1e-9
    assert run.data.sampler.counts_at(12 * 8)["news"] <= 0.02 * chunks + 8


def test_resume_after_policy_update_reproduces_weights_and_batches(mix_config, tmp_path):
    cfg = {"name": "ado", "every": 2, "warmup": 2, "params": {"min_points": 2}}
    straight, mixer = Record(), MixingCallback(PolicyConfig.from_dict(cfg))
    first = prepare_run(mix_config(run_dir=tmp_path / "a"), callbacks=[straight, mixer], quiet=True)
    first.trainer.fit()
    want = auto(first.trainer.history)
    assert len(want) == 5  # steps 2, 4, 6, 8, 10

    rec1 = Record()
    run = prepare_run(
        mix_config("train.checkpoint_every=5", run_dir=tmp_path / "b"),
        callbacks=[rec1, MixingCallback(PolicyConfig.from_dict(cfg)), CrashAfter(7)],
        quiet=True,
    )
    with pytest.raises(RuntimeError, match="simulated kill"):
        run.trainer.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [5]
    rec2 = Record()
    resumed = prepare_run(
        resume=tmp_path / "b",
        callbacks=[rec2, MixingCallback(PolicyConfig.from_dict(cfg))],
        quiet=True,
    )
    assert resumed.trainer.state.step == 5
    resumed.trainer.fit()
    got = auto(resumed.trainer.history)
    assert [(u["step"], u["weights"]) for u in got] == [(u["step"], u["weights"]) for u in want]
    assert resumed.data.history.to_json() == first.data.history.to_json()
    assert {**rec1.batches, **rec2.batches} == straight.batches
    merged = {**{k: v for k, v in rec1.losses.items() if k <= 5}, **rec2.losses}
    assert merged == straight.losses


def test_manual_set_mixture_pauses_policy_until_handed_back(mix_config, at_step):
    manual = {"kjv": 0.2, "kjv_late": 0.2, "news": 0.6}
    mixer = MixingCallback(PolicyConfig.from_dict({**ODM, "every": 2, "warmup": 2}))

    def override(trainer):
        trainer.data.set_weights(trainer.state.samples, manual)
        trainer.record("command", command="set-mixture", args={"weights": manual}, by="user")

    run = prepare_run(
        mix_config("train.max_steps=16"),
        callbacks=[at_step(5, override), mixer, at_step(10, mixer.resume_policy)],
        quiet=True,
    )
    run.trainer.fit()
    steps = [u["step"] for u in auto(run.trainer.history)]
    assert steps == [2, 4, 12, 14]  # nothing while the person's mixture holds (5..9)
    assert run.data.history.weights_at(9 * 8) == pytest.approx(manual)
    # Handed back at 10: the person's mixture is the new prior, an interval of losses first.
    assert any(h.get("on") is True and h["step"] == 10 for h in run.trainer.history)
    assert not mixer.paused


def test_queued_control_command_pauses_and_flag_file_resumes(mix_config, at_step):
    from aquila.engine.rundb import RunDB

    mixer = MixingCallback(PolicyConfig.from_dict({**ODM, "every": 2, "warmup": 2}))
    run = prepare_run(mix_config("train.max_steps=14"), callbacks=[mixer], quiet=True)
    db = RunDB(run.run_dir)

    def flag(trainer):
        (trainer.run_dir / "mixing").mkdir(exist_ok=True)
        (trainer.run_dir / "mixing" / "resume").touch()

    run.trainer.callbacks.insert(
        0, at_step(3, lambda tr: db.enqueue("set-mixture", weights={"news": 1}))
    )
    run.trainer.callbacks.insert(0, at_step(8, flag))
    run.trainer.fit()
    steps = [u["step"] for u in auto(run.trainer.history)]
    assert steps == [2, 10, 12]
    assert mixer.paused is False and not (run.run_dir / "mixing" / "resume").exists()
