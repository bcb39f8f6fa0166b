"""The step record: what one optimizer step computed, in the one shape every callback reads.

Per-source loss sums and sequence counts stay on the device every step (no host sync); on
logging steps the trainer also fills the plain numbers (loss, throughput, per-source means), one
host transfer per log interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepMetrics:
    step: int
    lr: float
    batch_size: int
    batch_tokens: int
    data_wait_s: float
    skipped: str | None
    # On the device, every step.
    loss_t: torch.Tensor
    grad_norm_t: torch.Tensor
    source_loss_sum: torch.Tensor  # per source id: sum of the sequences' mean token loss
    source_count: torch.Tensor  # per source id: sequences in the step
    source_names: tuple[str, ...] = ()
    # Plain numbers, on logging steps only.
    logged: bool = False
    loss: float | None = None
    grad_norm: float | None = None
    source_loss: dict[str, float] = field(default_factory=dict)
    tokens: int | None = None
    samples: int | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory: int | None = None
    eta_s: float | None = None
    time: float | None = None

    def row(self) -> dict[str, Any]:
        """A logging step as one ``metrics.jsonl`` line (the keys in their historic order)."""
        if not self.logged:
            raise ValueError(f"step {self.step} is not a logging step: no plain numbers")
        return {
            "step": self.step,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_tokens,
            "data_wait_s": self.data_wait_s,
            "skipped": self.skipped,
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "source_loss": dict(self.source_loss),
            "tokens": self.tokens,
            "samples": self.samples,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "peak_memory": self.peak_memory,
            "eta_s": self.eta_s,
            "time": self.time,
        }
