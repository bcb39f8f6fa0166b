"""The speed levers behind config keys: each changes what it says and nothing else on CPU;
the CUDA-only ones are refused elsewhere, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aquila.engine.config import load_config
from aquila.engine.trainer import Trainer
from aquila.errors import UserError
from aquila.model.transformer import AquilaModel
from aquila.train.bench import SyntheticData


def _losses(tmp_path: Path, *overrides: str, steps: int = 2) -> list[float]:
    cfg = load_config(
        None,
        [
            "model.preset='aquila-test'",
            "data.seq_len=16",
            "train.batch_size=2",
            f"train.max_steps={steps}",
            "optim.warmup_steps=0",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    trainer = Trainer(
        cfg, AquilaModel(cfg.model), SyntheticData(cfg.model.vocab_size, 16), tmp_path
    )
    return [float(trainer.train_step().loss_t) for _ in range(steps)]


def test_selective_checkpointing_trains_like_no_checkpointing(tmp_path):
    ref = _losses(tmp_path)
    full = _losses(tmp_path, "train.activation_checkpointing=true")
    sel = _losses(tmp_path, "train.activation_checkpointing=true", "train.ac_policy='selective'")
    assert full == pytest.approx(ref, rel=1e-6) and sel == pytest.approx(ref, rel=1e-6)


def test_selective_policy_saves_matmuls_and_recomputes_the_rest():
    """In backward, full checkpointing runs the matmul of the forward again; selective does not
    (it kept the output), while the elementwise ops are recomputed by both."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.checkpoint import checkpoint

    from aquila.engine.levers import checkpoint_kwargs

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)

    def backward_ops(policy):
        y = checkpoint(
            lambda t: torch.relu(lin(t)).sin(), x, use_reentrant=False, **checkpoint_kwargs(policy)
        )
        with Count() as c:
            y.sum().backward()
        return c.ops

    full, sel = backward_ops("full"), backward_ops("selective")
    assert "relu" in full and "relu" in sel
    # addmm of the forward: recomputed under full only (backward itself uses mm).
    assert full.count("addmm") == 1 and sel.count("addmm") == 0


def test_sdpa_math_backend_gives_the_same_losses(tmp_path):
    ref = _losses(tmp_path)
    assert _losses(tmp_path, "train.sdpa_backend='math'") == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.fp8=true", "train.fp8"),
        ("train.sdpa_backend='flash'", "train.sdpa_backend"),
        ("train.loss='liger'", "train.loss"),
    ],
)
def test_cuda_levers_refused_on_cpu(tmp_path, override, key):
    with pytest.raises(UserError, match=f"config key {key} = .*CUDA"):
        _losses(tmp_path, "train.device='cpu'", override)


def test_unknown_lever_values_refused():
    with pytest.raises(UserError, match="train.ac_policy = 'some'"):
        load_config(None, ["train.ac_policy='some'"])
    with pytest.raises(UserError, match="train.sdpa_backend"):
        load_config(None, ["train.sdpa_backend='fast'"])


@pytest.mark.gpu
def test_flash_or_cudnn_attention_is_chosen_on_cuda():
    """In bf16 on CUDA the SDPA call runs a flash or cuDNN kernel, not the math fallback."""
    from torch.profiler import ProfilerActivity, profile

    from aquila.model import get_preset

    cfg = get_preset("aquila-test")
    model = AquilaModel(cfg, device="cuda")
    tokens = torch.randint(0, cfg.vocab_size, (2, 65), device="cuda")
    acts = [ProfilerActivity.CUDA, ProfilerActivity.CPU]
    with profile(activities=acts) as prof, torch.autocast("cuda", dtype=torch.bfloat16):
        model.token_losses(tokens[:, :-1], tokens[:, 1:]).sum().backward()
    names = " ".join(e.key for e in prof.key_averages())
    assert "flash" in names or "cudnn" in names, names


@pytest.mark.gpu
def test_a_step_has_no_host_sync_on_cuda(tmp_path):
    """Steps that do not log never wait for the GPU (torch.cuda.set_sync_debug_mode)."""
    cfg = load_config(
        None,
        [
            "model.preset='aquila-test'",
            "data.seq_len=16",
            "train.batch_size=2",
            "train.max_steps=3",
            "train.device='cuda'",
            "optim.warmup_steps=0",
        ],
    )
    model = AquilaModel(cfg.model, device="cuda")
    trainer = Trainer(
        cfg, model, SyntheticData(cfg.model.vocab_size, 16), tmp_path, device=torch.device("cuda")
    )
    trainer.train_step()  # first step: lazy initialisation (optimizer state) may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_fp8_trains_on_cuda(tmp_path):
    from aquila.engine.levers import fp8_available

    if not fp8_available():
        pytest.skip("torchao or an FP8-capable GPU (sm89+) missing")
    cfg_over = [
        "train.device='cuda'",
        "train.fp8=true",
        "model.hidden_size=128",
        "model.ffn_size=256",
    ]
    losses = _losses(tmp_path, *cfg_over, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
