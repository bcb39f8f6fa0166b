"""Two gloo processes with FSDP2 train exactly like one process on the same global batch."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from aquila.engine.checkpoint import list_checkpoints
from aquila.engine.dcp import is_sharded


def _helpers():
    path = Path(__file__).with_name("test_resume_anywhere.py")
    spec = importlib.util.spec_from_file_location("resume_anywhere_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _losses(path: Path) -> dict[int, float]:
    return {s: v for s, v, _ in (json.loads(x) for x in path.read_text().splitlines())}


@pytest.mark.distributed
def test_two_processes_match_one_process(make_config, tmp_path):
    h = _helpers()
    driver_path, drv = h.load_driver(tmp_path)
    from aquila.engine.run import prepare_run

    a = tmp_path / "a"
    cfg = make_config("train.max_steps=2", "train.checkpoint_every=2", run_dir=a)
    prepare_run(cfg, quiet=True).trainer.fit()
    b = tmp_path / "b"
    shutil.copytree(a, b)

    # Both continue from the same single-process checkpoint (model + Adam state): one process
    # in-process, two under torchrun (the full optimizer state is scattered into FSDP shards).
    one = prepare_run(
        resume=a,
        overrides=["train.max_steps=6"],
        quiet=True,
        callbacks=[drv.Recorder(tmp_path / "one.jsonl")],
    )
    one.trainer.fit()
    h.torchrun(2, str(driver_path), str(b), str(tmp_path / "two.jsonl"), "6")

    l1, l2 = _losses(tmp_path / "one.loss"), _losses(tmp_path / "two.loss")
    assert sorted(l1) == sorted(l2) == [3, 4, 5, 6]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5, abs=1e-6), (l1, l2)
    assert l1[6] < l1[3]  # and it is training
    rows = h.read_log(tmp_path / "two.jsonl")
    for step in (3, 4, 5, 6):  # each rank reads its half of the global batch
        assert rows[step][0]["g"] == list(range((step - 1) * 4, (step - 1) * 4 + 2))
        assert rows[step][1]["g"] == list(range((step - 1) * 4 + 2, step * 4))
    last = dict(list_checkpoints(b))[6]
    assert is_sharded(last) and (last / "model.safetensors").is_file()
    # The consolidated weights of the 2-process run equal the 1-process run's.
    from aquila.model.io import load_model_dir

    w1 = load_model_dir(dict(list_checkpoints(a))[6]).state_dict()
    w2 = load_model_dir(last).state_dict()
    for k in w1:
        assert w2[k].allclose(w1[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.distributed
@pytest.mark.parametrize("sync_each", [False, True])
def test_accumulation_under_fsdp_matches_one_process(make_config, tmp_path, sync_each):
    """Micro-batches of 1: gradients reduce-scattered once per step (or after each micro-batch)
    give the same training as one process accumulating the whole batch."""
    h = _helpers()
    driver_path, drv = h.load_driver(tmp_path)
    from aquila.engine.run import prepare_run

    a = tmp_path / "a"
    cfg = make_config(
        "train.max_steps=1",
        "train.checkpoint_every=1",
        "train.micro_batch_size=1",
        f"train.fsdp_sync_each_micro_batch={str(sync_each).lower()}",
        run_dir=a,
    )
    prepare_run(cfg, quiet=True).trainer.fit()
    b = tmp_path / "b"
    shutil.copytree(a, b)
    one = prepare_run(
        resume=a,
        overrides=["train.max_steps=4"],
        quiet=True,
        callbacks=[drv.Recorder(tmp_path / "one.jsonl")],
    )
    one.trainer.fit()
    h.torchrun(2, str(driver_path), str(b), str(tmp_path / "two.jsonl"), "4")
    l1, l2 = _losses(tmp_path / "one.loss"), _losses(tmp_path / "two.loss")
    assert sorted(l1) == sorted(l2) == [2, 3, 4]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5, abs=1e-6), (l1, l2)


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("nproc", "tp", "replicate"),
    [(2, 2, 1), (4, 2, 1), (4, 1, 2)],
    ids=["tp2", "fsdp2xtp2", "hsdp2x2"],
)
def test_parallel_layouts_match_one_process(make_config, tmp_path, nproc, tp, replicate):
    """Tensor parallel alone, FSDP2 x TP on a 2-D mesh and HSDP (replicate x shard) train like
    one process; the run then resumes on one process from the layout's sharded checkpoint."""
    h = _helpers()
    driver_path, drv = h.load_driver(tmp_path)
    from aquila.engine.run import prepare_run

    a = tmp_path / "a"
    cfg = make_config("train.max_steps=2", "train.checkpoint_every=2", run_dir=a)
    prepare_run(cfg, quiet=True).trainer.fit()
    b = tmp_path / "b"
    shutil.copytree(a, b)
    one = prepare_run(
        resume=a,
        overrides=["train.max_steps=6"],
        quiet=True,
        callbacks=[drv.Recorder(tmp_path / "one.jsonl")],
    )
    one.trainer.fit()
    layout = [f"train.tp={tp}", f"train.replicate={replicate}"]
    h.torchrun(nproc, str(driver_path), str(b), str(tmp_path / "n.jsonl"), "4", *layout)
    l1, ln = _losses(tmp_path / "one.loss"), _losses(tmp_path / "n.loss")
    assert sorted(ln) == [3, 4]
    for step in ln:
        assert ln[step] == pytest.approx(l1[step], rel=1e-5, abs=1e-6), (l1, ln)
    rows = h.read_log(tmp_path / "n.jsonl")
    dp = nproc // tp
    for step in (3, 4):  # the tp ranks of a group read the same share of the global batch
        first = (step - 1) * 4
        for rank in range(nproc):
            share = 4 // dp
            start = first + rank // tp * share
            assert rows[step][rank]["g"] == list(range(start, start + share)), (step, rank)
    last = dict(list_checkpoints(b))[4]
    assert is_sharded(last)
    # The layout's checkpoint resumes on one process and continues the same run.
    two = prepare_run(
        resume=b,
        overrides=["train.max_steps=6"],
        quiet=True,
        callbacks=[drv.Recorder(tmp_path / "res.jsonl")],
    )
    two.trainer.fit()
    l2 = _losses(tmp_path / "res.loss")
    assert sorted(l2) == [5, 6]
    for step in l2:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5, abs=1e-6), (l1, l2)
    assert l1[6] < l1[3]


@pytest.mark.distributed
def test_background_checkpoints_under_fsdp(make_config, tmp_path):
    """train.async_checkpoint on 2 processes: training goes on while DCP writes the shards; each
    checkpoint holds its own step's weights, and the run resumes from it on one process."""
    h = _helpers()
    driver_path, drv = h.load_driver(tmp_path)
    from aquila.engine.run import prepare_run
    from aquila.model.io import load_model_dir

    a = tmp_path / "a"
    cfg = make_config("train.max_steps=2", "train.checkpoint_every=2", run_dir=a)
    prepare_run(cfg, quiet=True).trainer.fit()
    b = tmp_path / "b"
    shutil.copytree(a, b)
    one = prepare_run(
        resume=a,
        overrides=["train.max_steps=8"],
        quiet=True,
        callbacks=[drv.Recorder(tmp_path / "one.jsonl")],
    )
    one.trainer.fit()
    h.torchrun(
        2, str(driver_path), str(b), str(tmp_path / "n.jsonl"), "6", "train.async_checkpoint=true"
    )
    l1, ln = _losses(tmp_path / "one.loss"), _losses(tmp_path / "n.loss")
    assert sorted(ln) == [3, 4, 5, 6]
    for step in ln:
        assert ln[step] == pytest.approx(l1[step], rel=1e-5, abs=1e-6), (l1, ln)
    ours, theirs = dict(list_checkpoints(b)), dict(list_checkpoints(a))
    for step in (4, 6):  # step 4 was written while steps 5 and 6 trained
        assert is_sharded(ours[step])
        w1 = load_model_dir(theirs[step]).state_dict()
        w2 = load_model_dir(ours[step]).state_dict()
        for k in w1:
            assert w2[k].allclose(w1[k], rtol=1e-4, atol=1e-6), (step, k)
    assert not list((b / "checkpoints").glob(".tmp*"))
    again = prepare_run(
        resume=b,
        overrides=["train.max_steps=8"],
        quiet=True,
        callbacks=[drv.Recorder(tmp_path / "res.jsonl")],
    )
    again.trainer.fit()
    l2 = _losses(tmp_path / "res.loss")
    for step in (7, 8):
        assert l2[step] == pytest.approx(l1[step], rel=1e-5, abs=1e-6), (l1, l2)


def test_layout_must_divide_the_world(make_config, tmp_path):
    from aquila.engine.run import parallel_plan
    from aquila.engine.trainer import DistInfo
    from aquila.errors import UserError

    cfg = make_config("train.tp=2", "train.replicate=2")
    with pytest.raises(UserError, match="train.tp 2 x train.replicate 2 does not divide the 6"):
        parallel_plan(cfg, DistInfo(rank=0, world=6))
    dist = DistInfo(rank=5, world=8)
    plan = parallel_plan(cfg, dist)
    assert (plan.tp, plan.replicate, plan.shard) == (2, 2, 2)
    assert (dist.dp_world, dist.dp_rank) == (4, 2)
    # One process ignores the layout: a run saved with one resumes anywhere.
    single = DistInfo()
    assert parallel_plan(cfg, single).world == 1 and single.tp == 1
    with pytest.raises(UserError, match="must be >= 1"):
        parallel_plan(make_config("train.tp=0"), DistInfo(rank=0, world=2))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_sharded_checkpoint_with_optimizer_state_per_group_still_loads(make_config, tmp_path):
    """Sharded checkpoints written before the optimizer state was keyed by parameter name (one
    entry per parameter group) resume as before."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from aquila.engine.dcp import DCP_DIR, _flat_optimizer
    from aquila.engine.run import prepare_run

    cfg = make_config("train.max_steps=2", "train.checkpoint_every=2", run_dir=tmp_path / "r")
    run = prepare_run(cfg, quiet=True)
    run.trainer.fit()
    ckpt = dict(list_checkpoints(tmp_path / "r"))[2]
    msd, osd = get_state_dict(run.trainer.model, run.trainer.optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(ckpt / DCP_DIR))
    assert is_sharded(ckpt) and not _flat_optimizer(ckpt)
    again = prepare_run(resume=tmp_path / "r", quiet=True)
    names = dict(run.trainer.model.named_parameters())
    for name, p in again.trainer.model.named_parameters():
        before, after = run.trainer.optimizer.state[names[name]], again.trainer.optimizer.state[p]
        assert torch.equal(before["exp_avg_sq"], after["exp_avg_sq"]), name
        assert float(after["step"]) == 2.0


def test_memory_plan_70b_fits_on_256_gpus():
    from aquila.engine.distributed import memory_plan, meta_shard_check
    from aquila.model.config import get_preset

    cfg = get_preset("aquila2-70b")
    plan = memory_plan(cfg, 256)
    assert 69e9 < plan["params"] < 71e9
    # 16 bytes per parameter sharded 256 ways is ~4.1 GiB; the total must fit in 80 GB.
    assert plan["gib"]["weights_grads_adam"] == pytest.approx(70.1e9 * 16 / 256 / 2**30, rel=0.02)
    assert plan["gib"]["total"] < 80 * 0.9
    assert memory_plan(cfg, 8)["gib"]["total"] > 80  # 70B does not fit on one node
    no_ac = memory_plan(cfg, 256, activation_checkpointing=False)
    assert no_ac["gib"]["activations"] > 5 * plan["gib"]["activations"]
    tp = memory_plan(cfg, 256, tp=8)
    assert tp["gib"]["activations"] < plan["gib"]["activations"]
    check = meta_shard_check(get_preset("aquila2-34b"))
    assert check["on_meta"] and check["dtensor_params"] == check["params"]
    assert check["wrapped_blocks"] == 60


def test_plan_cli(capsys):
    from aquila.cli import main

    assert main(["plan", "aquila2-70b", "--gpus", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["fits"] and out["shard"] == 256
    assert main(["plan", "aquila2-70b", "--gpus", "8", "--json"]) == 1
    assert main(["plan", "aquila2-70b", "--gpus", "256", "--tp", "3"]) == 2
    assert "not divisible" in capsys.readouterr().err
