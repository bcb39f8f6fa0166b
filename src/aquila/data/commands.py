"""`aquila data ...`: tokenize sources into token shards and inspect a data directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aquila.data.kinds import KINDS, LANGS
from aquila.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="prepare training data: tokenize sources, inspect token shards",
        description="Prepare training data: tokenize sources into token shards and inspect them.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _register_tokenize(dsub)
    _register_inspect(dsub)
    try:
        from aquila.data import pipeline_commands
    except ModuleNotFoundError as exc:
        if exc.name != "aquila.data.pipeline_commands":
            raise
    else:
        pipeline_commands.register(dsub)


def _register_tokenize(dsub: argparse._SubParsersAction) -> None:
    t = dsub.add_parser(
        "tokenize",
        help="tokenize .txt/.jsonl/.parquet files into a token source",
        description=(
            "Tokenize the documents of INPUT files or directories into DATA_DIR/NAME: tokens.bin "
            "(uint32, each document followed by the EOS token), doc_offsets.npy and "
            "manifest.json. A .txt file is one document; .jsonl and .parquet give one document "
            "per record's 'text'. Invalid JSONL lines are skipped and counted. A finished "
            "source is left alone (use --force to redo it); an unfinished one is redone."
        ),
    )
    t.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        type=Path,
        help="files or directories (or none with --workspace)",
    )
    t.add_argument("--name", help="source name (a directory under DATA_DIR); required with INPUT")
    t.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help="tokenize the catalog's sources from their last finished stage (clean, dedup or "
        "decontaminate) instead of INPUT files; --source picks some",
    )
    t.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME",
        help="with --workspace: only this source (repeatable)",
    )
    t.add_argument("--tokenizer", required=True, type=Path, metavar="DIR", help="tokenizer dir")
    t.add_argument("--out", required=True, type=Path, metavar="DATA_DIR", help="data directory")
    t.add_argument("--lang", default="en", choices=LANGS, help="language (default: en)")
    t.add_argument("--kind", default="web", choices=KINDS, help="kind of text (default: web)")
    t.add_argument(
        "--batch-docs", type=int, default=1024, help="documents per encode batch (default: 1024)"
    )
    t.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="encode in N worker processes (default: 1, which still uses the tokenizer's "
        "threads); the shards are identical whatever N",
    )
    t.add_argument("--force", action="store_true", help="redo a source that is already finished")
    t.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    t.set_defaults(func=_tokenize)


def _register_inspect(dsub: argparse._SubParsersAction) -> None:
    i = dsub.add_parser(
        "inspect",
        help="list the token sources of a data directory",
        description=(
            "List the finished token sources of DATA_DIR with their documents, tokens, largest "
            "token id and tokenizer, after checking each shard against its manifest (a damaged "
            "shard is refused naming the file)."
        ),
    )
    i.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_inspect)


def _tokenize(args: argparse.Namespace) -> int:
    from aquila.data.shards import tokenize_source
    from aquila.tokenizer import Tokenizer

    if args.batch_docs < 1:
        raise UserError(f"--batch-docs must be >= 1, got {args.batch_docs}")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    tokenizer = Tokenizer.load(args.tokenizer)
    if args.workspace is not None:
        return _tokenize_workspace(args, tokenizer)
    if not args.inputs or not args.name:
        raise UserError("give INPUT files with --name, or --workspace DIR")
    manifest = tokenize_source(
        args.name,
        args.inputs,
        tokenizer,
        args.out,
        lang=args.lang,
        kind=args.kind,
        batch_docs=args.batch_docs,
        show_progress=not args.json,
        force=args.force,
        workers=args.workers,
    )
    if args.json:
        print(json.dumps(manifest, ensure_ascii=False))
        return 0
    where = args.out / args.name
    if manifest.get("skipped_existing"):
        print(f"{where}: already tokenized (use --force to redo)")
    else:
        print(f"{where}: wrote {manifest['documents']:,} documents, {manifest['tokens']:,} tokens")
        print(
            f"  {manifest['bytes'] / 1e6:.2f} MB of text in {manifest['seconds']:.2f} s "
            f"({manifest['mb_per_s']:.2f} MB/s, {manifest['workers']} worker(s)), "
            f"{manifest['bytes'] / max(manifest['tokens'], 1):.2f} bytes/token"
        )
    skipped = manifest["skipped"]
    if skipped["total"]:
        reasons = ", ".join(
            f"{k} {v}" for k, v in skipped.items() if k not in ("total", "examples")
        )
        print(f"  skipped {skipped['total']} record(s): {reasons}")
        for ex in skipped["examples"][:5]:
            print(f"    {ex}")
    return 0


def _tokenize_workspace(args: argparse.Namespace, tokenizer) -> int:
    """Every catalog source (or --source ones), read from the output of its last stage."""
    from aquila.data.shards import tokenize_source
    from aquila.data.workspace import DataWorkspace

    if args.inputs or args.name:
        raise UserError("--workspace tokenizes catalog sources: give no INPUT and no --name")
    if not (args.workspace / "catalog.sqlite").is_file():
        raise UserError(f"--workspace {args.workspace}: no catalog.sqlite (run `aquila data add`)")
    ws = DataWorkspace(args.workspace)
    try:
        manifests = []
        for src in ws.catalog.sources(args.source or None):
            parts = ws.final_parts(src.name) or [Path(f.path) for f in src.files]
            manifests.append(
                tokenize_source(
                    src.name,
                    parts,
                    tokenizer,
                    args.out,
                    lang=src.lang,
                    kind=src.kind,
                    batch_docs=args.batch_docs,
                    show_progress=not args.json,
                    force=args.force,
                    workers=args.workers,
                )
            )
            if not args.json:
                m = manifests[-1]
                state = "already tokenized" if m.get("skipped_existing") else "tokenized"
                speed = "" if m.get("skipped_existing") else f", {m['mb_per_s']:.2f} MB/s"
                print(
                    f"{args.out / src.name}: {state}, {m['documents']:,} documents, "
                    f"{m['tokens']:,} tokens{speed}"
                )
    finally:
        ws.close()
    if args.json:
        print(json.dumps({"data_dir": str(args.out), "sources": manifests}, ensure_ascii=False))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from aquila.data.shards import available_sources, load_sources

    if not args.data_dir.is_dir():
        raise UserError(f"data directory not found: {args.data_dir}")
    names = available_sources(args.data_dir)
    sources = load_sources(args.data_dir, names) if names else {}
    rows = [
        {
            "source": name,
            "lang": s.manifest["lang"],
            "kind": s.manifest["kind"],
            "documents": s.num_documents,
            "tokens": s.num_tokens,
            "bytes": s.manifest["bytes"],
            "tokenizer_hash": s.tokenizer_hash,
            "max_token_id": s.scan().max_token_id,
        }
        for name, s in sources.items()
    ]
    unfinished = sorted(
        p.name for p in args.data_dir.iterdir() if p.is_dir() and p.name not in sources
    )
    if args.json:
        print(
            json.dumps({"data_dir": str(args.data_dir), "sources": rows, "unfinished": unfinished})
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(args.data_dir))
    numbers = ("documents", "tokens", "MB", "max id")
    for col in ("source", "lang", "kind", "documents", "tokens", "MB", "max id", "tokenizer"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in rows:
        table.add_row(
            r["source"],
            r["lang"],
            r["kind"],
            f"{r['documents']:,}",
            f"{r['tokens']:,}",
            f"{r['bytes'] / 1e6:.2f}",
            f"{r['max_token_id']:,}",
            r["tokenizer_hash"],
        )
    Console().print(table)
    total = sum(r["tokens"] for r in rows)
    print(f"{len(rows)} source(s), {total:,} tokens")
    if unfinished:
        print(f"unfinished (no manifest, redone by the next tokenize): {', '.join(unfinished)}")
    return 0
