"""`aquila control RUN_DIR ...`: steer a running training; `aquila plan`: per-GPU memory plan."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "control",
        help="steer a running training (mixture, LR, phase, pause, checkpoint, stop)",
        description=(
            "Queue a command for a running training in RUN_DIR. It applies at the next step "
            "boundary on every rank, is recorded with that step (in checkpoints and the run "
            "database) and survives a kill: a resumed run applies it again at the same step. "
            "Invalid commands are rejected with the reason and change nothing."
        ),
        epilog=(
            "examples:\n"
            "  aquila control runs/r1 set-mixture kjv=0.3,peoples_daily=0.7\n"
            "  aquila control runs/r1 set-mixture '{\"kjv\": 1}' --wait\n"
            "  aquila control runs/r1 set-mixture knowledge      # a phase of the mixture file\n"
            "  aquila control runs/r1 set-lr 1e-4 | set-lr --scale 0.5\n"
            "  aquila control runs/r1 add-source reviews --weight 0.1\n"
            "  aquila control runs/r1 auto-mixture on   # hand the mixture back to its policy\n"
            "  aquila control runs/r1 pause | resume | checkpoint-now | stop\n"
            "  aquila control runs/r1 status --json\n"
            "\n"
            "exit codes: 0 queued (with --wait: applied); 2 bad input (nothing queued); with "
            "--wait:\n"
            "  6 rejected by the training (the reason is printed), 7 still pending at --timeout"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of the training")
    cmds = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        c = cmds.add_parser(name, help=help_, description=help_)
        if name != "status":
            c.add_argument(
                "--wait", action="store_true", help="wait until the command is applied or rejected"
            )
            c.add_argument(
                "--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)"
            )
        c.add_argument("--json", action="store_true", help="print one JSON object")
        return c

    c = add("set-mixture", "set the source weights from the next step on")
    c.add_argument(
        "weights",
        metavar="PHASE_OR_WEIGHTS",
        help="SOURCE=W,... or a JSON object (normalised), or a phase name of the mixture file",
    )
    c = add("set-lr", "set the learning rate (the schedule's shape continues from it)")
    c.add_argument("value", nargs="?", type=float, help="the learning rate at the next step")
    c.add_argument("--scale", type=float, help="multiply the current learning rate by F")
    c = add("set-phase", "switch to a phase of the run's mixture file now")
    c.add_argument("name", help="phase name")
    c = add("add-source", "add a source of the data dir to the mixture")
    c.add_argument("name", help="source name (a directory of the run's data dir)")
    c.add_argument(
        "--weight", type=float, default=0.0, help="its share, others scaled down (default 0)"
    )
    c = add("auto-mixture", "hand mixture control to the run's policy (on) or take it (off)")
    c.add_argument("state", choices=("on", "off"), help="on: the policy steers; off: it pauses")
    add("pause", "hold at the next step boundary (no data consumed) until resume or stop")
    add("resume", "continue a paused training")
    add("checkpoint-now", "save a checkpoint at the next step boundary")
    add("stop", "save a checkpoint and end the training at the next step boundary")
    add("status", "list pending, applied and rejected commands")
    p.set_defaults(func=_control)

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


def _args_of(ns: argparse.Namespace) -> tuple[str, dict]:
    from aquila.engine.control import parse_weights
    from aquila.errors import UserError

    a = ns.action
    if a == "set-mixture":
        text = ns.weights.strip()
        if "=" in text or text.startswith("{"):
            return a, {"weights": parse_weights(text)}
        return "set-phase", {"name": text}
    if a == "set-lr":
        if (ns.value is None) == (ns.scale is None):
            raise UserError("set-lr: give a VALUE or --scale F")
        return a, {"value": ns.value} if ns.value is not None else {"scale": ns.scale}
    if a == "set-phase":
        return a, {"name": ns.name}
    if a == "add-source":
        return a, {"name": ns.name, "weight": ns.weight}
    if a == "auto-mixture":
        return a, {"on": ns.state == "on"}
    return a, {}


def _control(ns: argparse.Namespace) -> int:
    from aquila.checks import check_value, number
    from aquila.engine.control import TRANSIENT, RunContext, validate
    from aquila.engine.lock import running_trainer
    from aquila.engine.rundb import RunDB
    from aquila.errors import UserError

    run_dir = Path(ns.run_dir)
    ctx = RunContext.from_run_dir(run_dir)  # UserError if not a run dir
    if ns.action == "status":
        return _status(RunDB(run_dir), ns.json)
    if ns.wait:
        check_value("--timeout", ns.timeout, number(at_least=0), what="argument")
    kind, args = _args_of(ns)
    validate(kind, args, ctx)
    if kind in TRANSIENT and running_trainer(run_dir) is None:
        raise UserError(
            f"no training is running in {run_dir}: {kind} is for a running training (queued "
            "now, it would meet the next resume)"
        )
    db = RunDB(run_dir)
    cid = db.enqueue(kind, **args)
    out = {"id": cid, "kind": kind, "args": args, "status": "pending"}
    if not ns.wait:
        _emit(out, f"queued command {cid}: {kind} {json.dumps(args) if args else ''}", ns.json)
        return 0
    deadline = time.monotonic() + ns.timeout
    while time.monotonic() < deadline:
        row = next(c for c in db.commands() if c["id"] == cid)
        if row["status"] != "pending":
            out.update(status=row["status"], step=row["applied_step"], reason=row["reason"])
            break
        time.sleep(0.2)
    line = f"command {cid} ({kind}): {out['status']}"
    if out.get("step") is not None:
        line += f" at step {out['step']}"
    if out.get("reason"):
        line += f": {out['reason']}"
    _emit(out, line, ns.json)
    from aquila.errors import EXIT_COMMAND_PENDING, EXIT_COMMAND_REJECTED

    return {"applied": 0, "pending": EXIT_COMMAND_PENDING}.get(out["status"], EXIT_COMMAND_REJECTED)


def _status(db, json_mode: bool) -> int:
    rows = db.commands()
    if json_mode:
        print(json.dumps({"commands": rows}))
        return 0
    if not rows:
        print("no commands")
    for r in rows:
        where = f"step {r['applied_step']}" if r["applied_step"] is not None else "-"
        reason = f"  ({r['reason']})" if r.get("reason") else ""
        args = json.dumps(r["args"]) if r["args"] else ""
        print(f"{r['id']:>4}  {r['status']:<9} {where:<10} {r['kind']} {args}{reason}")
    return 0


def _emit(obj: dict, line: str, json_mode: bool) -> None:
    print(line, file=sys.stderr if json_mode else sys.stdout)
    if json_mode:
        print(json.dumps(obj))


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
    from aquila.engine.memory import GIB, memory_plan, process_baseline_bytes
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
