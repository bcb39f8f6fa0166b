"""CPU training throughput: aquila's trainer vs a plain PyTorch loop over transformers' Llama.

Both train the same shape (a preset, fp32) on the same batch size and sequence length in one
process; the machine's fp32 matmul peak is measured first, so MFU is against what this CPU can
actually do. Reports numbers; asserts nothing.

    python bench/cpu_vs_hf.py --preset aquila-10m --seq-len 256 --batch 16 --steps 8 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aquila.engine.bench import matmul_peak, run_benchmark
from aquila.model import flops_per_token, get_preset


def hf_llama_rate(preset: str, seq_len: int, batch: int, steps: int, warmup: int) -> dict:
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
    model = LlamaForCausalLM(hf_cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for i in range(warmup + steps):
        x = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1))
        t0 = time.perf_counter()
        out = model(input_ids=x[:, :-1], labels=x[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"step_s": step_s, "tokens_per_s": batch * seq_len / step_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="aquila-10m")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time aquila with train.compile")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    peak = matmul_peak(torch.device("cpu"))
    ours = run_benchmark(
        args.preset, args.seq_len, args.batch, args.steps, args.warmup, device="cpu"
    )
    hf = hf_llama_rate(args.preset, args.seq_len, args.batch, args.steps, args.warmup)
    compiled = None
    if args.compile:
        compiled = run_benchmark(
            args.preset,
            args.seq_len,
            args.batch,
            args.steps,
            args.warmup,
            compile=True,
            device="cpu",
        )
    fpt = flops_per_token(get_preset(args.preset), args.seq_len)
    result = {
        "preset": args.preset,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": peak / 1e9,
        "aquila_tokens_per_s": ours["tokens_per_s"],
        "hf_llama_tokens_per_s": hf["tokens_per_s"],
        "speedup_vs_hf": ours["tokens_per_s"] / hf["tokens_per_s"],
        "aquila_mfu_vs_matmul_peak": ours["tokens_per_s"] * fpt / peak,
        "hf_mfu_vs_matmul_peak": hf["tokens_per_s"] * fpt / peak,
        "flops_per_token": fpt,
    }
    if compiled:
        result["aquila_compiled_tokens_per_s"] = compiled["tokens_per_s"]
        result["aquila_compiled_mfu_vs_matmul_peak"] = compiled["tokens_per_s"] * fpt / peak
        result["compiled_speedup_vs_hf"] = compiled["tokens_per_s"] / hf["tokens_per_s"]
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v:.4g}" if isinstance(v, float) else f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
