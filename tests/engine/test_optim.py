import pytest
import torch

from aquila.engine.config import OptimConfig
from aquila.engine.optim import BatchRamp, LRSchedule, build_optimizer
from aquila.model import get_preset
from aquila.model.transformer import AquilaModel


def test_warmup_then_cosine_to_floor():
    s = LRSchedule(lr=1.5e-4, min_lr=1.5e-5, warmup_steps=10, total_steps=110)
    assert s(0) == pytest.approx(1.5e-5)
    assert s(9) == pytest.approx(1.5e-4)
    assert s(60) == pytest.approx((1.5e-4 + 1.5e-5) / 2)
    assert s(110) == pytest.approx(1.5e-5) and s(500) == pytest.approx(1.5e-5)
    lrs = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    s.scale = 0.5
    assert s(9) == pytest.approx(0.75e-4)


def test_weight_decay_on_matrices_only():
    model = AquilaModel(get_preset("aquila-test"))
    opt = build_optimizer(model, OptimConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(
        p.ndim == 1 for p in no_decay["params"]
    )
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("full", "start", "inc", "every"), [(128, 32, 32, 5), (100, 32, 32, 3), (64, 0, 0, 0)]
)
def test_batch_ramp_positions_match_running_sum(full, start, inc, every):
    r = BatchRamp(full, start, inc, every)
    assert r.size_at(0) == (start or full)
    assert r.size_at(10_000) == full
    for step in range(60):
        assert r.samples_before(step) == sum(r.size_at(s) for s in range(step))


def test_batch_sizes_are_nondecreasing():
    r = BatchRamp(1024, 32, 32, 2)
    sizes = [r.size_at(s) for s in range(100)]
    assert sizes[0] == 32 and sizes[2] == 64 and max(sizes) == 1024
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    assert torch.tensor(sizes).unique().numel() == 32
