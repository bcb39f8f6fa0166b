"""Memory per rank, planned and measured.

Measured: after model setup and at the peak of training; CUDA ``max_memory_allocated`` (and
``max_memory_reserved``), CPU the process's maximum RSS. ``MemoryReport`` takes the after-setup
figure when training starts and the peak when it ends; every rank's figures go into the run
database (one ``memory`` event) and the maxima over ranks into the run summary
(``aquila train --json``: ``"memory"``).

Planned: ``aquila.engine.plan.memory_plan`` (``aquila plan``) estimates the same figures from
the parameter counts; its CPU form is checked against this measurement in the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aquila.engine.callbacks import Callback
from aquila.engine.device import memory_figures

if TYPE_CHECKING:
    from aquila.engine.trainer import Trainer

GIB = 1024**3


class MemoryReport(Callback):
    def __init__(self, device: torch.device, run_dir: Path):
        self.device = device
        self.run_dir = Path(run_dir)
        self.after_setup: dict[str, int] = {}
        self.ranks: list[dict[str, int]] = []
        self.summary: dict[str, int] | None = None

    def on_start(self, trainer: Trainer) -> None:
        # Everything before the first step: the model's shards, a resumed checkpoint, the data.
        self.after_setup = memory_figures(self.device)

    def on_end(self, trainer: Trainer, reason: str) -> None:
        peak = memory_figures(self.device)
        row = {
            "after_setup_bytes": self.after_setup.get("bytes", 0),
            "peak_bytes": peak["bytes"],
        }
        if "reserved_bytes" in peak:
            row["after_setup_reserved_bytes"] = self.after_setup.get("reserved_bytes", 0)
            row["peak_reserved_bytes"] = peak["reserved_bytes"]
        # A failed rank must not wait in a collective for ranks that may never come.
        rows = [row] if reason == "error" else _gather(row)
        self.ranks = [{"rank": r, **v} for r, v in enumerate(rows)]
        self.summary = {k: max(r[k] for r in rows) for k in row}
        if trainer.is_main:
            from aquila.engine.rundb import RunDB

            RunDB(self.run_dir).add_event(
                trainer.state.step,
                "memory",
                f"peak memory {self.summary['peak_bytes'] / GIB:.2f} GiB per rank (max over "
                f"{len(rows)}), {self.summary['after_setup_bytes'] / GIB:.2f} GiB after setup",
                device=self.device.type,
                ranks=self.ranks,
            )


def _gather(row: dict[str, int]) -> list[dict[str, int]]:
    """Every rank's ``row`` (same keys everywhere), in rank order; collective."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [row]
    keys = list(row)
    mine = torch.tensor([row[k] for k in keys], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        mine = mine.cuda()
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [dict(zip(keys, (int(x) for x in t.tolist()))) for t in out]


def memory_summary(trainer: Trainer) -> dict[str, Any] | None:
    """The maxima over ranks of the run's ``MemoryReport``, once training has ended."""
    for cb in trainer.callbacks:
        if isinstance(cb, MemoryReport):
            return cb.summary
    return None
