"""Several gloo processes (FSDP2, tensor parallel, HSDP) train exactly like one process on the same
global batch, and their checkpoints resume anywhere."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from aquila.engine.checkpoint import list_checkpoints
from aquila.engine.dcp import is_sharded
from aquila.model.transformer import AquilaModel


def _helpers():
    path = Path(__file__).with_name("test_resume_anywhere.py")
    spec = importlib.util.spec_from_file_location("resume_anywhere_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _losses(path: Path) -> dict[int, float]:
    return {s: v for s, v, _ in (json.loads(x) for x in path.read_text().splitlines())}


class Twin:
    """A one-process run ``a`` trained to its first checkpoint and a copy ``b`` of it: ``a``
    goes on in this process (the reference), ``b`` under torchrun or another layout."""

    def __init__(self, make_config, tmp_path: Path, first: int, *overrides: str):
        from aquila.train.run import prepare_run

        self.tmp = tmp_path
        self.h = _helpers()
        self.driver, self.drv = self.h.load_driver(tmp_path)
        self.a, self.b = tmp_path / "a", tmp_path / "b"
        cfg = make_config(
            f"train.max_steps={first}",
            f"train.checkpoint_every={first}",
            *overrides,
            run_dir=self.a,
        )
        prepare_run(cfg, quiet=True).trainer.fit()
        shutil.copytree(self.a, self.b)

    def resume(self, run_dir: Path, steps: int, log: str) -> dict[int, float]:
        """Continue ``run_dir`` in this process to ``steps``; its losses by step."""
        from aquila.train.run import prepare_run

        run = prepare_run(
            resume=run_dir,
            overrides=[f"train.max_steps={steps}"],
            quiet=True,
            callbacks=[self.drv.Recorder(self.tmp / f"{log}.jsonl")],
        )
        run.trainer.fit()
        return _losses(self.tmp / f"{log}.loss")

    def torchrun(self, nproc: int, steps: int, *overrides: str) -> dict[int, float]:
        """Continue ``b`` on ``nproc`` processes to ``steps``; its losses by step."""
        log = self.tmp / "n.jsonl"
        self.h.torchrun(nproc, str(self.driver), str(self.b), str(log), str(steps), *overrides)
        return _losses(log.with_suffix(".loss"))

    def batches(self) -> dict[int, dict[int, dict]]:
        return self.h.read_log(self.tmp / "n.jsonl")


def _same(reference: dict[int, float], got: dict[int, float], steps: list[int]) -> None:
    assert sorted(got) == steps, got
    for step in steps:
        assert got[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (reference, got)


def _same_weights(a: Path, b: Path, step: int) -> None:
    from aquila.model.io import load_model_dir

    w1 = load_model_dir(dict(list_checkpoints(a))[step]).state_dict()
    w2 = load_model_dir(dict(list_checkpoints(b))[step]).state_dict()
    for k in w1:
        assert w2[k].allclose(w1[k], rtol=1e-4, atol=1e-6), (step, k)


@pytest.mark.distributed
def test_two_processes_match_one_process(make_config, tmp_path):
    # Both continue from the same single-process checkpoint (model + Adam state): one process
    # in-process, two under torchrun (the full optimizer state is scattered into FSDP shards).
    t = Twin(make_config, tmp_path, 2)
    l1 = t.resume(t.a, 6, "one")
    _same(l1, t.torchrun(2, 6), [3, 4, 5, 6])
    assert l1[6] < l1[3]  # and it is training
    rows = t.batches()
    for step in (3, 4, 5, 6):  # each rank reads its half of the global batch
        assert rows[step][0]["g"] == list(range((step - 1) * 4, (step - 1) * 4 + 2))
        assert rows[step][1]["g"] == list(range((step - 1) * 4 + 2, step * 4))
    last = dict(list_checkpoints(t.b))[6]
    # Each rank's shards, no gathered copy of the weights.
    assert is_sharded(last) and not (last / "model.safetensors").exists()
    # The 2-process run's weights, read back from its shards, equal the 1-process run's.
    _same_weights(t.a, t.b, 6)


@pytest.mark.distributed
@pytest.mark.parametrize("sync_each", [False, True])
def test_accumulation_under_fsdp_matches_one_process(make_config, tmp_path, sync_each):
    """Micro-batches of 1: gradients reduce-scattered once per step (or after each micro-batch)
    give the same training as one process accumulating the whole batch."""
    sync = f"train.fsdp_sync_each_micro_batch={str(sync_each).lower()}"
    t = Twin(make_config, tmp_path, 1, "train.micro_batch_size=1", sync)
    _same(t.resume(t.a, 4, "one"), t.torchrun(2, 4), [2, 3, 4])


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("nproc", "tp", "replicate"),
    [(2, 2, 1), (4, 2, 1), (4, 1, 2)],
    ids=["tp2", "fsdp2xtp2", "hsdp2x2"],
)
def test_parallel_layouts_match_one_process(make_config, tmp_path, nproc, tp, replicate):
    """Tensor parallel alone, FSDP2 x TP on a 2-D mesh and HSDP (replicate x shard) train like
    one process; the run then resumes on one process from the layout's sharded checkpoint."""
    t = Twin(make_config, tmp_path, 2)
    l1 = t.resume(t.a, 6, "one")
    _same(l1, t.torchrun(nproc, 4, f"train.tp={tp}", f"train.replicate={replicate}"), [3, 4])
    rows = t.batches()
    share = 4 // (nproc // tp)
    for step in (3, 4):  # the tp ranks of a group read the same share of the global batch
        for rank in range(nproc):
            start = (step - 1) * 4 + rank // tp * share
            assert rows[step][rank]["g"] == list(range(start, start + share)), (step, rank)
    assert is_sharded(dict(list_checkpoints(t.b))[4])
    # The layout's checkpoint resumes on one process and continues the same run.
    _same(l1, t.resume(t.b, 6, "res"), [5, 6])
    assert l1[6] < l1[3]


@pytest.mark.distributed
@pytest.mark.parametrize("tp", [1, 2], ids=["fsdp2", "tp2"])
def test_chunked_loss_on_two_processes_matches_full_logits(make_config, tmp_path, tp):
    """The chunked cross-entropy under FSDP2 (the head gathered for token_losses) and under TP
    trains like one process holding the full logits: same losses, same weights."""
    t = Twin(make_config, tmp_path, 2, "train.loss='full'")
    l1 = t.resume(t.a, 4, "one")
    got = t.torchrun(2, 4, "train.loss='chunked'", "train.loss_chunk_tokens=24", f"train.tp={tp}")
    _same(l1, got, [3, 4])
    _same_weights(t.a, t.b, 4)


@pytest.mark.distributed
@pytest.mark.parametrize("tp", [1, 2], ids=["fsdp2", "tp2"])
def test_background_checkpoints_on_two_processes(make_config, tmp_path, tp):
    """train.async_checkpoint on 2 processes (FSDP2, or TP whose embedding and norms are plain
    tensors): training goes on while DCP writes the shards; each checkpoint holds its own step's
    weights, and the run resumes from it on one process."""
    t = Twin(make_config, tmp_path, 2)
    l1 = t.resume(t.a, 8, "one")
    _same(l1, t.torchrun(2, 6, "train.async_checkpoint=true", f"train.tp={tp}"), [3, 4, 5, 6])
    for step in (4, 6):  # step 4 was written while steps 5 and 6 trained
        assert is_sharded(dict(list_checkpoints(t.b))[step])
        _same_weights(t.a, t.b, step)
    assert not list((t.b / "checkpoints").glob(".tmp*"))
    _same(l1, t.resume(t.b, 8, "res"), [7, 8])


def _max_weight_diff(a: Path, b: Path, step: int) -> float:
    from aquila.model.io import load_model_dir

    w1 = load_model_dir(dict(list_checkpoints(a))[step]).state_dict()
    w2 = load_model_dir(dict(list_checkpoints(b))[step]).state_dict()
    return max(float((w1[k] - w2[k]).abs().max()) for k in w1)


# A constant lr: the resumed steps train at the peak (a cosine over the first run's 2 steps
# would leave them at the floor, where any update passes). Newton-Schulz in float32: in bfloat16
# the reductions' last-bit differences flip roundings (measured: 4e-4 after 2 steps).
MUON = (
    "optim.name='muon'",
    "optim.lr=1e-2",
    "optim.warmup_steps=0",
    "optim.schedule='constant'",
    "optim.muon_ns_dtype='float32'",
)


@pytest.mark.distributed
@pytest.mark.parametrize("tp", [1, 2], ids=["fsdp2", "tp2"])
def test_muon_on_two_processes_matches_one_process(make_config, tmp_path, tp):
    """Muon under FSDP2 (matrices sharded by rows) and tensor parallelism (column- and row-wise
    shards): each matrix is gathered whole for Newton-Schulz and its update cut back to the
    shard, so two processes train like one; the one-process momentum scatters into the shards,
    and the layout's sharded checkpoint (Muon and AdamW state) resumes on one process."""
    t = Twin(make_config, tmp_path, 2, *MUON)
    l1 = t.resume(t.a, 6, "one")
    _same(l1, t.torchrun(2, 4, f"train.tp={tp}"), [3, 4])
    assert _max_weight_diff(t.a, t.b, 4) < 1e-5
    assert l1[6] < l1[3]
    _same(l1, t.resume(t.b, 6, "res"), [5, 6])
    assert _max_weight_diff(t.a, t.b, 6) < 1e-4  # two more steps for the differences to grow


@pytest.mark.distributed
def test_aquila_train_under_torchrun_speaks_once(make_config, tmp_path):
    """`aquila train` on two processes: rank 0 alone prints, and no FSDP warning about the
    loss view (the trainer never changes it in place) reaches the user."""
    import os
    import sys

    cfg = make_config("train.max_steps=2", "train.checkpoint_every=0", run_dir=tmp_path / "r")
    cfg.save(tmp_path / "cfg.toml")
    aquila = os.path.join(os.path.dirname(sys.executable), "aquila")
    res = _helpers().torchrun(2, aquila, "train", "--config", str(tmp_path / "cfg.toml"))
    assert res.stdout.count("model: aquila-test") == 1, res.stdout
    assert res.stdout.count("completed at step 2") == 1, res.stdout
    assert "view tensor" not in res.stderr
    assert [s for s, _ in list_checkpoints(tmp_path / "r")] == [2]


def test_layout_must_divide_the_world(make_config, tmp_path):
    from aquila.engine.distributed import DistInfo
    from aquila.errors import UserError
    from aquila.train.run import parallel_plan

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
    with pytest.raises(UserError, match="train.tp = 0: must be an integer >= 1"):
        parallel_plan(make_config("train.tp=0"), DistInfo(rank=0, world=2))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_sharded_checkpoint_with_optimizer_state_per_group_still_loads(make_config, tmp_path):
    """Sharded checkpoints written before the optimizer state was keyed by parameter name (one
    entry per parameter group) resume as before."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from aquila.engine.dcp import DCP_DIR, _flat_optimizer
    from aquila.train.run import prepare_run

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
    from aquila.engine.distributed import meta_shard_check
    from aquila.engine.plan import memory_plan
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
    from aquila.engine.plan import memory_plan
    from aquila.model.config import get_preset

    assert main(["plan", "aquila2-70b", "--gpus", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["fits"] and out["shard"] == 256
    assert main(["plan", "aquila2-70b", "--gpus", "8", "--json"]) == 1
    assert main(["plan", "aquila2-70b", "--gpus", "256", "--tp", "3"]) == 2
    assert "not divisible" in capsys.readouterr().err
    # On CPU: fp32 throughout and the process baseline, measured; shapes changed with --set.
    shape = ["--set", "model.hidden_size=128", "--set", "model.n_layers=3"]
    assert main(["plan", "aquila-test", "--procs", "2", "--device", "cpu", *shape, "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cpu["device"] == "cpu" and cpu["gib"]["baseline"] > 0.05
    assert (
        cpu["params"]
        == AquilaModel(
            get_preset("aquila-test", hidden_size=128, n_layers=3), device="meta"
        ).num_params()
    )
    gpu = memory_plan(get_preset("aquila-test", hidden_size=128, n_layers=3), 2)
    assert cpu["gib"]["gathered_blocks"] == pytest.approx(2 * gpu["gib"]["gathered_blocks"])
    for bad, message in (
        (["--set", "train.max_steps=3"], "only model.KEY=VALUE"),
        (["--set", "model.bogus=3"], "unknown config key model.bogus"),
        (["--gpu-mem", "-1"], "--gpu-mem must be > 0"),
    ):
        assert main(["plan", "aquila-test", "--procs", "1", "--device", "cpu", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
