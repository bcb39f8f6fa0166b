"""Memory per rank, planned and measured.

Measured: after model setup and at the peak of training; CUDA ``max_memory_allocated`` (and
``max_memory_reserved``), CPU the process's maximum RSS. ``MemoryReport`` takes the after-setup
figure when training starts and the peak when it ends; every rank's figures go into the run
database (one ``memory`` event) and the maxima over ranks into the run summary
(``aquila train --json``: ``"memory"``).

Planned: ``memory_plan`` estimates the per-rank peak of a layout from the parameter counts
(``aquila plan``); its CPU form is checked against the measurement in the tests.
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


# -- the plan -------------------------------------------------------------------------------------


def process_baseline_bytes() -> int:
    """The resident memory of a process that has imported what training imports, before any
    model exists: measured in this process (its current RSS after those imports)."""
    import aquila.engine.run  # noqa: F401  (the modules a training process holds)
    import aquila.monitor  # noqa: F401

    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        import os

        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        from aquila.engine.device import max_rss_bytes

        return max_rss_bytes()


def memory_plan(
    cfg,
    gpus: int,
    tp: int = 1,
    replicate: int = 1,
    seq_len: int | None = None,
    micro_batch: int = 1,
    activation_checkpointing: bool = True,
    device: str = "cuda",
    baseline_bytes: int = 0,
) -> dict:
    """Per-rank peak bytes of training ``cfg`` on ``gpus`` ranks (FSDP2 x TP, HSDP), from
    parameter counts; nothing is allocated.

    Sharded and kept: fp32 master weights, fp32 gradients, Adam m and v (16 bytes/param over
    the shard group x tp). Transient under FSDP2 (more than one shard), in block units: two
    blocks gathered (the one computing and the one prefetched), the flat buffer the prefetch
    all-gathers into before copying out to the parameters, one block's gradients and the flat
    copy of them that is reduce-scattered: five. Plus the root unit (embedding and output head),
    whose parameters stay gathered through the forward and backward passes and whose gradients
    wait for the last reduce-scatter. On CUDA these are bf16 (the mixed-precision policy), on
    CPU fp32. Activations: what backward keeps
    per token and layer, 10 * hidden + 4 * ffn elements (counted on the decoder block with
    autograd's saved tensors; fused attention keeps no scores), divided by tp; activation
    checkpointing keeps each block's input and one block's activations while it is recomputed.
    Logits: fp32 logits and their gradient (vocab / tp each). ``baseline_bytes``: what the
    process holds before any model (on CPU, Python, torch and the libraries count in RSS).
    """
    from aquila.engine.distributed import ParallelPlan

    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device!r}")
    plan = ParallelPlan(gpus, tp, replicate)
    plan.check()
    s = seq_len or cfg.max_seq_len
    h, layers = cfg.hidden_size, cfg.n_layers
    kv = cfg.n_kv_heads * cfg.head_dim
    attn = h * (cfg.n_heads * cfg.head_dim) * 2 + h * kv * 2
    ffn_mult = max(1, cfg.n_experts) if cfg.n_experts > 0 else 1
    mlp = 3 * h * cfg.ffn_size * ffn_mult + (h * cfg.n_experts if cfg.n_experts > 0 else 0)
    block = attn + mlp + 2 * h
    embed = cfg.vocab_size * h
    total = layers * block + 2 * embed + h
    tp_split = layers * (attn + mlp)  # linear weights split by TP; the rest is replicated
    per_rank_params = (tp_split / tp + (total - tp_split)) / plan.shard
    states = 16 * per_rank_params
    compute = 2 if device == "cuda" else 4  # bytes of gathered params, grads, activations
    if plan.shard > 1:
        gathered = 5 * compute * block / tp
        root = 4 * compute * embed  # embedding + head gathered, and their gradients
    else:
        gathered = root = 0.0
    tokens = s * micro_batch
    active_ffn = cfg.ffn_size * (cfg.top_k if cfg.n_experts > 0 else 1)
    full_layer = compute * tokens * (10 * h + 4 * active_ffn) / tp
    # Checkpointing keeps each block's input, plus one block's activations while recomputing.
    if activation_checkpointing:
        acts = layers * compute * tokens * h + full_layer
    else:
        acts = layers * full_layer
    logits = 2 * 4 * tokens * cfg.vocab_size / tp
    used = states + gathered + root + acts + logits + baseline_bytes
    return {
        "params": int(total),
        "gpus": gpus,
        "device": device,
        "tp": tp,
        "replicate": replicate,
        "shard": plan.shard,
        "seq_len": s,
        "micro_batch": micro_batch,
        "activation_checkpointing": activation_checkpointing,
        "bytes": int(used),
        "gib": {
            "weights_grads_adam": states / GIB,
            "gathered_blocks": gathered / GIB,
            "gathered_root": root / GIB,
            "activations": acts / GIB,
            "logits": logits / GIB,
            "baseline": baseline_bytes / GIB,
            "total": used / GIB,
        },
    }
