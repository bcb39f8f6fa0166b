"""Speed levers of the training step behind config keys, mostly for GPUs.

- ``train.sdpa_backend``: which fused attention kernel SDPA may use ("flash", "cudnn",
  "efficient", "math"; "auto" lets PyTorch choose).
- ``train.ac_policy = "selective"``: activation checkpointing that keeps the outputs of the
  matmuls and of attention and recomputes the cheap elementwise work (torchtitan's op-level
  policy), instead of recomputing each whole block ("full").
- ``train.fp8``: Float8 (tensorwise) linear layers through torchao on CUDA; the output head
  stays in the autocast dtype. Optional dependency (``aquila[gpu]``), imported only when set.

bf16 autocast (``train.dtype``), FSDP2's ``MixedPrecisionPolicy`` (bf16 parameters, fp32
reductions on CUDA) and fused AdamW are on by default on CUDA.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from aquila.checks import refuse

SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


def sdpa_context(backend: str):
    """A context manager that restricts SDPA to ``backend`` (a no-op for "auto")."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel([names[backend]])


def _save_list() -> set:
    aten = torch.ops.aten
    ops = {aten.mm.default, aten.addmm.default, aten.bmm.default}
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    ):
        op = getattr(aten, name, None)
        if op is not None:
            ops.add(op.default)
    return ops


def selective_checkpoint_context():
    """``context_fn`` for ``torch.utils.checkpoint``: save matmul and attention outputs,
    recompute the rest (norms, activations, RoPE, residual adds)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    save = _save_list()

    def policy(ctx, op, *args, **kwargs):
        if op in save:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def checkpoint_kwargs(ac_policy: str) -> dict:
    if ac_policy == "selective":
        return {"context_fn": selective_checkpoint_context}
    return {}


def check_device_levers(train, device: torch.device) -> None:
    """Refuse levers that need CUDA on another device, naming the key."""
    if device.type == "cuda":
        return
    if train.fp8:
        raise refuse("train.fp8", True, "needs a CUDA device (Float8 matmuls)")
    if train.sdpa_backend in ("flash", "cudnn"):
        raise refuse("train.sdpa_backend", train.sdpa_backend, "needs a CUDA device")


def apply_fp8(model: torch.nn.Module) -> None:
    """Swap the blocks' linear layers for torchao's Float8 (tensorwise scaling) training ones."""
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError as exc:
        from aquila.errors import UserError

        raise UserError("train.fp8 = true needs torchao: pip install 'aquila[gpu]'") from exc

    def keep(module: torch.nn.Module, fqn: str) -> bool:
        # Float8 needs dimensions divisible by 16; the output head stays in bf16.
        if not isinstance(module, torch.nn.Linear) or fqn.endswith("lm_head"):
            return False
        return module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(model, module_filter_fn=keep)


@functools.cache
def fp8_available() -> bool:
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
