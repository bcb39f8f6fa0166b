import pytest

from aquila.engine.run import prepare_run
from aquila.monitor import MonitorOptions, monitor_callbacks


def test_tensorboard_event_files_are_written(make_config):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    opts = MonitorOptions.from_any({"tensorboard": True, "eval": {"enabled": False}})
    run = prepare_run(
        make_config("train.max_steps=4"), callbacks=monitor_callbacks(opts), quiet=True
    )
    run.trainer.fit()
    files = list((run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(run.run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss", "grad_norm", "param_norm", "source_loss/kjv"} <= set(tags)
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
