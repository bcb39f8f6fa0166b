import errno
import json
import math
import os
import signal

import pytest
import torch

from aquila.cli import main
from aquila.engine.callbacks import Callback
from aquila.engine.checkpoint import list_checkpoints
from aquila.errors import SaveFailed, UserError
from aquila.train.run import prepare_run


class Record(Callback):
    def __init__(self):
        self.losses = {}
        self.batches = {}

    def before_optimizer(self, trainer, info):
        self.batches[trainer.state.step + 1] = info["global_indices"].tolist()

    def on_step(self, trainer, metrics):
        self.losses[metrics.step] = metrics.loss


class CrashAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, metrics):
        if metrics.step == self.step:
            raise RuntimeError("simulated kill")


def test_loss_decreases_and_run_dir_is_complete(make_config):
    rec = Record()
    run = prepare_run(
        make_config("train.max_steps=30", "train.checkpoint_every=10"), callbacks=[rec], quiet=True
    )
    assert run.trainer.fit() == "completed"
    first, last = rec.losses[1], rec.losses[30]
    assert math.log(512) - 0.5 < first < math.log(512) + 0.5
    assert last < first - 0.5
    d = run.run_dir
    assert (d / "config.toml").is_file() and (d / "tokenizer" / "tokenizer.json").is_file()
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 31))
    assert set(lines[-1]["source_loss"]) == {"kjv", "news"}
    assert [s for s, _ in list_checkpoints(d)] == [10, 20, 30]


def test_interrupted_and_resumed_run_matches_uninterrupted(make_config, tmp_path):
    straight = Record()
    prepare_run(make_config(run_dir=tmp_path / "a"), callbacks=[straight], quiet=True).trainer.fit()

    first = Record()
    run = prepare_run(
        make_config(run_dir=tmp_path / "b"), callbacks=[first, CrashAfter(4)], quiet=True
    )
    with pytest.raises(RuntimeError, match="simulated kill"):
        run.trainer.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [3]
    second = Record()
    resumed = prepare_run(resume=tmp_path / "b", callbacks=[second], quiet=True)
    assert resumed.trainer.state.step == 3
    resumed.trainer.fit()
    merged = {**{k: v for k, v in first.losses.items() if k <= 3}, **second.losses}
    assert merged == straight.losses  # bit-identical, step for step
    assert {**first.batches, **second.batches} == straight.batches


def test_gradient_accumulation_matches_full_batch(make_config, tmp_path):
    a, b = Record(), Record()
    prepare_run(make_config(run_dir=tmp_path / "a"), callbacks=[a], quiet=True).trainer.fit()
    prepare_run(
        make_config("train.micro_batch_size=1", run_dir=tmp_path / "b"), callbacks=[b], quiet=True
    ).trainer.fit()
    for step in a.losses:
        assert a.losses[step] == pytest.approx(b.losses[step], rel=1e-5)


def test_batch_ramp_reads_consecutive_samples(make_config):
    rec = Record()
    run = prepare_run(
        make_config(
            "train.batch_size=8",
            "train.ramp_start=2",
            "train.ramp_increment=2",
            "train.ramp_steps=2",
        ),
        callbacks=[rec],
        quiet=True,
    )
    run.trainer.fit()
    sizes = [len(rec.batches[s]) for s in sorted(rec.batches)]
    assert sizes == [2, 2, 4, 4, 6, 6]
    flat = [g for s in sorted(rec.batches) for g in rec.batches[s]]
    assert flat == list(range(24))


def test_disk_full_during_save_keeps_last_checkpoint(make_config, monkeypatch):
    run = prepare_run(make_config(), quiet=True)
    calls = {"n": 0}
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(
        SaveFailed,
        match="step-00000006 was not saved: disk full .*latest checkpoint is still .*step-00000003",
    ):
        run.trainer.fit()
    ckpts = list_checkpoints(run.run_dir)
    assert [s for s, _ in ckpts] == [3]
    assert not [p for p in (run.run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.undo()
    again = prepare_run(resume=run.run_dir, quiet=True)
    assert again.trainer.state.step == 3


def test_interrupt_saves_checkpoint_and_stops(make_config):
    class Interrupt(Callback):
        def on_step(self, trainer, metrics):
            if metrics.step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    run = prepare_run(make_config("train.checkpoint_every=0"), callbacks=[Interrupt()], quiet=True)
    assert run.trainer.fit() == "interrupted"
    assert [s for s, _ in list_checkpoints(run.run_dir)] == [2]


def test_checkpoint_from_other_shape_is_rejected(make_config, tmp_path):
    run = prepare_run(make_config(run_dir=tmp_path / "r"), quiet=True)
    run.trainer.fit()
    text = (tmp_path / "r" / "config.toml").read_text().replace("n_layers = 2", "n_layers = 3")
    (tmp_path / "r" / "config.toml").write_text(text)
    with pytest.raises(UserError, match="another model shape: n_layers=2 \\(config says 3\\)"):
        prepare_run(resume=tmp_path / "r", quiet=True)


def test_cli_errors_exit_2(tmp_path, capsys, shard_dir):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--set", f"data.dir='{empty}'", "--set", "tokenizer='x'"]) == 2
    assert "aquila: error:" in capsys.readouterr().err


def test_cli_trains_and_prints_json(make_config, shard_dir, tiny_tokenizer_dir, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--json",
            "--quiet",
            "--no-report",
            "--run-dir",
            str(tmp_path / "cli"),
            "--set",
            "model.preset='aquila-test'",
            "--set",
            f"data.dir='{shard_dir}'",
            "--set",
            f"tokenizer='{tiny_tokenizer_dir}'",
            "--set",
            "data.seq_len=32",
            "--set",
            "train.batch_size=2",
            "--set",
            "train.max_steps=3",
            "--set",
            "train.tp=2",  # one process: said, then ignored
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "train.tp=2 train.replicate=1 apply to a multi-process run" in captured.err
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["steps"] == 3 and out["tokens"] == 3 * 2 * 32 and out["status"] == "completed"
    assert out["run_dir"] == str(tmp_path / "cli")


@pytest.mark.slow
def test_compiled_training_matches_eager(make_config, tmp_path):
    eager, compiled = Record(), Record()
    prepare_run(make_config(run_dir=tmp_path / "e"), callbacks=[eager], quiet=True).trainer.fit()
    prepare_run(
        make_config("train.compile=true", run_dir=tmp_path / "c"), callbacks=[compiled], quiet=True
    ).trainer.fit()
    for step, loss in eager.losses.items():
        assert compiled.losses[step] == pytest.approx(loss, rel=1e-4)


def test_activation_checkpointing_matches_plain_training(make_config, tmp_path):
    plain, ckpt = Record(), Record()
    prepare_run(make_config(run_dir=tmp_path / "p"), callbacks=[plain], quiet=True).trainer.fit()
    prepare_run(
        make_config("train.activation_checkpointing=true", run_dir=tmp_path / "a"),
        callbacks=[ckpt],
        quiet=True,
    ).trainer.fit()
    for step, loss in plain.losses.items():
        assert ckpt.losses[step] == pytest.approx(loss, rel=1e-5)


def test_moe_model_trains_with_router_losses(make_config):
    rec = Record()
    run = prepare_run(
        make_config("model.preset='aquila-moe-test'", "train.max_steps=12"),
        callbacks=[rec],
        quiet=True,
    )
    run.trainer.fit()
    from aquila.model.moe import expert_utilisation, moe_aux_loss

    assert rec.losses[12] < rec.losses[1] and math.isfinite(rec.losses[12])
    assert float(moe_aux_loss(run.trainer.model)) > 0
    used = expert_utilisation(run.trainer.model)
    assert len(used) == run.trainer.model.cfg.n_layers and all(sum(layer) > 0 for layer in used)


def test_grad_clip_zero_turns_clipping_off(make_config, tmp_path):
    """optim.grad_clip = 0 trains as without any clipping (the norm is still measured); it
    used to scale every gradient by zero."""
    off, loose, tight = Record(), Record(), Record()
    for rec, clip, name in ((off, 0, "off"), (loose, 1e9, "loose"), (tight, 1e-3, "tight")):
        prepare_run(
            make_config(f"optim.grad_clip={clip}", "train.max_steps=3", run_dir=tmp_path / name),
            callbacks=[rec],
            quiet=True,
        ).trainer.fit()
    assert off.losses == loose.losses
    assert off.losses[3] < off.losses[1] and off.losses[3] != tight.losses[3]
