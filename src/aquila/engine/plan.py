"""The memory plan of a layout: per-rank peak bytes of training a model on N ranks (FSDP2,
HSDP, tensor parallel), from parameter counts alone (``aquila plan``). Nothing is allocated;
``aquila.engine.memory`` measures the same figures in a run.
"""

from __future__ import annotations

GIB = 1024**3


def resident_bytes() -> int:
    """This process's resident memory now (its maximum RSS where /proc is not there)."""
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
