"""`aquila monitor RUN_DIR`: the live dashboard, a text/JSON report with suggestions, a PNG."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="watch a run: live dashboard, report with suggestions, PNG plot",
        description=(
            "Serve a local dashboard for RUN_DIR (live loss per source, grad norm, LR, "
            "throughput, MFU, mixture and its history, events, evaluations, weight trajectory, "
            "and controls that enqueue commands for the running trainer). With --report, "
            "--json or --png it prints/saves a summary instead of serving. "
            "The dashboard always asks for a random access token: open the URL it prints "
            "(ending in ?token=...); the page keeps the token in a cookie. It answers only to "
            "the bound address, localhost/127.0.0.1/[::1] (with its port) and the names given "
            "with --allow-host."
        ),
        epilog=(
            "examples:\n"
            "  aquila monitor runs/run-20260101-120000\n"
            "  aquila monitor runs/run-20260101-120000 --port 9000\n"
            "  aquila monitor RUN_DIR --host 0.0.0.0 --allow-host node7.cluster\n"
            "  aquila monitor RUN_DIR --report\n"
            "  aquila monitor RUN_DIR --png run.png --json\n"
            "  aquila monitor RUN_DIR --report --trajectory-png trajectory.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds run.sqlite)")
    p.add_argument(
        "--port", type=int, default=8765, help="port to serve on (default: 8765; 0: any)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help=(
            "also answer to requests addressed to NAME (a DNS name this machine is reached by, "
            "or the name behind a reverse proxy or SSH tunnel; any port); repeatable"
        ),
    )
    p.add_argument("--report", action="store_true", help="print a text report with suggestions")
    p.add_argument("--png", metavar="OUT.png", help="save a plot of the run to OUT.png")
    p.add_argument(
        "--trajectory-png",
        metavar="OUT.png",
        help=(
            "save the weight-trajectory distance per parameter type over tokens, data phases "
            "shaded, with the point where each type settles"
        ),
    )
    p.add_argument(
        "--json", action="store_true", help="print the report as one JSON object on stdout"
    )
    p.set_defaults(func=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aquila.engine.rundb import DB_FILE
    from aquila.errors import UserError

    run_dir = Path(args.run_dir)
    if not (run_dir / DB_FILE).is_file():
        raise UserError(f"{run_dir}: not a monitored run directory (no {DB_FILE})")
    if args.report or args.json or args.png or args.trajectory_png:
        return _report(run_dir, args)
    return _serve(run_dir, args)


def _serve(run_dir, args) -> int:
    from aquila.errors import UserError
    from aquila.monitor.access import valid_name
    from aquila.monitor.dashboard import plotly_js, serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    for name in args.allow_host:
        if not valid_name(name):
            raise UserError(
                f"--allow-host {name!r}: not a host name or IP address "
                "(give the name alone, without scheme, port or path)"
            )
    if plotly_js() is None:
        raise UserError(
            "the dashboard needs plotly (its bundled plotly.min.js): pip install plotly"
        )
    try:
        server, url, token = serve(run_dir, args.host, args.port, allow_hosts=args.allow_host)
    except OSError as exc:
        raise UserError(
            f"--port {args.port}: cannot listen on {args.host!r}: {exc.strerror or exc}"
        ) from None
    # The URL is the last word of the first stdout line, for tools that start the dashboard.
    print(f"aquila monitor: serving {run_dir} at {url}", flush=True)
    port = server.server_address[1]
    for name in args.allow_host:
        shown = f"[{name}]" if ":" in name else name
        print(f"  also at http://{shown}:{port}/?token={token}", flush=True)
    print("press Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def build_report(run_dir) -> dict:
    from aquila.monitor import store
    from aquila.monitor.dashboard import Dashboard
    from aquila.monitor.trajectory_report import settle_summary

    app = Dashboard(run_dir)
    rows = store.latest_metrics(app.db)
    last = rows[-1] if rows else {}
    events = app.events()
    counts: dict[str, int] = {}
    for e in events:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    evals = app.evals()
    latest_eval = next((e for e in reversed(evals) if e["task"] == "heldout-bpb"), None)
    mix = app.mixture()
    return {
        "run_dir": str(run_dir),
        "status": app.summary()["status"],
        "step": last.get("step", 0),
        "tokens": last.get("tokens", 0),
        "loss": last.get("loss"),
        "source_loss": last.get("source_loss", {}),
        "tokens_per_s": last.get("tokens_per_s"),
        "mixture": mix["current"]["weights"] if mix["current"] else {},
        "phase": mix["current"]["label"] if mix["current"] else None,
        "events": counts,
        "recent_events": [
            {"step": e["step"], "kind": e["kind"], "message": e["message"]} for e in events[-10:]
        ],
        "heldout_bpb": {
            "step": latest_eval["step"],
            "languages": {k: v["bpb"] for k, v in latest_eval["data"]["languages"].items()},
        }
        if latest_eval
        else None,
        "suggestions": app.suggestions(),
        "trajectory": settle_summary(app.trajectory()),
    }


def _report(run_dir, args) -> int:
    report = build_report(run_dir)
    if args.png:
        from aquila.monitor import store
        from aquila.monitor.plot import save_png

        report["png"] = str(save_png(store.open_db(run_dir), args.png, title=str(run_dir)))
    if args.trajectory_png:
        from aquila.monitor import store
        from aquila.monitor.trajectory_report import save_trajectory_png

        db = store.open_db(run_dir)
        report["trajectory_png"] = str(save_trajectory_png(db, args.trajectory_png, str(run_dir)))
    out = sys.stderr if args.json else sys.stdout
    if args.report or not args.json:
        _print_report(report, out)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    return 0


def _print_report(r: dict, out) -> None:
    def p(text=""):
        print(text, file=out)

    p(f"run {r['run_dir']}: {r['status']}, step {r['step']}, {r['tokens']:,} tokens")
    if r["loss"] is not None:
        p(
            f"loss {r['loss']:.4f}"
            + (f"  ({r['tokens_per_s']:,.0f} tok/s)" if r["tokens_per_s"] else "")
        )
        for name, v in sorted(r["source_loss"].items()):
            p(f"  {name:<16} {v:.4f}")
    if r["mixture"]:
        p(f"mixture ({r['phase']}): " + ", ".join(f"{k} {v:.3f}" for k, v in r["mixture"].items()))
    if r["heldout_bpb"]:
        langs = ", ".join(f"{k} {v:.4f}" for k, v in r["heldout_bpb"]["languages"].items())
        p(f"held-out bits/byte at step {r['heldout_bpb']['step']}: {langs}")
    if r["events"]:
        p("events: " + ", ".join(f"{k} x{n}" for k, n in sorted(r["events"].items())))
        for e in r["recent_events"]:
            p(f"  step {e['step']:>6}  {e['kind']:<10} {e['message']}")
    if r["trajectory"]["types"]:
        from aquila.monitor.trajectory_report import format_summary

        for line in format_summary(r["trajectory"]):
            p(line)
    p("suggestions:" if r["suggestions"] else "suggestions: none")
    for s in r["suggestions"]:
        p(f"  - {s['message']}")
        if s["command"]:
            p(f"    command: {s['command']['kind']} {json.dumps(s['command']['args'])}")
    if r.get("png"):
        p(f"plot saved to {r['png']}")
    if r.get("trajectory_png"):
        p(f"weight-trajectory plot saved to {r['trajectory_png']}")
