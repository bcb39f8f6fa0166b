"""The optimizer (AdamW with weight decay on matrices only, or Muon + AdamW) and the warmup +
cosine learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aquila.engine.config import OptimConfig
from aquila.engine.muon import Muon, MuonWithAdamW


def _mesh_key(p: torch.Tensor) -> int | None:
    return id(p.device_mesh) if hasattr(p, "device_mesh") else None


def is_decayed(p: torch.Tensor) -> bool:
    # Norm gains (vectors) are not decayed: shrinking them only fights the normalisation.
    return p.ndim >= 2


def hidden_matrices(model: nn.Module) -> set[int]:
    """Ids of the parameters Muon trains: the blocks' matrices (attention and MLP projections,
    expert stacks). Embeddings, the output head, norms and MoE routers are not among them: a
    router's rows are per-expert scores, not a map between hidden spaces."""
    from aquila.model.moe import MoEFFN

    routers = {id(m.gate.weight) for m in model.modules() if isinstance(m, MoEFFN)}
    return {
        id(p)
        for block in model.layers
        for p in block.parameters()
        if p.requires_grad and p.ndim >= 2 and id(p) not in routers
    }


def single_process_order(model: nn.Module, name: str = "adamw") -> list[str]:
    """Parameter names in the order of a one-process optimizer's state (AdamW: decayed, then
    not; Muon: AdamW's parameters so, then the matrices, then the expert stacks): how the
    positions in a one-process checkpoint's optimizer state map to names."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = hidden_matrices(model) if name == "muon" else set()
    rest = [(n, p) for n, p in named if id(p) not in muon]
    order = [n for n, p in rest if is_decayed(p)] + [n for n, p in rest if not is_decayed(p)]
    hidden = [(n, p) for n, p in named if id(p) in muon]
    return order + [n for n, p in hidden if p.ndim == 2] + [n for n, p in hidden if p.ndim == 3]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer | MuonWithAdamW:
    """``optim.name``'s optimizer over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name != "muon":
        return _adamw(params, cfg)
    muon = hidden_matrices(model)
    return MuonWithAdamW(
        _adamw([p for p in params if id(p) not in muon], cfg),
        Muon(
            [p for p in params if id(p) in muon],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.muon_momentum,
            nesterov=True,
            ns_steps=cfg.muon_ns_steps,
            adjust_lr_fn=cfg.muon_adjust_lr,
            ns_dtype=getattr(torch, cfg.muon_ns_dtype),
        ),
    )


def _adamw(params: list[torch.Tensor], cfg: OptimConfig) -> torch.optim.AdamW:
    buckets: dict[tuple[bool, int | None], list[torch.Tensor]] = {}
    for p in params:
        buckets.setdefault((is_decayed(p), _mesh_key(p)), []).append(p)
    # One group per device mesh as well: the fused step takes a group's tensors in one call,
    # which cannot mix plain tensors and DTensors, or DTensors of different meshes (TP blocks
    # next to an FSDP-only or plain embedding). Without DTensors: the two groups, as always.
    meshes = list(dict.fromkeys(_mesh_key(p) for p in params)) or [None]
    groups = [
        {"params": buckets.get((decayed, mesh), []), "weight_decay": wd}
        for decayed, wd in ((True, cfg.weight_decay), (False, 0.0))
        for mesh in meshes
        if len(meshes) == 1 or (decayed, mesh) in buckets
    ]
    devices = {p.device.type for p in params}
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        # One fused kernel over all parameters (CUDA and CPU) instead of ~10 elementwise passes
        # per tensor; elsewhere (meta, other backends) torch picks its default path.
        fused=True if devices <= {"cuda", "cpu"} else None,
    )


@dataclass
class LRSchedule:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``total_steps``.

    ``scale`` multiplies the whole curve: live ``set-lr`` commands change it without rebuilding.
    """

    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    kind: str = "cosine"
    scale: float = 1.0

    @classmethod
    def from_config(cls, cfg: OptimConfig, total_steps: int) -> LRSchedule:
        if cfg.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")
        return cls(cfg.lr, cfg.min_lr, cfg.warmup_steps, total_steps, cfg.schedule)

    def base_lr(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.base_lr(step) * self.scale

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def set_lr(optimizer: torch.optim.Optimizer | MuonWithAdamW, lr: float) -> None:
    # Muon's groups too: with "match_rms_adamw" one lr serves both (the shape rule scales it).
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class BatchRamp:
    """Global batch size per step: grows from ``start`` by ``increment`` every ``every`` steps."""

    full: int
    start: int = 0
    increment: int = 0
    every: int = 0

    @property
    def enabled(self) -> bool:
        return self.start > 0 and self.increment > 0 and self.every > 0 and self.start < self.full

    def size_at(self, step: int) -> int:
        if not self.enabled:
            return self.full
        return min(self.full, self.start + self.increment * (step // self.every))

    def samples_before(self, step: int) -> int:
        """Samples consumed by steps < ``step``: the global index where ``step`` starts reading."""
        if not self.enabled:
            return self.full * step
        ramp_end = math.ceil((self.full - self.start) / self.increment) * self.every
        total, s = 0, 0
        # Piecewise constant: sum whole plateaus of ``every`` steps, then the rest at full size.
        while s < min(step, ramp_end):
            n = min(self.every, step - s, ramp_end - s)
            total += n * self.size_at(s)
            s += n
        return total + max(0, step - max(s, ramp_end)) * self.full if step > ramp_end else total
