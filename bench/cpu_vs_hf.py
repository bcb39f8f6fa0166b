"""CPU training throughput: aquila's default run against transformers' Llama, side by side.

The peer is what a user would write with transformers: ``LlamaForCausalLM`` (SDPA attention),
``torch.compile`` of the model and ``torch.optim.AdamW(fused=True)``, a plain loop with gradient
clipping, same shape (a preset), batch, sequence length, fp32. aquila runs its own trainer with
the default run's ``train.compile = true`` and ``train.loss`` (``--set train.loss=chunked`` to
time the chunked loss). Both in one process,
timed alternately in rounds (median step time after warm-up), so a change in the machine's load
hits both; the machine's fp32 matmul peak is measured first, so MFU is against what this CPU
does. ``--eager`` adds both without compile; ``--profile`` prints where aquila's step goes
(torch.profiler, top ops by self CPU time). Reports numbers; asserts nothing.

    python bench/cpu_vs_hf.py --json                   # the default run's shape and batch
    python bench/cpu_vs_hf.py --eager --profile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from aquila.engine.config import load_config
from aquila.engine.trainer import Trainer
from aquila.model import flops_per_token, get_preset
from aquila.model.transformer import AquilaModel
from aquila.train.bench import SyntheticData, matmul_peak


class AquilaLoop:
    """aquila's Trainer, stepped one step at a time."""

    def __init__(self, preset: str, seq_len: int, batch: int, compile: bool, overrides: list[str]):
        cfg = load_config(
            None,
            [
                f"model.preset='{preset}'",
                f"data.seq_len={seq_len}",
                f"train.batch_size={batch}",
                "train.max_steps=1000000",
                f"train.compile={'true' if compile else 'false'}",
                "optim.warmup_steps=0",
                "train.device='cpu'",
                *overrides,
            ],
        )
        if seq_len > cfg.model.max_seq_len:
            cfg.model = cfg.model.replace(max_seq_len=seq_len)
        torch.manual_seed(0)
        model = AquilaModel(cfg.model)
        data = SyntheticData(cfg.model.vocab_size, seq_len)
        self.trainer = Trainer(cfg, model, data, Path("."))  # writes nothing: no save called

    def step(self) -> None:
        out = self.trainer.train_step()
        float(out.loss_t)  # the loop's one host sync, as on a logging step


class HFLoop:
    """transformers' Llama of the same shape: compiled model, fused AdamW, clipping."""

    def __init__(self, preset: str, seq_len: int, batch: int, compile: bool):
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = get_preset(preset)
        hf_cfg = LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.ffn_size,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=max(seq_len, cfg.max_seq_len),
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_base,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )
        torch.manual_seed(0)
        self.model = LlamaForCausalLM(hf_cfg)
        self.model.train()
        self.forward = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True
        )
        self.data = SyntheticData(cfg.vocab_size, seq_len)
        self.batch, self.g = batch, 0

    def step(self) -> None:
        b = self.data.read(np.arange(self.g, self.g + self.batch))
        self.g += self.batch
        # transformers shifts the labels itself: they are the inputs.
        out = self.forward(input_ids=b.inputs, labels=b.inputs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        float(out.loss.detach())


def time_side_by_side(loops: dict, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each loop, timed in alternating rounds."""
    for loop in loops.values():
        for _ in range(warmup):
            loop.step()
    times: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(steps):
        for name, loop in loops.items():
            t0 = time.perf_counter()
            loop.step()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def profile_step(loop: AquilaLoop, steps: int = 3, top: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loop.step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    return [
        {"op": e.key, "self_share": e.self_cpu_time_total / total, "calls": e.count}
        for e in rows[:top]
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="aquila-10m", help="the default run's model")
    ap.add_argument("--seq-len", type=int, default=256, help="the default run's sequence")
    ap.add_argument("--batch", type=int, default=16, help="the default run's batch")
    ap.add_argument("--steps", type=int, default=8, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps each (compile)")
    ap.add_argument("--eager", action="store_true", help="also time both without compile")
    ap.add_argument("--eager-only", action="store_true", help="only the eager pair (a quick check)")
    ap.add_argument("--profile", action="store_true", help="profile aquila's (first) step")
    ap.add_argument("--peak-seconds", type=float, default=2.0)
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="aquila config overrides, e.g. train.loss=full",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    peak = matmul_peak(torch.device("cpu"), seconds=args.peak_seconds)
    from aquila.train.commands import DEFAULT_RUN

    # The default run's loss setting, unless --set says otherwise.
    overrides = [o for o in DEFAULT_RUN if o.startswith("train.loss")] + args.overrides
    loops: dict = {}
    if not args.eager_only:
        loops["aquila_compiled"] = AquilaLoop(
            args.preset, args.seq_len, args.batch, True, overrides
        )
        loops["hf_compiled_fused_adamw"] = HFLoop(args.preset, args.seq_len, args.batch, True)
    if args.eager or args.eager_only:
        loops["aquila_eager"] = AquilaLoop(args.preset, args.seq_len, args.batch, False, overrides)
        loops["hf_eager_fused_adamw"] = HFLoop(args.preset, args.seq_len, args.batch, False)
    step_s = time_side_by_side(loops, args.steps, args.warmup)
    fpt = flops_per_token(get_preset(args.preset), args.seq_len)
    tokens = args.batch * args.seq_len
    result: dict = {
        "preset": args.preset,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "aquila_loss": next(iter(loops.values())).trainer.cfg.train.loss,
        "matmul_peak_gflops": peak / 1e9,
        "flops_per_token": fpt,
    }
    for name, s in step_s.items():
        result[f"{name}_tokens_per_s"] = tokens / s
        result[f"{name}_mfu_vs_matmul_peak"] = tokens / s * fpt / peak
    if "aquila_compiled" in step_s:
        hf = step_s["hf_compiled_fused_adamw"]
        result["speedup_vs_hf_compiled"] = hf / step_s["aquila_compiled"]
    if "aquila_eager" in step_s:
        hf = step_s["hf_eager_fused_adamw"]
        result["eager_speedup_vs_hf_eager"] = hf / step_s["aquila_eager"]
    if args.profile:
        result["aquila_profile"] = profile_step(next(iter(loops.values())))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>40}: {v:.4g}" if isinstance(v, float) else f"{k:>40}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
