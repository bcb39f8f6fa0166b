import pytest

from aquila.train.run import prepare_run


def test_tensorboard_event_files_are_written(make_config):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Through the run config's [monitor] table, as a user would switch it on.
    cfg = make_config("train.max_steps=4", "monitor.tensorboard=true", "monitor.eval.enabled=false")
    run = prepare_run(cfg, quiet=True)
    run.trainer.fit()
    files = list((run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(run.run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss", "grad_norm", "param_norm", "source_loss/kjv"} <= set(tags)
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
