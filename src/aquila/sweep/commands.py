"""`aquila sweep OUT_DIR`: train one model on several language ratios and tabulate held-out bpb."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train the same model on several language ratios; table and plot of held-out bpb",
        description=(
            "Train the same model for the same tokens on mixtures that differ only in the ratio "
            "between two languages (default zh:en), with other languages held at fixed shares "
            "(default code=0.1) and each language's sources in their natural proportions. Each "
            "(ratio, seed) is an ordinary run directory under OUT_DIR, scored on held-out text "
            "(bits per byte per language, and the combined objective: the mean of the two swept "
            "languages). Writes OUT_DIR/sweep.json, sweep.md and sweep.png. Running it again "
            "skips scored runs and resumes interrupted ones. Without --config the base run is a "
            "~9M-parameter model on the bundled sample corpus, 100 steps of 16 x 256 tokens."
        ),
        epilog=(
            "examples:\n"
            "  aquila sweep runs/ratio --ratios 1:0.5,1:1,1:2,1:3,1:4 --seeds 0,1\n"
            "  aquila sweep runs/ratio --set train.max_steps=300 --set model.preset='aquila-50m'\n"
            "  aquila sweep runs/mine --config cfg.toml --langs zh:en --hold code=0.05 --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", metavar="OUT_DIR", help="directory of the sweep's runs and tables")
    p.add_argument(
        "--ratios",
        default="1:0.5,1:1,1:2,1:3,1:4",
        help="comma-separated A:B ratios of the two languages (default: 1:0.5,1:1,1:2,1:3,1:4)",
    )
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    p.add_argument("--langs", default="zh:en", help="the two swept languages A:B (default: zh:en)")
    p.add_argument(
        "--hold",
        action="append",
        metavar="LANG=SHARE",
        help=(
            "a language kept at a fixed share of every mixture (repeatable; default: code=0.1; "
            "none: no language held)"
        ),
    )
    p.add_argument("--config", help="TOML run config of every run (default: the built-in base)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key of every run, e.g. train.max_steps=300 (repeatable)",
    )
    p.add_argument(
        "--heldout-bytes",
        type=int,
        default=150_000,
        metavar="N",
        help="held-out bytes scored per source (default: 150000)",
    )
    p.add_argument("--png", metavar="OUT.png", help="the plot's path (default: OUT_DIR/sweep.png)")
    p.add_argument("--quiet", action="store_true", help="no per-run progress output")
    p.add_argument(
        "--json", action="store_true", help="print the table as one JSON object on stdout"
    )
    p.set_defaults(func=_sweep)


def _seeds(text: str) -> list[int]:
    from aquila.errors import UserError

    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds {text!r}: comma-separated integers, e.g. 0,1") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: distinct integers >= 0")
    return seeds


def _sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aquila.errors import UserError
    from aquila.sweep.mixtures import parse_hold, parse_langs, parse_ratios
    from aquila.sweep.runner import SweepSpec, run_sweep
    from aquila.sweep.table import markdown, save_png, summarize

    if args.heldout_bytes < 1000:
        raise UserError(f"--heldout-bytes must be >= 1000, got {args.heldout_bytes}")
    if args.config and not Path(args.config).is_file():
        raise UserError(f"--config {args.config}: file not found")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    spec = SweepSpec(
        out=out,
        ratios=parse_ratios(args.ratios),
        seeds=_seeds(args.seeds),
        langs=parse_langs(args.langs),
        hold=parse_hold(args.hold) if args.hold is not None else {"code": 0.1},
        config=args.config,
        overrides=list(args.overrides),
        heldout_bytes=args.heldout_bytes,
    )

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    results = run_sweep(spec, quiet=args.quiet, say=say)
    summary = summarize(results, spec.langs)
    summary["runs"] = results
    table = markdown(summary)
    (out / "sweep.md").write_text(table, encoding="utf-8")
    summary["png"] = str(save_png(summary, args.png or out / "sweep.png"))
    summary["table"] = str(out / "sweep.md")
    (out / "sweep.json").write_text(
        json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    say(table.rstrip())
    say(f"table: {out / 'sweep.md'}, plot: {summary['png']}")
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    return 0
