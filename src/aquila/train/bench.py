"""Throughput benchmark on the training code path: tokens/s, step time, MFU, memory, data wait."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aquila.data.batches import Batch
from aquila.engine.callbacks import Callback
from aquila.engine.device import peak_memory_bytes, pick_device
from aquila.engine.step import StepMetrics
from aquila.engine.trainer import Trainer
from aquila.model.transformer import AquilaModel, flops_per_token
from aquila.train.config import load_config


class SyntheticData:
    """Uniform random tokens as a pure function of the global index: no I/O in the timing."""

    source_names = ["synthetic"]

    def __init__(self, vocab_size: int, seq_len: int, seed: int = 0):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

    def read(self, g: np.ndarray) -> Batch:
        rows = [
            np.random.default_rng([self.seed, int(i)]).integers(
                0, self.vocab_size, self.seq_len + 1
            )
            for i in g
        ]
        tokens = torch.from_numpy(np.stack(rows).astype(np.int64))
        zeros = torch.zeros(len(g), dtype=torch.long)
        return Batch(tokens=tokens, source_ids=zeros, chunk_ids=zeros, global_indices=np.asarray(g))


def matmul_peak(
    device: torch.device, n: int = 2048, dtype: torch.dtype = torch.float32, seconds: float = 2.0
) -> float:
    """Measured FLOP/s of a square matmul: the practical ceiling that MFU on CPU is judged by."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iters += 1
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepTimer(Callback):
    warmup: int
    times: list[float]
    waits: list[float]
    _t0: float = 0.0

    def before_step(self, trainer: Trainer) -> None:
        _sync(trainer.device)
        self._t0 = time.perf_counter()

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        _sync(trainer.device)
        if trainer.state.step > self.warmup:
            self.times.append(time.perf_counter() - self._t0)
            self.waits.append(metrics.data_wait_s)


def run_benchmark(
    preset: str,
    seq_len: int,
    batch: int,
    steps: int,
    warmup: int = 2,
    compile: bool = False,
    micro_batch: int = 0,
    device: str = "auto",
    overrides: list[str] | None = None,
    run_dir: Path | None = None,
    peak_seconds: float = 2.0,
) -> dict[str, Any]:
    dev = pick_device(device)
    cfg = load_config(
        None,
        [
            f"model.preset='{preset}'",
            f"data.seq_len={seq_len}",
            f"train.batch_size={batch}",
            f"train.micro_batch_size={micro_batch}",
            f"train.max_steps={steps + warmup}",
            f"train.compile={'true' if compile else 'false'}",
            "train.checkpoint_every=0",
            f"train.log_every={steps + warmup + 1}",
            "optim.warmup_steps=0",
            *(overrides or []),
        ],
    )
    if seq_len > cfg.model.max_seq_len:
        cfg.model = cfg.model.replace(max_seq_len=seq_len)
    torch.manual_seed(0)
    model = AquilaModel(cfg.model, device=dev)
    timer = StepTimer(warmup, [], [])
    trainer = Trainer(
        cfg,
        model,
        SyntheticData(cfg.model.vocab_size, seq_len),
        run_dir or Path("."),
        [timer],
        device=dev,
    )
    trainer.fit(save_final=False)
    step_s = float(np.median(timer.times))
    tokens_per_s = batch * seq_len / step_s
    fpt = flops_per_token(cfg.model, seq_len)
    out = {
        "preset": preset,
        "device": str(dev),
        "seq_len": seq_len,
        "batch": batch,
        "compile": compile,
        "compiled": trainer.compiled,
        "loss": cfg.train.loss,
        "steps_timed": len(timer.times),
        "params": model.num_params(),
        "flops_per_token": fpt,
        "step_s": step_s,
        "tokens_per_s": tokens_per_s,
        "achieved_flops": tokens_per_s * fpt,
        "data_wait_fraction": float(np.sum(timer.waits) / max(np.sum(timer.times), 1e-9)),
        # CUDA: max allocated bytes; CPU: the process's maximum RSS (everything it holds).
        "peak_memory": peak_memory_bytes(dev),
        "peak_memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "max RSS",
    }
    if trainer.peak:
        out["peak_flops"] = trainer.peak
        out["mfu"] = out["achieved_flops"] / trainer.peak
    else:
        out["peak_flops"] = matmul_peak(dev, seconds=peak_seconds)
        out["peak_kind"] = "measured fp32 2048x2048 matmul"
        out["mfu"] = out["achieved_flops"] / out["peak_flops"]
    return out


def data_pipeline_rate(data, seq_len: int, batch: int, seconds: float = 3.0) -> dict[str, float]:
    """Tokens/s the sampler and reader deliver on their own (no model)."""
    g, n, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        data.read(np.arange(g, g + batch, dtype=np.int64))
        g += batch
        n += 1
    elapsed = time.perf_counter() - start
    return {"batches_per_s": n / elapsed, "tokens_per_s": n * batch * seq_len / elapsed}
