"""`aquila plan PRESET --gpus N`: the per-rank memory plan of a layout, before any machine is
taken."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser(
        "plan",
        help="per-rank memory plan of a preset under FSDP2 (+ tensor parallel)",
        description=(
            "Compute the per-rank peak memory of training PRESET on N GPUs (or N CPU processes "
            "with --device cpu) with FSDP2 (hybrid across nodes with --replicate) and optional "
            "tensor parallelism, from parameter counts: fp32 weights, gradients and Adam moments "
            "sharded, gathered blocks and the gathered embedding/head (bf16 on GPU, fp32 on "
            "CPU), activations with or without activation checkpointing, logits; on CPU also "
            "the process baseline (the RSS of a process that imported the training modules, "
            "measured here). `aquila train --json` reports the measured figure to compare "
            "(memory.peak_bytes). --meta also runs the real FSDP2 wrapping of the model built on "
            "the meta device (nothing allocated)."
        ),
        epilog=(
            "examples:\n"
            "  aquila plan aquila2-70b --gpus 256 --gpu-mem 80 --tp 1 --meta\n"
            "  aquila plan aquila-10m --procs 2 --device cpu --set model.hidden_size=2048 "
            "--seq-len 128"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pl.add_argument("preset", help="model preset, e.g. aquila2-70b")
    pl.add_argument(
        "--gpus",
        "--procs",
        dest="gpus",
        type=int,
        required=True,
        help="ranks: GPUs, or CPU processes with --device cpu",
    )
    pl.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cuda (bf16 compute, the default) or cpu (fp32, plus the process baseline)",
    )
    pl.add_argument(
        "--gpu-mem",
        "--mem",
        dest="gpu_mem",
        type=float,
        default=None,
        help="GiB per rank (default: 80 on GPU; on CPU this machine's memory / ranks)",
    )
    pl.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1)")
    pl.add_argument(
        "--replicate", type=int, default=1, help="HSDP replicas, e.g. nodes (default 1)"
    )
    pl.add_argument("--seq-len", type=int, default=0, help="sequence length (default: model's)")
    pl.add_argument("--micro-batch", type=int, default=1, help="sequences per rank per forward")
    pl.add_argument("--no-ac", action="store_true", help="without activation checkpointing")
    pl.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="model.KEY=VALUE",
        help="change the preset's shape, e.g. model.hidden_size=2048 (repeatable)",
    )
    pl.add_argument("--meta", action="store_true", help="also apply FSDP2 on the meta device")
    pl.add_argument("--json", action="store_true", help="print one JSON object")
    pl.set_defaults(func=_plan)


def process_baseline_bytes() -> int:
    """The resident memory of a process that has imported what training imports, before any
    model exists: measured in this process (its current RSS after those imports)."""
    import aquila.monitor  # noqa: F401  (the modules a training process holds)
    import aquila.train.run  # noqa: F401
    from aquila.engine.plan import resident_bytes

    return resident_bytes()


def _plan_model(preset: str, overrides: list[str]):
    from aquila.engine.config import load_config
    from aquila.errors import UserError
    from aquila.model.config import get_preset

    get_preset(preset)  # an unknown preset is named before any override
    for text in overrides:
        if not text.startswith("model."):
            raise UserError(f"--set {text!r}: only model.KEY=VALUE settings shape a plan")
    return load_config(None, [f"model.preset={json.dumps(preset)}", *overrides]).model


def _plan(ns: argparse.Namespace) -> int:
    from aquila.engine.distributed import meta_shard_check
    from aquila.engine.plan import GIB, memory_plan
    from aquila.errors import UserError

    if ns.gpus < 1 or ns.tp < 1 or ns.replicate < 1 or ns.micro_batch < 1 or ns.seq_len < 0:
        raise UserError("--gpus, --tp, --replicate and --micro-batch must be >= 1")
    if ns.gpu_mem is not None and not ns.gpu_mem > 0:
        raise UserError(f"--gpu-mem must be > 0, got {ns.gpu_mem}")
    cfg = _plan_model(ns.preset, ns.overrides)
    cpu = ns.device == "cpu"
    baseline = process_baseline_bytes() if cpu else 0
    out = memory_plan(
        cfg,
        ns.gpus,
        ns.tp,
        ns.replicate,
        ns.seq_len or None,
        ns.micro_batch,
        not ns.no_ac,
        device=ns.device,
        baseline_bytes=baseline,
    )
    mem = ns.gpu_mem
    if mem is None:
        mem = _host_memory_bytes() / GIB / ns.gpus if cpu else 80.0
    out["preset"] = ns.preset
    out["gpu_mem_gib"] = mem
    out["fits"] = out["gib"]["total"] <= mem * 0.9  # 10% for allocator fragmentation
    if ns.meta:
        out["meta_check"] = meta_shard_check(cfg)
    if ns.json:
        print(json.dumps(out))
        return 0 if out["fits"] else 1
    g = out["gib"]
    ranks = "CPU processes" if cpu else "GPUs"
    print(
        f"{ns.preset}: {out['params'] / 1e9:.2f}B params on {ns.gpus} {ranks} "
        f"(replicate {ns.replicate} x shard {out['shard']} x tp {ns.tp}), seq {out['seq_len']}, "
        f"micro-batch {ns.micro_batch}, activation checkpointing "
        f"{'on' if out['activation_checkpointing'] else 'off'}"
    )
    keys = ["weights_grads_adam", "gathered_blocks", "gathered_root", "activations", "logits"]
    for key in [*keys, *(["baseline"] if cpu else []), "total"]:
        print(f"  {key:<20} {g[key]:8.2f} GiB")
    verdict = "fits" if out["fits"] else "does NOT fit"
    print(f"  {verdict} in {mem:g} GiB per rank (with 10% headroom)")
    if ns.meta:
        m = out["meta_check"]
        print(
            f"  meta-device FSDP2 wrap: {m['wrapped_blocks']} blocks, {m['dtensor_params']}/"
            f"{m['params']} parameters sharded, {m['numel'] / 1e9:.1f}B elements, nothing allocated"
        )
    return 0 if out["fits"] else 1


def _host_memory_bytes() -> int:
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
