"""`aquila control RUN_DIR ...`: steer a running training."""

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
