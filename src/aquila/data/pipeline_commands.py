"""`aquila data add|clean|dedup|decontaminate|status|mixture`: the DMU pipeline commands.

Registered by ``aquila.data.commands`` on the ``data`` subparsers; heavy imports stay inside
the command functions so ``aquila --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aquila.data.kinds import KINDS, LANGS

WORKSPACE_HELP = (
    "data workspace directory holding catalog.sqlite and stage outputs (default: ./data)"
)


def _common(p: argparse.ArgumentParser, executor: bool = False) -> None:
    p.add_argument("--workspace", type=Path, default=Path("data"), help=WORKSPACE_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON summary on the last line")
    if executor:
        p.add_argument(
            "--executor", choices=["local", "ray"], default="local",
            help="local: a process pool on this machine; ray: ray tasks (RAY_ADDRESS or local)",
        )  # fmt: skip
        p.add_argument(
            "--workers", type=int, default=None, help="local processes (default: all cores)"
        )


def register(dsub) -> None:
    p = dsub.add_parser("add", help="register a source and its files in the catalog")
    p.add_argument("name", help="source name, e.g. kjv or peoples_daily")
    p.add_argument(
        "paths", nargs="+", type=Path,
        help="files, directories (walked recursively) or quoted globs: .txt, .jsonl, .jsonl.gz, "
        ".jsonl.zst, .parquet, .arrow, or a `datasets` save_to_disk directory",
    )  # fmt: skip
    p.add_argument(
        "--text-field", default="text", metavar="NAME",
        help="the JSON field or column holding the text (default: text)",
    )  # fmt: skip
    p.add_argument("--lang", required=True, choices=LANGS)
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--replace", action="store_true", help="overwrite an existing source")
    _common(p)
    p.set_defaults(func=cmd_add)

    p = dsub.add_parser(
        "clean",
        help="normalise, strip boilerplate, drop wrong-language and low-quality documents",
        description="Unicode NFC, control characters removed, boilerplate lines stripped, "
        "language identification (py3langid) and Gopher-style quality rules (words for English, "
        "characters for Chinese). Every removed document is counted with its reason.",
    )
    p.add_argument("--source", action="append", help="only these sources (repeatable)")
    p.add_argument("--part-docs", type=int, default=1000, help="documents per output part")
    _common(p, executor=True)
    p.set_defaults(func=cmd_clean)

    p = dsub.add_parser(
        "dedup",
        help="remove exact and near-duplicate documents within and across sources",
        description="Exact duplicates by a hash of normalised text; near duplicates by MinHash "
        "LSH over character 5-grams (Chinese) or word 5-grams (other text). The first document "
        "in source registration order is kept.",
    )
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold (default 0.8)")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    p.add_argument("--examples", type=int, default=5, help="example pairs to report")
    _common(p, executor=True)
    p.set_defaults(func=cmd_dedup)

    p = dsub.add_parser(
        "decontaminate",
        help="remove documents sharing long n-grams with evaluation sets",
        description="Documents containing any English word n-gram (default 13) or Chinese "
        "character n-gram (default 15) of an evaluation item are removed and listed.",
    )
    p.add_argument("--against", nargs="+", type=Path, required=True, metavar="EVAL_FILE",
                   help="evaluation sets: .jsonl (text/question/answer/choices), .csv, .txt")  # fmt: skip
    p.add_argument("--ngram", type=int, default=13, help="English word n-gram length")
    p.add_argument("--zh-ngram", type=int, default=15, help="Chinese character n-gram length")
    _common(p, executor=True)
    p.set_defaults(func=cmd_decontaminate)

    p = dsub.add_parser("status", help="show sources, files, stage counts and mixtures")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = dsub.add_parser("mixture", help="validate a mixture TOML and record it in the catalog")
    p.add_argument("file", type=Path, help="mixture TOML file")
    p.add_argument("--tokens-per-sample", type=int, default=None,
                   help="with --chunks: check repetition against max_epochs")  # fmt: skip
    p.add_argument("--chunks", action="append", default=[], metavar="SOURCE=N",
                   help="number of training chunks of a source (repeatable)")  # fmt: skip
    _common(p)
    p.set_defaults(func=cmd_mixture)


def _workspace(args):
    from aquila.data.workspace import DataWorkspace

    return DataWorkspace(args.workspace)


def _emit(args, obj: dict) -> None:
    if args.json:
        print(json.dumps(obj, ensure_ascii=False))


def cmd_add(args) -> int:
    from rich.console import Console

    ws = _workspace(args)
    src = ws.catalog.add_source(
        args.name, args.paths, args.lang, args.kind, args.replace, args.text_field
    )
    size = sum(f.size_bytes for f in src.files)
    Console(stderr=args.json).print(
        f"source [bold]{src.name}[/] ({src.lang}, {src.kind}): {len(src.files)} files, {size:,} bytes"
    )
    _emit(args, {"source": src.name, "files": len(src.files), "bytes": size})
    return 0


def _run_stage(args, stage: str, call) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from aquila.data.pipeline import Pipeline
    from aquila.data.report import summary_table

    console = Console(stderr=args.json)
    ws = _workspace(args)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        job = bar.add_task(f"{stage} parts", total=None)
        pipe = Pipeline(
            ws, args.executor, args.workers, lambda d, t: bar.update(job, completed=d, total=t)
        )
        summary = call(pipe)
    console.print(summary_table(summary))
    _emit(args, summary.to_json())
    return 0


def cmd_clean(args) -> int:
    return _run_stage(args, "clean", lambda p: p.clean(args.source, part_docs=args.part_docs))


def cmd_dedup(args) -> int:
    from aquila.data.dedup import DedupConfig
    from aquila.errors import UserError

    if not 0 < args.threshold <= 1:
        raise UserError(f"--threshold must be in (0, 1], got {args.threshold}")
    cfg = DedupConfig(threshold=args.threshold, num_perm=args.num_perm)
    return _run_stage(args, "dedup", lambda p: p.dedup(cfg, args.examples))


def cmd_decontaminate(args) -> int:
    from aquila.data.decontam import DecontamConfig
    from aquila.errors import UserError

    if args.ngram < 3 or args.zh_ngram < 3:
        raise UserError("--ngram and --zh-ngram must be at least 3")
    cfg = DecontamConfig(en_ngram=args.ngram, zh_ngram=args.zh_ngram)
    return _run_stage(args, "decontaminate", lambda p: p.decontaminate(args.against, cfg))


def cmd_status(args) -> int:
    from rich.console import Console

    from aquila.data.report import status_data, status_tables

    ws = _workspace(args)
    data = status_data(ws)
    console = Console(stderr=args.json)
    for table in status_tables(data):
        console.print(table)
    _emit(args, data)
    return 0


def cmd_mixture(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from aquila.data.mixture import check_repetition, load_mixture
    from aquila.errors import UserError

    # The mixture is checked against the workspace's sources: without a catalog every source
    # would be "unknown", and opening one would leave an empty catalog behind.
    if not (args.workspace / "catalog.sqlite").is_file():
        raise UserError(
            f"--workspace {args.workspace}: no catalog.sqlite (run `aquila data add` first, or "
            "give the workspace that holds the mixture's sources)"
        )
    ws = _workspace(args)
    plan = load_mixture(args.file, set(ws.catalog.source_names()))
    version = ws.catalog.record_mixture(plan.name, args.file.read_text(encoding="utf-8"))
    table = Table(title=f"mixture {plan.name} v{version}")
    for col in ("phase", "length", *plan.sources):
        table.add_column(col)
    for ph in plan.phases:
        length = f"{ph.tokens:,} tokens" if ph.tokens is not None else f"{ph.steps:,} steps"
        table.add_row(ph.name, length, *(f"{ph.weights.get(s, 0):.3f}" for s in plan.sources))
    console = Console(stderr=args.json)
    console.print(table)
    warnings: list[str] = []
    if args.chunks:
        if not args.tokens_per_sample:
            raise UserError("--chunks needs --tokens-per-sample")
        chunks = {}
        for item in args.chunks:
            name, _, n = item.partition("=")
            if not n.isdigit():
                raise UserError(f"--chunks expects SOURCE=N, got {item!r}")
            chunks[name] = int(n)
        warnings = check_repetition(plan, chunks, args.tokens_per_sample)
        for w in warnings:
            console.print(f"[yellow]warning:[/] {w}")
    _emit(args, {"name": plan.name, "version": version, "phases": len(plan.phases),
                 "warnings": warnings})  # fmt: skip
    return 0
