"""MoE blocks with one Linear module per expert projection, so each can be quantized on its own.

:class:`~aquila.model.moe.MoEFFN` stacks its experts into three tensors (one matmul kernel per
kind, one gradient per parameter while training). Quantization needs the opposite: every expert's
``w1``/``w3``/``w2`` is a weight matrix with its own scales, and GPTQ needs the inputs *that
expert* sees, which are only the tokens the router sends it. :class:`SplitMoEFFN` computes the
same function with ``experts.E.{w1,w3,w2}`` as ``nn.Linear`` modules; a forward hook on one of
them then records exactly that expert's calibration inputs, and each can be swapped for a
:class:`~aquila.model.int4_linear.QuantLinear`. The router (``gate``) is the same module as before
and stays in full precision: routing decisions are discrete, and int4 noise in the logits would
flip tokens between experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aquila.model.layers import replace_module
from aquila.model.moe import MoEFFN


class Expert(nn.Module):
    """One SwiGLU expert: ``w2(silu(w1 x) * w3 x)``, Mixtral's ``experts.E`` naming."""

    def __init__(self, hidden: int, ffn: int, device: torch.device | str | None = None):
        super().__init__()
        self.w1 = nn.Linear(hidden, ffn, bias=False, device=device)
        self.w3 = nn.Linear(hidden, ffn, bias=False, device=device)
        self.w2 = nn.Linear(ffn, hidden, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SplitMoEFFN(MoEFFN):
    """An :class:`MoEFFN` (same routing, losses and utilisation counts) with per-expert modules."""

    def __init__(self, gate: nn.Linear, experts: nn.ModuleList, top_k: int):
        nn.Module.__init__(self)  # MoEFFN's own init would allocate the stacked tensors
        self.n_experts, self.top_k = len(experts), top_k
        self.gate = gate
        self.experts = experts
        self.aux_loss = self.z_loss = self.tokens_per_expert = None

    @classmethod
    def empty(cls, moe: MoEFFN, device: torch.device | str = "meta") -> SplitMoEFFN:
        """A split block of ``moe``'s shapes on ``device`` (weights to be loaded)."""
        e, f, h = moe.w1.shape
        experts = nn.ModuleList(Expert(h, f, device=device) for _ in range(e))
        return cls(moe.gate, experts, moe.top_k)

    @classmethod
    @torch.no_grad()
    def from_moe(cls, moe: MoEFFN) -> SplitMoEFFN:
        """The same block with its experts as separate Linears (weights copied)."""
        split = cls.empty(moe, device=moe.w1.device)
        for i, ex in enumerate(split.experts):
            for name in ("w1", "w3", "w2"):
                getattr(ex, name).weight.copy_(getattr(moe, name)[i])
        return split.train(moe.training)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        raise RuntimeError("a split MoE block holds trained (or quantized) experts")

    def expert_forward(self, e: int, xs: torch.Tensor) -> torch.Tensor:
        return self.experts[e](xs)


def split_experts(model: nn.Module) -> list[str]:
    """Replace every :class:`MoEFFN` of ``model`` by a :class:`SplitMoEFFN` (in place); returns
    the qualified names of the blocks that were split."""
    names = [n for n, m in model.named_modules() if type(m) is MoEFFN]
    for name in names:
        moe = model.get_submodule(name)
        split = (
            SplitMoEFFN.from_moe(moe) if moe.w1.device.type != "meta" else SplitMoEFFN.empty(moe)
        )
        replace_module(model, name, split)
    return names
