"""No rank holds the whole model: built on meta, laid out, each rank allocating and initialising
its own shards, from weights that depend on the seed alone; loads and checkpoints stay sharded.

The memory figures are the runs' own (``aquila train --json``: max RSS per rank on CPU), the
plan is ``aquila plan --device cpu`` in a fresh process, as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from aquila.engine.callbacks import Callback
from aquila.engine.checkpoint import list_checkpoints
from aquila.engine.dcp import is_sharded

AQUILA = os.path.join(os.path.dirname(sys.executable), "aquila")
# ~69M parameters (277 MB of fp32): a whole model is far more than any transient of the build
# or the few MB a process group costs a rank.
SMALL = [
    "model.hidden_size=1024",
    "model.n_layers=6",
    "model.n_heads=16",
    "model.n_kv_heads=4",
    "model.ffn_size=2816",
]
# The ~400M-parameter shape of docs/performance.md (~1.5 GB of fp32 weights, ~6 GB per process
# with gradients and Adam).
LARGE = [
    "model.hidden_size=2048",
    "model.n_layers=8",
    "model.n_heads=16",
    "model.n_kv_heads=4",
    "model.ffn_size=5632",
]


def _helpers():
    path = Path(__file__).with_name("test_resume_anywhere.py")
    spec = importlib.util.spec_from_file_location("resume_anywhere_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _losses(run_dir: Path) -> dict[int, float]:
    rows = (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in rows}


class StopAfterFirst(Callback):
    """Record the first step's loss and end the run there, without a checkpoint."""

    def __init__(self) -> None:
        self.loss: float | None = None

    def on_step(self, trainer, metrics) -> None:
        self.loss = float(metrics.loss)
        trainer.request_stop("first step", checkpoint=False)


def _first_loss(cfg) -> float:
    from aquila.train.run import prepare_run

    first = StopAfterFirst()
    prepare_run(cfg, quiet=True, callbacks=[first], monitor=False).trainer.fit()
    return first.loss


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("shape", "seq_len"),
    [(SMALL, 32), pytest.param(LARGE, 128, marks=pytest.mark.slow)],
    ids=["69m", "400m"],
)
def test_two_ranks_hold_half_the_model_train_alike_and_match_the_plan(
    make_config, tmp_path, shape, seq_len
):
    """`aquila train` on 1 and on 2 processes: after setup each of the two ranks holds at least
    35% of the fp32 model less than the one process (with the whole model built on a rank, it
    holds more), the first step's loss is the same from the seed alone, and `aquila plan`'s
    per-rank estimate is within 25% of each run's measured peak."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    summaries = {}
    for n in (1, 2):
        cfg = make_config(
            *shape,
            f"data.seq_len={seq_len}",
            "train.batch_size=2",
            "train.max_steps=2",
            "train.checkpoint_every=0",
            run_dir=tmp_path / f"r{n}",
        )
        cfg.save(tmp_path / f"c{n}.toml")
        args = ["train", "--config", str(tmp_path / f"c{n}.toml"), "--json", "--no-report"]
        if n == 1:
            res = subprocess.run(
                [AQUILA, *args], capture_output=True, text=True, env=env, timeout=600
            )
            assert res.returncode == 0, res.stderr[-3000:]
        else:
            res = _helpers().torchrun(2, AQUILA, *args, timeout=600)
        summaries[n] = _last_json(res.stdout)
    params = summaries[1]["params"]
    one, two = summaries[1]["memory"], summaries[2]["memory"]
    model_bytes = 4 * params
    assert two["after_setup_bytes"] <= one["after_setup_bytes"] - 0.35 * model_bytes, (one, two)
    l1, l2 = _losses(tmp_path / "r1"), _losses(tmp_path / "r2")
    assert l2[1] == pytest.approx(l1[1], rel=1e-5, abs=1e-6) and l2[2] == pytest.approx(l1[2], 1e-5)
    # The per-rank figures of the 2-process run are in its run database.
    from aquila.engine.rundb import RunDB

    (event,) = RunDB(tmp_path / "r2").events("memory")
    ranks = event["data"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert max(r["peak_bytes"] for r in ranks) == two["peak_bytes"]
    # The plan of both runs, computed in a fresh process (its baseline is measured there).
    overrides = json.dumps(["model.preset='aquila-test'", *shape])
    script = (
        "import json, sys\n"
        "from aquila.engine.config import load_config\n"
        "from aquila.engine.plan import memory_plan\nfrom aquila.engine.plan_commands import process_baseline_bytes\n"
        f"cfg = load_config(None, {overrides}).model\n"
        "base = process_baseline_bytes()\n"
        f"print(json.dumps([memory_plan(cfg, n, seq_len={seq_len}, micro_batch=2 // n, "
        "activation_checkpointing=False, device='cpu', baseline_bytes=base) for n in (1, 2)]))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    for plan, measured in zip(_last_json(res.stdout), (one, two)):
        assert plan["params"] == params
        error = (plan["bytes"] - measured["peak_bytes"]) / measured["peak_bytes"]
        assert abs(error) <= 0.25, (plan["gpus"], error, plan["gib"], measured)


LAYOUTS_DRIVER = textwrap.dedent(
    """
    import json, sys

    from aquila.engine.callbacks import Callback
    from aquila.engine.config import load_config
    from aquila.engine.distributed import shutdown_distributed
    from aquila.train.run import prepare_run


    class StopAfterFirst(Callback):
        def on_step(self, trainer, metrics):
            if trainer.is_main:
                with open(sys.argv[2], "a") as f:
                    f.write(json.dumps([sys.argv[3], metrics.loss]) + "\\n")
            trainer.request_stop("first step", checkpoint=False)


    # A fresh run (no checkpoint, no seed file) per layout, one after the other.
    config, log = sys.argv[1], sys.argv[2]
    for layout in json.loads(sys.argv[4]):
        sys.argv[3] = layout["name"]
        overrides = [f"train.tp={layout['tp']}", f"train.replicate={layout['replicate']}",
                     f"run_dir='{layout['run_dir']}'"]
        cfg = load_config(config, overrides)
        prepare_run(cfg, quiet=True, monitor=False, callbacks=[StopAfterFirst()]).trainer.fit()
    shutdown_distributed()
    """
)


@pytest.mark.distributed
def test_every_layout_starts_from_the_same_weights(make_config, tmp_path):
    """FSDP2 over 4 ranks, HSDP 2 x 2 and FSDP2 x TP 2 x 2 start from the weights one process
    starts from: the first step's loss agrees to 1e-5, with no seed checkpoint."""
    cfg = make_config("train.max_steps=2", "train.checkpoint_every=0", run_dir=tmp_path / "one")
    reference = _first_loss(cfg)
    cfg.save(tmp_path / "cfg.toml")
    driver = tmp_path / "layouts.py"
    driver.write_text(LAYOUTS_DRIVER)
    layouts = [
        {"name": "fsdp4", "tp": 1, "replicate": 1},
        {"name": "hsdp2x2", "tp": 1, "replicate": 2},
        {"name": "fsdp2xtp2", "tp": 2, "replicate": 1},
    ]
    for layout in layouts:
        layout["run_dir"] = str(tmp_path / layout["name"])
    log = tmp_path / "first.jsonl"
    args = [str(driver), str(tmp_path / "cfg.toml"), str(log), "", json.dumps(layouts)]
    _helpers().torchrun(4, *args, timeout=300)
    got = dict(json.loads(x) for x in log.read_text().splitlines())
    assert sorted(got) == sorted(x["name"] for x in layouts)
    for name, loss in got.items():
        assert loss == pytest.approx(reference, rel=1e-5, abs=1e-6), (name, got, reference)
    # Not a constant: another seed starts elsewhere.
    other = make_config("train.max_steps=2", "train.seed=1", run_dir=tmp_path / "other")
    assert abs(_first_loss(other) - reference) > 1e-4


SHARDED_DRIVER = textwrap.dedent(
    """
    import json, sys

    import torch

    from aquila.engine.callbacks import Callback
    from aquila.engine.config import load_config
    from aquila.engine.distributed import shutdown_distributed
    from aquila.train.run import prepare_run

    config, model_dir, sharded_dir, out = sys.argv[1:5]


    class Losses(Callback):
        def __init__(self, name, stop_after=None):
            self.name, self.stop_after = name, stop_after

        def on_step(self, trainer, metrics):
            if trainer.is_main:
                with open(f"{out}/losses.jsonl", "a") as f:
                    f.write(json.dumps([self.name, metrics.step, metrics.loss]) + "\\n")
            if metrics.step == self.stop_after:
                trainer.request_stop("done", checkpoint=False)


    # 1. init_from a model dir into FSDP2; a sharded checkpoint at step 2.
    cfg = load_config(config, [f"train.init_from='{model_dir}'", "train.max_steps=2",
                               "train.checkpoint_every=2", f"run_dir='{out}/a'"])
    prepare_run(cfg, quiet=True, callbacks=[Losses("fsdp")]).trainer.fit()
    # 2. Resumed from those shards into another layout (tensor parallel) for one more step.
    run = prepare_run(resume=f"{out}/a", overrides=["train.max_steps=3", "train.tp=2"],
                      quiet=True, callbacks=[Losses("tp-resumed")])
    run.trainer.fit()
    # The trained weights, gathered here only to compare with the export.
    full = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in run.trainer.model.named_parameters()}
    if run.trainer.is_main:
        torch.save(full, f"{out}/weights.pt")
    # 3. init_from a sharded (multi-file) model dir straight into tensor parallelism.
    cfg = load_config(config, [f"train.init_from='{sharded_dir}'", "train.tp=2",
                               "train.max_steps=2", f"run_dir='{out}/b'"])
    prepare_run(cfg, quiet=True, callbacks=[Losses("tp-init", stop_after=1)]).trainer.fit()
    # 4. init_from a run dir whose latest checkpoint is DCP shards, into FSDP2.
    cfg = load_config(config, [f"train.init_from='{out}/a'", "train.max_steps=2",
                               f"run_dir='{out}/c'"])
    prepare_run(cfg, quiet=True, callbacks=[Losses("dcp-init", stop_after=1)]).trainer.fit()
    shutdown_distributed()
    """
)


@pytest.mark.distributed
def test_init_from_resume_and_export_stay_sharded(make_config, tmp_path, tiny_tokenizer):
    """Two processes: init_from a model dir into FSDP2 and into TP (each rank reads only its
    slices), a resume from FSDP2 shards into TP, and the export of the 2-process checkpoint
    bit-identical to the weights it trained; all step losses equal one process's."""
    from safetensors.torch import load_file

    from aquila.model import AquilaModel, get_preset
    from aquila.model.hf import export_hf
    from aquila.model.hf_llama import hf_name
    from aquila.model.io import (
        export_state_dict,
        plan_shards,
        save_model_dir,
        write_model_config,
        write_shards,
    )

    torch.manual_seed(5)
    source = AquilaModel(get_preset("aquila-test", n_layers=3))
    model_dir = save_model_dir(source, tmp_path / "model", tokenizer=tiny_tokenizer)
    sharded = tmp_path / "model-sharded"
    sharded.mkdir()
    write_model_config(source.cfg, sharded)
    tiny_tokenizer.save(sharded)
    state = export_state_dict(source)
    groups = plan_shards([(k, v.numel() * 4) for k, v in state.items()], 50_000)
    write_shards(sharded, groups, lambda names: {n: state[n] for n in names})
    # The reference: one process from the same weights.
    ref = make_config(f"train.init_from='{model_dir}'", "train.max_steps=3", run_dir=tmp_path / "r")
    from aquila.train.run import prepare_run

    prepare_run(ref, quiet=True, monitor=False).trainer.fit()
    expected = _losses(tmp_path / "r")

    cfg = make_config()
    cfg.save(tmp_path / "cfg.toml")
    out = tmp_path / "out"
    out.mkdir()
    driver = tmp_path / "sharded.py"
    driver.write_text(SHARDED_DRIVER)
    args = [str(driver), str(tmp_path / "cfg.toml"), str(model_dir), str(sharded), str(out)]
    _helpers().torchrun(2, *args, timeout=300)
    rows = [json.loads(x) for x in (out / "losses.jsonl").read_text().splitlines()]
    got = {(name, step): loss for name, step, loss in rows}
    want = {("fsdp", 1): 1, ("fsdp", 2): 2, ("tp-resumed", 3): 3, ("tp-init", 1): 1}
    assert sorted(got) == sorted([*want, ("dcp-init", 1)])
    for key, step in want.items():
        assert got[key] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (key, got, expected)
    # From the two ranks' DCP checkpoint: the loss of its weights, which one process reading the
    # same shards also starts from.
    from aquila.model.io import load_model_dir

    cfg = make_config(f"train.init_from='{out / 'a'}'", "train.max_steps=2", run_dir=tmp_path / "d")
    first = StopAfterFirst()
    run = prepare_run(cfg, quiet=True, monitor=False, callbacks=[first])
    batch = run.data.read(np.arange(4, dtype=np.int64))
    with torch.no_grad():
        direct = load_model_dir(out / "a" / "checkpoints" / "step-00000003")
        direct_loss = float(direct.token_losses(batch.inputs, batch.targets).mean())
    run.trainer.fit()
    assert first.loss == pytest.approx(direct_loss, abs=1e-5)
    assert got[("dcp-init", 1)] == pytest.approx(first.loss, rel=1e-5, abs=1e-6)

    ckpts = dict(list_checkpoints(out / "a"))
    assert sorted(ckpts) == [2, 3]
    for path in ckpts.values():  # shards and the training state, no gathered weights
        assert is_sharded(path) and not (path / "model.safetensors").exists()
    # The weight trajectory of both layouts, reduced across the ranks' shards as each save
    # started, equals the statistics of the saved shards read back tensor by tensor.
    from aquila.monitor import store
    from aquila.monitor.trajectory import checkpoint_curves

    rows = store.trajectory(store.open_db(out / "a"))
    assert {r["step"] for r in rows} == {2, 3}
    for step, path in ckpts.items():
        curves = checkpoint_curves(path)
        assert len(curves) == 9
        for r in (r for r in rows if r["step"] == step):
            assert r["curve"] == pytest.approx(curves[r["ptype"]], rel=1e-6), (step, r["ptype"])
    # Exported from the DCP shards, bit for bit the weights the two ranks trained.
    summary = export_hf(out / "a", tmp_path / "hf", max_shard_size="40KB")
    assert len(summary["files"]) > 1
    trained = torch.load(out / "weights.pt")
    exported = {}
    for f in summary["files"]:
        exported.update(load_file(str(tmp_path / "hf" / f)))
    assert set(exported) == {hf_name(n) for n in trained}
    for name, t in trained.items():
        assert torch.equal(exported[hf_name(name)], t), name


def test_every_tool_reads_a_multi_process_checkpoint(make_config, tmp_path, capsys):
    """A run whose latest checkpoint holds DCP shards and no model.safetensors (what a
    multi-process run writes): info, generate, export, grow, upcycle and quantize read it
    through the one loader, and get the weights it holds."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    from aquila.cli import main
    from aquila.model.io import load_model_dir
    from aquila.train.run import prepare_run

    cfg = make_config("train.max_steps=2", "train.checkpoint_every=2", run_dir=tmp_path / "r")
    prepare_run(cfg, quiet=True, monitor=False).trainer.fit()
    ckpt = dict(list_checkpoints(tmp_path / "r"))[2]
    state = load_file(str(ckpt / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": state}, checkpoint_id=str(ckpt / "dcp"))
    (ckpt / "model.safetensors").unlink()
    run = str(tmp_path / "r")
    loaded = load_model_dir(ckpt)
    for name, t in state.items():
        assert torch.equal(loaded.state_dict()[name], t), name

    def ok(*argv: str) -> dict:
        assert main([*argv, "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert ok("model", "info", run)["params"] == loaded.num_params()
    assert ok("generate", run, "--prompt", "In the", "--greedy", "--max-new-tokens", "4")["tokens"]
    assert ok("export", run, "--out", str(tmp_path / "hf"))["params"] == loaded.num_params()
    grown = ok("grow", run, "--to", "layers=3", "--method", "fpi", "--out", str(tmp_path / "g"))
    assert grown["config"]["n_layers"] == 3
    moe = ok("upcycle", run, "--experts", "2", "--top-k", "1", "--out", str(tmp_path / "m"))
    assert moe["config"]["n_experts"] == 2
    q = ok("quantize", run, "--method", "rtn", "--group-size", "32", "--out", str(tmp_path / "q"))
    assert q["disk_bytes"] < q["source_disk_bytes"]
