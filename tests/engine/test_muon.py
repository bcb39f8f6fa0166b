"""optim.name = "muon": torch's Muon arithmetic on the blocks' matrices (each expert on its own),
AdamW on the rest, one schedule, checkpointed and exactly resumable."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from aquila.engine.callbacks import Callback
from aquila.engine.checkpoint import list_checkpoints
from aquila.engine.config import OptimConfig, load_config
from aquila.engine.muon import Muon, MuonWithAdamW
from aquila.engine.optim import build_optimizer, hidden_matrices, set_lr, single_process_order
from aquila.errors import UserError
from aquila.model import get_preset
from aquila.model.transformer import AquilaModel
from aquila.train.run import prepare_run


class Record(Callback):
    def __init__(self):
        self.losses = {}

    def on_step(self, trainer, metrics):
        self.losses[metrics.step] = metrics.loss


class CrashAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, metrics):
        if metrics.step == self.step:
            raise RuntimeError("simulated kill")


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def test_matrix_steps_are_torch_muon_exactly():
    kwargs = dict(lr=0.02, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    a = [
        torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)))
        for i, s in enumerate([(16, 8), (8, 16), (12, 12), (16, 8), (12, 12)])
    ]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours, theirs = Muon(a, **kwargs), torch.optim.Muon(b, **kwargs)
    for step in range(3):
        _grads(a, step), _grads(b, step)
        ours.step(), theirs.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    assert torch.equal(ours.state[a[0]]["momentum_buffer"], theirs.state[b[0]]["momentum_buffer"])


def test_an_expert_stack_is_orthogonalised_expert_by_expert():
    kwargs = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    stack = torch.nn.Parameter(torch.randn(3, 10, 6, generator=torch.Generator().manual_seed(0)))
    experts = [torch.nn.Parameter(e.detach().clone()) for e in stack]
    ours, theirs = Muon([stack], **kwargs), torch.optim.Muon(experts, **kwargs)
    for step in range(2):
        _grads([stack], step)
        for e, g in zip(experts, stack.grad):
            e.grad = g.clone()
        ours.step(), theirs.step()
    for e, mine in zip(experts, stack):
        assert torch.equal(mine, e)


def test_hidden_matrices_take_muon_the_rest_adamw():
    model = AquilaModel(get_preset("aquila-moe-test"))
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3))
    assert isinstance(opt, MuonWithAdamW)
    adamw, muon = opt.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon | in_adamw == set(names.values()) and not in_muon & in_adamw
    assert "layers.0.self_attn.q_proj.weight" in in_muon and "layers.1.mlp.w2" in in_muon
    for n in ("embed_tokens.weight", "lm_head.weight", "norm.weight", "layers.0.mlp.gate.weight"):
        assert n in in_adamw  # router, embeddings, head, norms
    assert all(g["adjust_lr_fn"] == "match_rms_adamw" for g in muon.param_groups)
    # One lr for all groups (the schedule's), and a one-process state in the documented order.
    set_lr(opt, 5e-4)
    assert {g["lr"] for g in adamw.param_groups + muon.param_groups} == {5e-4}
    order = single_process_order(model, "muon")
    flat = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert order == flat and len(hidden_matrices(model)) == len(in_muon)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = AquilaModel(get_preset("aquila-test"))
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3))
    x = torch.randint(0, 512, (2, 17))

    def step(m, o):
        m.token_losses(x[:, :-1], x[:, 1:]).mean().backward()
        o.step()
        o.zero_grad()

    step(model, opt)
    twin = AquilaModel(get_preset("aquila-test"))
    twin.load_state_dict(model.state_dict())
    twin_opt = build_optimizer(twin, OptimConfig(name="muon", lr=1e-3))
    # A copy, as from a file: loading keeps tensors of the right dtype as they are (shared).
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    step(model, opt), step(twin, twin_opt)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(build_optimizer(twin, OptimConfig()).state_dict())


def test_optimizer_name_is_checked(tmp_path):
    with pytest.raises(UserError, match=r"optim.name = 'sgd': must be one of"):
        load_config(overrides=["optim.name='sgd'"])
    with pytest.raises(UserError, match=r"optim.muon_momentum = 1.5"):
        load_config(overrides=["optim.name='muon'", "optim.muon_momentum=1.5"])


def test_muon_run_trains_and_resumes_bit_identically(make_config, tmp_path):
    straight = Record()
    cfg = make_config(
        "optim.name='muon'",
        "optim.lr=1e-2",
        "optim.warmup_steps=2",
        "model.preset='aquila-moe-test'",
        run_dir=tmp_path / "a",
    )
    prepare_run(cfg, callbacks=[straight], quiet=True).trainer.fit()
    assert straight.losses[6] < straight.losses[1] - 0.1 and math.isfinite(straight.losses[6])

    first = Record()
    cfg = make_config(
        "optim.name='muon'",
        "optim.lr=1e-2",
        "optim.warmup_steps=2",
        "model.preset='aquila-moe-test'",
        run_dir=tmp_path / "b",
    )
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_run(cfg, callbacks=[first, CrashAfter(4)], quiet=True).trainer.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [3]
    second = Record()
    resumed = prepare_run(resume=tmp_path / "b", callbacks=[second], quiet=True)
    assert isinstance(resumed.trainer.optimizer, MuonWithAdamW)
    resumed.trainer.fit()
    merged = {**{k: v for k, v in first.losses.items() if k <= 3}, **second.losses}
    assert merged == straight.losses  # bit-identical, step for step


def _monitor_tests():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "monitor" / "test_run.py"
    spec = importlib.util.spec_from_file_location("monitor_test_run_for_muon", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_spike_skip_policy_drops_the_muon_step(make_config, tmp_path):
    """The monitor's spike policy (skip: no optimizer step for the planted batch) and its
    per-source losses work on a Muon run as on an AdamW one."""
    mod = _monitor_tests()

    def muon_config(*overrides, run_dir=None):
        return make_config("optim.name='muon'", *overrides, run_dir=run_dir)

    run, monitor, bad_step, _ = mod._spike_run(muon_config, "skip", tmp_path, log_every=5)
    assert isinstance(run.trainer.optimizer, MuonWithAdamW)
    assert run.trainer.fit() == "completed"
    spikes = [f for f in monitor.findings if f["kind"] == "spike"]
    assert spikes and spikes[0]["step"] == bad_step and spikes[0]["action"] == "skip"
    rows = mod.store.latest_metrics(mod.store.open_db(run.run_dir))
    assert set(rows[-1]["source_loss"]) == {"kjv", "news"}
    assert math.isfinite(rows[-1]["loss"]) and rows[-1]["loss"] < math.log(512)


def test_init_from_a_muon_run_starts_fresh_muon_state(make_config, tmp_path):
    """A grown or upcycled model dir, or a Muon run's checkpoint, gives weights only: the new
    Muon run starts at step 0 with no momentum, and its first loss is the source's."""
    from aquila.model.io import load_model_dir, resolve_model_dir, save_model_dir
    from aquila.scale import upcycle
    from aquila.tokenizer import Tokenizer

    source = tmp_path / "source"
    prepare_run(
        make_config("optim.name='muon'", "train.max_steps=3", run_dir=source), quiet=True
    ).trainer.fit()
    dense = load_model_dir(resolve_model_dir(source))
    moe_dir = save_model_dir(
        upcycle(dense, n_experts=4, top_k=2), tmp_path / "moe", Tokenizer.load(source / "tokenizer")
    )
    for start in (source, moe_dir):
        first = Record()
        cfg = make_config(
            "optim.name='muon'",
            f"train.init_from='{start}'",
            "train.max_steps=2",
            run_dir=tmp_path / f"from-{start.name}",
        )
        run = prepare_run(cfg, callbacks=[first], quiet=True, monitor=False)
        assert run.trainer.state.step == 0 and not run.trainer.optimizer.state
        run.trainer.fit()
        momentum = [
            s["momentum_buffer"] for s in run.trainer.optimizer.optimizers[1].state.values()
        ]
        assert momentum and all(torch.isfinite(m).all() for m in momentum)
        if start == moe_dir:  # experts are Muon's too, each its own matrix
            assert run.cfg.model.n_experts == 4


@pytest.mark.parametrize(("saved", "resumed"), [("muon", "adamw"), ("adamw", "muon")])
def test_resume_with_another_optimizer_is_refused_in_one_line(
    make_config, tmp_path, saved, resumed
):
    cfg = make_config(f"optim.name='{saved}'", "train.max_steps=1", run_dir=tmp_path / "r")
    prepare_run(cfg, quiet=True, monitor=False).trainer.fit()
    with pytest.raises(UserError, match=f"does not fit optim.name = '{resumed}'"):
        prepare_run(
            resume=tmp_path / "r", overrides=[f"optim.name='{resumed}'"], quiet=True, monitor=False
        )


def test_set_lr_command_scales_both_optimizers(make_config):
    from aquila.engine.rundb import RunDB

    run = prepare_run(
        make_config("optim.name='muon'", "train.max_steps=2", "train.checkpoint_every=0"),
        quiet=True,
    )
    RunDB(run.run_dir).enqueue("set-lr", scale=0.5)
    seen = {}

    class Lrs(Callback):
        def before_optimizer(self, trainer, info):
            seen[trainer.state.step] = [g["lr"] for g in trainer.optimizer.param_groups]

    run.trainer.callbacks.append(Lrs())
    run.trainer.fit()
    adamw, muon = run.trainer.optimizer.optimizers
    assert len(seen[1]) == len(adamw.param_groups) + len(muon.param_groups)
    for step, lrs in seen.items():  # every group of both at the schedule's (halved) lr
        assert lrs == [pytest.approx(run.trainer.schedule(step))] * len(lrs)
        assert run.trainer.schedule(step) == pytest.approx(0.5 * run.trainer.schedule.base_lr(step))
