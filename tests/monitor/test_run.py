"""The monitor attached to real training runs of the aquila-test model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aquila.monitor import MonitorOptions, monitor_callbacks, store
from aquila.monitor.evaluator import EvalTrigger
from aquila.monitor.policies import AnomalyMonitor
from aquila.train.run import prepare_run


def _opts(**kw) -> MonitorOptions:
    raw = {"eval": {"enabled": False}, **kw}
    return MonitorOptions.from_any(raw)


def test_metrics_trajectory_and_mixture_reach_the_run_db(make_config):
    cfg = make_config("train.max_steps=8", "train.checkpoint_every=4", "train.log_every=2")
    run = prepare_run(cfg, callbacks=monitor_callbacks(_opts()), quiet=True, monitor=False)
    assert run.trainer.fit() == "completed"
    db = store.open_db(run.run_dir)
    rows = store.latest_metrics(db)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    last = rows[-1]
    for key in ("loss", "grad_norm", "param_norm", "lr", "tokens_per_s", "data_wait_s"):
        assert isinstance(last[key], float) and math.isfinite(last[key]), key
    assert set(last["source_loss"]) == {"kjv", "news"}
    expected_norm = torch.linalg.vector_norm(
        torch.cat([p.detach().flatten() for p in run.trainer.model.parameters()])
    )
    assert last["param_norm"] == pytest.approx(float(expected_norm), rel=1e-4)
    traj = store.trajectory(db)
    steps = sorted({r["step"] for r in traj})
    assert steps == [4, 8]
    ptypes = {r["ptype"] for r in traj}
    assert ptypes == {
        "q",
        "k",
        "v",
        "o",
        "gate",
        "up",
        "down",
        "input_layernorm",
        "post_attention_layernorm",
    }
    second = [r for r in traj if r["step"] == 8]
    assert all(r["prev_step"] == 4 and r["distance"] > 0 for r in second)
    assert all(len(r["curve"]) == 2 for r in traj)  # two layers
    mix = store.mixtures(db)
    assert mix[0]["label"] == "mixture 1" and set(mix[0]["weights"]) == {"kjv", "news"}
    kinds = [e["kind"] for e in db.events()]
    assert kinds[0] == "start" and kinds[-1] == "end"


class Corrupt:
    """Wraps the run's data: the planted global indices read uniform random tokens."""

    def __init__(self, data, bad: set[int], vocab: int):
        self._data, self.bad, self.vocab = data, bad, vocab

    def __getattr__(self, name):
        return getattr(self._data, name)

    def read(self, g):
        batch = self._data.read(g)
        rows = [i for i, x in enumerate(np.asarray(g)) if int(x) in self.bad]
        if rows:
            gen = torch.Generator().manual_seed(int(g[0]))
            tokens = batch.tokens.clone()
            tokens[rows] = torch.randint(
                self.vocab - 8, self.vocab - 1, (len(rows), tokens.shape[1]), generator=gen
            )
            batch.tokens = tokens
        return batch


SPIKE_OPTS = {
    "eval": {"enabled": False},
    "spike": {
        "policy": "rewind",
        "window": 16,
        "sigma": 6.0,
        "min_history": 8,
        "watch_grad_norm": False,
    },
    "plateau": {"enabled": False},
    "divergence": {"enabled": False},
}


def _spike_run(make_config, policy: str, tmp_path, log_every: int = 1):
    cfg = make_config(
        "train.max_steps=40",
        "train.checkpoint_every=10",
        f"train.log_every={log_every}",
        "train.batch_size=4",
        run_dir=tmp_path / policy,
    )
    opts = _opts(**{**SPIKE_OPTS, "spike": {**SPIKE_OPTS["spike"], "policy": policy}})
    monitor = AnomalyMonitor(opts)
    run = prepare_run(
        cfg, callbacks=[*monitor_callbacks(opts)[:1], monitor], quiet=True, monitor=False
    )
    bad_step = 30
    bad = set(range((bad_step - 1) * 4, bad_step * 4))  # the whole batch of step 25
    run.trainer.data = Corrupt(run.trainer.data, bad, 512)
    return run, monitor, bad_step, bad


@pytest.mark.parametrize("policy", ["skip", "rewind", "lower-lr"])
def test_planted_corrupt_batch_is_caught_and_handled(make_config, tmp_path, policy):
    run, monitor, bad_step, bad = _spike_run(make_config, policy, tmp_path, log_every=5)
    assert run.trainer.fit() == "completed"
    spikes = [f for f in monitor.findings if f["kind"] == "spike"]
    assert spikes and spikes[0]["step"] == bad_step, monitor.findings
    assert spikes[0]["action"] == policy
    assert set(spikes[0]["global_indices"]) == bad
    assert spikes[0]["documents"] and spikes[0]["documents"][0][0][0] in {"kjv", "news"}
    db = store.open_db(run.run_dir)
    events = db.events("spike")
    assert events[0]["step"] == bad_step and events[0]["data"]["action"] == policy
    assert events[0]["data"]["evidence"]["loss"]["sigmas"] > 6
    losses = [r["loss"] for r in store.latest_metrics(db)]
    assert math.isfinite(losses[-1]) and losses[-1] < math.log(512)
    kinds = [h["kind"] for h in run.trainer.history]
    if policy == "rewind":
        rewind = next(h for h in run.trainer.history if h["kind"] == "rewind")
        assert rewind["to_step"] == 20 and rewind["skip"] == [min(bad), max(bad) + 1]
        assert "skip-samples" in kinds
        assert run.trainer.state.step == 40
        # The corrupt samples were never trained on again: the run read past them.
        assert run.trainer.state.samples == 40 * 4 + 4
    if policy == "lower-lr":
        assert run.trainer.schedule.scale == pytest.approx(0.5)
        assert "lower-lr" in kinds


# Under torchrun: the spike run of _spike_run (rewind policy) on two processes.
REWIND_DRIVER = """
import importlib.util, json, sys
from aquila.engine.config import load_config
from aquila.engine.distributed import shutdown_distributed
from aquila.train.run import prepare_run
from aquila.monitor import MonitorOptions
from aquila.monitor.policies import AnomalyMonitor

config, tests, out = sys.argv[1:]
spec = importlib.util.spec_from_file_location("monitor_test_run", tests)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
opts = MonitorOptions.from_any(mod.SPIKE_OPTS)
monitor = AnomalyMonitor(opts)
run = prepare_run(load_config(config), callbacks=[monitor], quiet=True, monitor=False)
run.trainer.data = mod.Corrupt(run.trainer.data, set(range(29 * 4, 30 * 4)), 512)
run.trainer.fit()
if run.trainer.is_main:
    t = run.trainer
    result = {"findings": monitor.findings, "history": t.history, "step": t.state.step,
              "samples": t.state.samples}
    with open(out, "w") as f:
        json.dump(result, f, default=str)
shutdown_distributed()
"""


@pytest.mark.distributed
def test_rewind_in_a_two_process_run(make_config, tmp_path):
    """The rewind policy reloads the sharded checkpoint on every rank and skips the batch."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "engine" / "test_resume_anywhere.py"
    spec = importlib.util.spec_from_file_location("resume_anywhere_helpers", path)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    cfg = make_config(
        "train.max_steps=40",
        "train.checkpoint_every=10",
        "train.log_every=5",
        "train.batch_size=4",
        run_dir=tmp_path / "run",
    )
    cfg.save(tmp_path / "cfg.toml")
    (tmp_path / "driver.py").write_text(REWIND_DRIVER)
    out = tmp_path / "out.json"
    helpers.torchrun(2, str(tmp_path / "driver.py"), str(tmp_path / "cfg.toml"), __file__, str(out))
    res = json.loads(out.read_text())
    spikes = [f for f in res["findings"] if f["kind"] == "spike"]
    assert spikes and spikes[0]["step"] == 30 and spikes[0]["action"] == "rewind", res
    rewind = next(h for h in res["history"] if h["kind"] == "rewind")
    assert rewind["to_step"] == 20 and rewind["skip"] == [116, 120]
    assert res["step"] == 40 and res["samples"] == 40 * 4 + 4
    # The run continued from the reloaded shards: its last checkpoint trained past the spike.
    from aquila.engine.checkpoint import list_checkpoints
    from aquila.model.io import load_model_dir

    last = dict(list_checkpoints(tmp_path / "run"))[40]
    assert all(torch.isfinite(t).all() for t in load_model_dir(last).state_dict().values())


def test_nonfinite_loss_rewinds_without_per_step_sync(make_config, tmp_path):
    cfg = make_config(
        "train.max_steps=12",
        "train.checkpoint_every=4",
        "train.log_every=4",
        run_dir=tmp_path / "nan",
    )
    opts = _opts(
        spike={"enabled": False}, plateau={"enabled": False}, divergence={"enabled": False}
    )
    monitor = AnomalyMonitor(opts)
    assert not monitor.per_step
    run = prepare_run(cfg, callbacks=[monitor], quiet=True, monitor=False)
    trainer = run.trainer
    original = trainer.loss_fn

    def poisoned(inputs, targets):
        out = original(inputs, targets)
        # The step that reads samples 24..27 (step 7) produces a NaN loss once.
        if trainer.state.samples == 24 and not getattr(poisoned, "done", False):
            poisoned.done = True
            return out * float("nan")
        return out

    trainer.loss_fn = poisoned
    assert trainer.fit() == "completed"
    nan = [f for f in monitor.findings if f["kind"] == "nonfinite"]
    assert len(nan) == 1 and nan[0]["step"] == 7 and nan[0]["action"] == "rewind"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.state.step == 12


def test_eval_runs_in_a_separate_process(make_config, tmp_path):
    cfg = make_config("train.max_steps=4", "train.checkpoint_every=2", run_dir=tmp_path / "ev")
    trigger = EvalTrigger(MonitorOptions().eval)
    trigger.opts.max_bytes = 4000
    run = prepare_run(cfg, callbacks=[trigger], quiet=True, monitor=False)
    run.trainer.fit()
    assert trigger.launched and trigger.launched[0] == 2
    evals = store.open_db(run.run_dir).evals()
    assert {e["step"] for e in evals} == set(trigger.launched)
    res = evals[-1]["data"]
    assert set(res["languages"]) == {"en", "zh"}
    assert 0 < res["languages"]["en"]["bpb"] < 8


def test_eval_is_off_when_there_is_nothing_to_score(shard_dir, tiny_config, tmp_path):
    # Token shards of its own and no data.heldout, no tasks: nothing to score, no process.
    cfg = tiny_config(
        shard_dir,
        tmp_path / "r",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.checkpoint_every=1",
    )
    trigger = EvalTrigger(MonitorOptions().eval)
    run = prepare_run(cfg, callbacks=[trigger], quiet=True, monitor=False)
    run.trainer.fit()
    assert trigger.launched == [] and trigger.proc is None
    assert not (tmp_path / "r" / "logs").exists()
    (event,) = store.open_db(run.run_dir).events("eval")
    assert "nothing to score" in event["message"]


def _as_dcp_checkpoint(ckpt) -> None:
    """Turn a single-process checkpoint into the layout a multi-process run writes: the weights
    as DCP shards, no model.safetensors."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    state = load_file(str(ckpt / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": state}, checkpoint_id=str(ckpt / "dcp"))
    (ckpt / "model.safetensors").unlink()


def test_evaluator_reads_dcp_shards_on_its_device_in_the_runs_dtype(
    make_config, tmp_path, monkeypatch
):
    import aquila.model.io as model_io
    from aquila.cli import main
    from aquila.errors import UserError
    from aquila.eval.runner import load_lm as real_load_lm
    from aquila.monitor.evaluator import evaluate_checkpoint

    cfg = make_config("train.max_steps=2", "train.checkpoint_every=2", run_dir=tmp_path / "r")
    run = prepare_run(cfg, quiet=True, monitor=False)
    run.trainer.fit()
    ckpt = run.run_dir / "checkpoints" / "step-00000002"
    fp32 = evaluate_checkpoint(run.run_dir, ckpt, 2, max_bytes=4000)["heldout-bpb"]
    _as_dcp_checkpoint(ckpt)
    loads = []
    real = model_io.load_model_dir

    def spy(path, device="cpu", dtype=None):
        loads.append((str(device), dtype))
        return real(path, device=device, dtype=dtype)

    monkeypatch.setattr(model_io, "load_model_dir", spy)
    res = evaluate_checkpoint(run.run_dir, ckpt, 2, max_bytes=4000, dtype="bfloat16")
    assert loads == [("cpu", torch.bfloat16)]
    bf16 = res["heldout-bpb"]
    assert bf16["device"] == "cpu"
    for lang, r in fp32["languages"].items():  # the same model, at bf16's precision
        assert bf16["languages"][lang]["bpb"] == pytest.approx(r["bpb"], rel=0.03)
    # `aquila eval` loads the shards on the device and in the dtype asked for ("auto": the
    # run's training dtype, fp32 on CPU here).
    from aquila.eval import runner

    loaded = runner.load_lm(run.run_dir, device="cpu", dtype="bfloat16")
    assert loads[-1] == ("cpu", torch.bfloat16)
    assert loaded.lm.model.lm_head.weight.dtype == torch.bfloat16
    seen = []

    class Loaded(Exception):
        pass

    def stop_at_load(path, batch_size=8, device="cpu", dtype="auto"):
        seen.append((device, dtype, runner._run_dtype(path, dtype)))
        raise Loaded  # the arguments are all this test is about

    monkeypatch.setattr(runner, "load_lm", stop_at_load)
    args = ["eval", str(run.run_dir), "--tasks", "bpb", "--quiet"]
    for extra in (["--device", "cpu", "--dtype", "bfloat16"], []):
        with pytest.raises(Loaded):
            main([*args, *extra])
    assert seen == [("cpu", "bfloat16", "bfloat16"), ("cpu", "auto", "auto")]
    with pytest.raises(UserError, match="--device cuda:7: CUDA is not available"):
        if not torch.cuda.is_available():
            real_load_lm(run.run_dir, device="cuda:7")
        else:
            raise UserError("--device cuda:7: CUDA is not available")


def test_eval_device_is_validated():
    from aquila.errors import UserError

    assert MonitorOptions.from_any({"eval": {"device": "cuda:1"}}).eval.device == "cuda:1"
    with pytest.raises(UserError, match="monitor.eval.device = 'gpu'"):
        MonitorOptions.from_any({"eval": {"device": "gpu"}})


def test_evaluator_scores_the_runs_own_text_and_tasks_like_aquila_eval(make_config, tmp_path):
    """monitor.eval.tasks: `bpb:DIR` and a benchmark file, stored per checkpoint in the rows
    `aquila eval RUN` writes; malformed task files are refused when training starts."""
    import json

    from aquila.errors import UserError
    from aquila.monitor.evaluator import check_tasks, evaluate_checkpoint
    from aquila.train.config import load_config

    text = tmp_path / "mine"
    text.mkdir()
    (text / "a.txt").write_text("The ferry left the harbour on time this morning.\n")
    mc = tmp_path / "q.jsonl"
    mc.write_text(json.dumps({"query": "In the", "choices": [" beginning", " x"], "gold": 0}))
    cfg = make_config("train.max_steps=2", "train.checkpoint_every=2", run_dir=tmp_path / "r")
    run = prepare_run(cfg, quiet=True, monitor=False)
    run.trainer.fit()
    ckpt = run.run_dir / "checkpoints" / "step-00000002"
    out = evaluate_checkpoint(
        run.run_dir, ckpt, 2, max_bytes=2000, tasks=[f"bpb:{text}", f"mc:{mc}"], task_limit=5
    )
    assert {"heldout-bpb", "bpb:mine", "mc:q"} <= set(out)
    rows = {e["task"]: e for e in store.open_db(run.run_dir).evals()}
    row = rows["bpb:mine"]
    assert row["step"] == 2 and row["data"]["origin"] == "evaluator"
    assert row["data"]["spec"] == f"bpb:{text}" and row["data"]["checkpoint"] == ckpt.name
    assert (
        0 < row["data"]["metrics"]["bpb:a.txt"] < 16 and "unigram:a.txt" in row["data"]["metrics"]
    )
    assert rows["mc:q"]["data"]["metrics"]["n"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 9}\n')
    with pytest.raises(UserError, match="bad.jsonl:1: field 'gold' = 9"):
        check_tasks([f"mc:{bad}"], 5)
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[monitor.eval]\ntasks = ["bpb", "bpb"]\n')
    with pytest.raises(UserError, match="config key monitor.eval.tasks"):
        load_config(cfg_file)
