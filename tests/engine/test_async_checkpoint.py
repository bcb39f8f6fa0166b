"""train.async_checkpoint in one process: training goes on while a thread writes the files."""

from __future__ import annotations

import time

import pytest
import torch

from aquila.engine import checkpoint as ck
from aquila.engine.callbacks import Callback
from aquila.engine.checkpoint import STATE_FILE, list_checkpoints
from aquila.model.io import load_model_dir
from aquila.monitor import store
from aquila.train.run import prepare_run


@pytest.fixture()
def slow_writes(monkeypatch):
    """Each checkpoint's weights are written a while after the save starts, so that training
    has moved on (and changed every parameter in place) by then."""
    write = ck.write_model_files

    def delayed(*args, **kwargs):
        time.sleep(0.4)
        return write(*args, **kwargs)

    monkeypatch.setattr(ck, "write_model_files", delayed)


class Seen(Callback):
    def __init__(self):
        self.rows: list[tuple[int, int, str]] = []

    def on_checkpoint(self, trainer, path):
        self.rows.append((trainer.checkpoint_state.step, trainer.state.step, path.name))


def _state(path):
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def test_background_checkpoints_equal_synchronous_ones(make_config, tmp_path, slow_writes):
    keys = ("train.max_steps=6", "train.checkpoint_every=2")
    sync = prepare_run(make_config(*keys, run_dir=tmp_path / "sync"), quiet=True)
    sync.trainer.fit()
    seen = Seen()
    cfg = make_config(*keys, "train.async_checkpoint=true", run_dir=tmp_path / "bg")
    run = prepare_run(cfg, quiet=True, callbacks=[seen])
    assert run.trainer.fit() == "completed"

    a, b = dict(list_checkpoints(tmp_path / "sync")), dict(list_checkpoints(tmp_path / "bg"))
    assert sorted(a) == sorted(b) == [2, 4, 6]
    assert not list((tmp_path / "bg" / "checkpoints").glob(".tmp*"))
    for step in (2, 4, 6):
        wa, wb = load_model_dir(a[step]).state_dict(), load_model_dir(b[step]).state_dict()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (step, k)
        sa, sb = _state(a[step]), _state(b[step])
        for key in ("step", "samples", "tokens"):  # train_seconds is a wall-clock time
            assert sa["trainer"][key] == sb["trainer"][key]
        assert sb["trainer"]["step"] == step and sa["history"] == sb["history"]
        for i, entry in sa["optimizer"]["state"].items():
            assert torch.equal(entry["exp_avg"], sb["optimizer"]["state"][i]["exp_avg"])
    # Reported once complete, with the checkpoint's own step, while training had gone on.
    assert [(s, name) for s, _, name in seen.rows] == [
        (2, "step-00000002"),
        (4, "step-00000004"),
        (6, "step-00000006"),
    ]
    assert any(now > saved for saved, now, _ in seen.rows)
    # The weight trajectory is recorded at the checkpoints' steps, from their weights.
    traj_a = {(r["step"], r["ptype"]): r for r in store.trajectory(store.open_db(sync.run_dir))}
    traj_b = {(r["step"], r["ptype"]): r for r in store.trajectory(store.open_db(run.run_dir))}
    assert traj_a.keys() == traj_b.keys() and {s for s, _ in traj_b} == {2, 4, 6}
    for key, row in traj_a.items():
        assert traj_b[key]["curve"] == pytest.approx(row["curve"], rel=1e-6)


def test_a_crash_keeps_the_checkpoint_being_written(make_config, tmp_path, slow_writes):
    class Crash(Callback):
        def on_step(self, trainer, metrics):
            if metrics.step == 5:
                raise RuntimeError("node lost")

    cfg = make_config(
        "train.max_steps=8",
        "train.checkpoint_every=4",
        "train.async_checkpoint=true",
        run_dir=tmp_path / "r",
    )
    run = prepare_run(cfg, quiet=True, callbacks=[Crash()])
    with pytest.raises(RuntimeError, match="node lost"):
        run.trainer.fit()
    # The step-4 write was still in flight at step 5; it was completed before the error left.
    assert [s for s, _ in list_checkpoints(tmp_path / "r")] == [4]
    resumed = prepare_run(resume=tmp_path / "r", quiet=True)
    assert resumed.trainer.state.step == 4
    assert resumed.trainer.fit() == "completed" and resumed.trainer.state.step == 8
