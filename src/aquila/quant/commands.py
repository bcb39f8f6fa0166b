"""`aquila quantize`: int4 weights (RTN or GPTQ) for a model dir, saved as a new model dir."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aquila.eval.commands import DEFAULT_TASKS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize a model's linear weights to int4 (RTN or GPTQ)",
        description=(
            "Quantize every Linear of the decoder blocks to 4-bit weights with one scale and "
            "zero per group of input columns (asymmetric, torch's int4 convention), packed for "
            "torch's native int4 matmul kernels. Embeddings, norms, MoE routers and lm_head "
            "stay in full precision (lm_head unless --lm-head). MoE experts are quantized one "
            "by one; GPTQ fits each expert's rounding to the calibration tokens its router "
            "sends it. GPTQ calibrates on the sample corpus's train split. The output is a "
            "model dir that `aquila eval` and `aquila generate` read."
        ),
        epilog=(
            "examples:\n"
            "  aquila quantize runs/run-20260101-120000 --method gptq --out model-int4\n"
            "  aquila quantize model --method rtn --group-size 64 --out model-rtn --json\n"
            "  aquila quantize model --out model-int4 --compare --tasks bpb,en_next_verse"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="MODEL_DIR", help="model dir or run dir (latest checkpoint)")
    p.add_argument("--out", type=Path, required=True, help="directory for the quantized model")
    p.add_argument("--bits", type=int, default=4, help="weight bits (only 4 is supported)")
    p.add_argument("--method", default="gptq", help="rtn or gptq (default gptq)")
    p.add_argument(
        "--group-size",
        type=int,
        default=128,
        help="input columns per scale/zero: 32, 64, 128, 256 (default 128)",
    )
    p.add_argument(
        "--calib-tokens", type=int, default=16384, help="GPTQ calibration tokens (default 16384)"
    )
    p.add_argument(
        "--act-order",
        action="store_true",
        help="GPTQ: visit columns by decreasing Hessian diagonal",
    )
    p.add_argument(
        "--lm-head",
        action="store_true",
        help="quantize lm_head too (default: keep it in full precision)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="then evaluate the full-precision and int4 models side by side",
    )
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="tasks for --compare")
    p.add_argument("--limit", type=int, default=None, help="examples per task for --compare")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from aquila.errors import UserError
    from aquila.model.int4 import QuantConfig
    from aquila.model.io import (
        check_output_dir,
        read_model_config,
        read_quant_config,
        resolve_model_dir,
        resolve_tokenizer_dir,
    )

    qcfg = QuantConfig(
        method=args.method,
        bits=args.bits,
        group_size=args.group_size,
        include_lm_head=args.lm_head,
        act_order=args.act_order,
    )
    qcfg.validate()
    if args.calib_tokens < 1:
        raise UserError(f"--calib-tokens must be >= 1, got {args.calib_tokens}")
    model_dir = resolve_model_dir(args.path)
    if read_quant_config(model_dir) is not None:
        raise UserError(f"{model_dir} is already quantized")
    if args.out.resolve() == model_dir.resolve():
        raise UserError(f"--out {args.out} is the input model dir; choose a new directory")
    # Everything that can refuse does so here, before the weights are read.
    check_output_dir(args.out)
    read_model_config(model_dir)
    tokenizer_dir = resolve_tokenizer_dir(args.path)

    import torch

    from aquila.model.io import load_model_dir, weights_bytes
    from aquila.quant.calib import calibration_tokens
    from aquila.quant.model import quantize_model, save_quantized_model_dir
    from aquila.tokenizer import Tokenizer

    console = Console(stderr=args.json)
    tokenizer = Tokenizer.load(tokenizer_dir)
    model = load_model_dir(model_dir, dtype=torch.float32)
    calib = None
    if qcfg.method == "gptq":
        seq_len = min(model.cfg.max_seq_len, 512)
        calib = calibration_tokens(tokenizer, max(args.calib_tokens, seq_len), seq_len)
    t0 = time.perf_counter()
    with Progress(console=console, disable=args.quiet, transient=True) as progress:
        bar = progress.add_task(f"{qcfg.method} int4", total=model.cfg.n_layers)
        quantize_model(model, qcfg, calib, progress=lambda _: progress.advance(bar))
    seconds = time.perf_counter() - t0
    save_quantized_model_dir(model, qcfg, args.out, tokenizer=tokenizer)
    summary = {
        "model_dir": str(model_dir),
        "out": str(args.out),
        "method": qcfg.method,
        "group_size": qcfg.group_size,
        "act_order": qcfg.act_order,
        "lm_head": qcfg.include_lm_head,
        "calib_tokens": int(calib.numel()) if calib is not None else 0,
        "modules": len(qcfg.modules),
        "experts": model.cfg.n_experts,
        "rtn_fallback": qcfg.rtn_fallback,
        "seconds": round(seconds, 2),
        "disk_bytes": weights_bytes(args.out),
        "source_disk_bytes": weights_bytes(model_dir),
    }
    if args.compare:
        from aquila.eval.compare import compare_models, compare_table
        from aquila.eval.tasks import parse_tasks

        report = compare_models(
            model_dir, args.out, parse_tasks(args.tasks), args.limit, show_progress=not args.quiet
        )
        summary["compare"] = report
        if not args.json:
            console.print(compare_table(report))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        console.print(
            f"{qcfg.method} int4 (group {qcfg.group_size}) of {len(qcfg.modules)} linears in "
            f"{seconds:.1f}s -> {args.out} ({summary['disk_bytes'] / 1e6:.2f} MB, was "
            f"{summary['source_disk_bytes'] / 1e6:.2f} MB)"
        )
        if qcfg.rtn_fallback:
            console.print(
                f"{len(qcfg.rtn_fallback)} linears got no calibration tokens (experts the router "
                f"never chose) and were rounded to nearest: {', '.join(qcfg.rtn_fallback[:6])}"
            )
    return 0
