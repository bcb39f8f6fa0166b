"""`aquila tokenizer train` and `aquila tokenizer stats`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aquila.errors import UserError

INPUT_HELP = (
    "a file or directory (recursive): .txt is one document per file, .jsonl one per line "
    "(its 'text' field), .parquet its 'text' column, source files (.py, .js, ...) are code; "
    "prefix LANG= (en=, zh=, code=) to set the language of all its documents (repeatable)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="train a bilingual BPE tokenizer or measure one",
        description="Train a bilingual byte-level BPE tokenizer, or measure bytes per token.",
    )
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    _register_train(tsub)
    _register_stats(tsub)


def _register_train(tsub: argparse._SubParsersAction) -> None:
    t = tsub.add_parser(
        "train",
        help="train a byte-level BPE on English/Chinese text",
        description=(
            "Train a GPT-2 style byte-level BPE (lossless on any Unicode text) with Aquila2's 8\n"
            "special tokens appended after the BPE vocabulary: --vocab-size 100000 gives 100,008\n"
            "ids, [CLS]=100006 (BOS) and </s>=100007 (EOS).\n\n"
            "A document is Chinese when more than 30% of its non-space characters are CJK, else\n"
            "English/code. Documents are sampled (seeded) so that Chinese makes up --zh-ratio of\n"
            "the training bytes, up to --max-bytes in all.\n\n"
            "Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json (loadable by\n"
            "transformers) and training.json (settings and input statistics)."
        ),
        epilog=(
            "examples:\n"
            "  aquila tokenizer train --input corpus/en corpus/zh --vocab-size 100000 --out tok\n"
            "  aquila tokenizer train --input news.jsonl code=src/ --vocab-size 32000 \\\n"
            "      --zh-ratio 0.4 --max-bytes 2000000000 --out tok32k --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH",
                   help=INPUT_HELP)  # fmt: skip
    t.add_argument("--vocab-size", type=int, default=100_000,
                   help="BPE vocabulary size before the 8 specials (default 100000)")  # fmt: skip
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--zh-ratio", type=float, default=0.5,
                   help="share of Chinese in the training bytes (default 0.5)")  # fmt: skip
    t.add_argument("--max-bytes", type=int, default=None,
                   help="cap on the training bytes (default: as much as the ratio allows)")  # fmt: skip
    t.add_argument("--min-frequency", type=int, default=2,
                   help="a merge must occur at least this often (default 2)")  # fmt: skip
    t.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    t.add_argument("--json", action="store_true",
                   help="print one JSON summary object on the last line of stdout")  # fmt: skip
    t.set_defaults(func=_train)


def _register_stats(tsub: argparse._SubParsersAction) -> None:
    s = tsub.add_parser(
        "stats",
        help="bytes per token per language (en, zh, code)",
        description=(
            "Encode the inputs with a tokenizer and report UTF-8 bytes per token for each "
            "language: the compression figure tokenizers are compared by (higher is better). "
            "Without --input, measures the held-out split of the bundled sample corpus."
        ),
        epilog=(
            "examples:\n"
            "  aquila tokenizer stats tok --input en=heldout/en zh=heldout/zh code=src/\n"
            "  aquila tokenizer stats runs/run-20260101-120000 --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("tokenizer", metavar="DIR", help="tokenizer directory (or a run directory)")
    s.add_argument("--input", nargs="+", action="extend", default=[], metavar="PATH",
                   help=INPUT_HELP)  # fmt: skip
    s.add_argument("--json", action="store_true",
                   help="print one JSON object keyed by language on the last line of stdout")  # fmt: skip
    s.set_defaults(func=_stats)


def _train(args: argparse.Namespace) -> int:
    from aquila.tokenizer.stats import parse_input
    from aquila.tokenizer.train import TrainSettings, save_trained, train_from_inputs

    specs = [parse_input(x) for x in args.input]
    out = Path(args.out)
    if out.is_file():
        raise UserError(f"--out {out}: is a file, expected a directory")
    settings = TrainSettings(
        vocab_size=args.vocab_size,
        zh_ratio=args.zh_ratio,
        max_bytes=args.max_bytes,
        min_frequency=args.min_frequency,
        seed=args.seed,
    )
    tok, info = train_from_inputs(specs, settings, show_progress=sys.stderr.isatty())
    save_trained(tok, info, out)
    used = info["bytes_used"]
    if not args.json:
        total = sum(used.values()) or 1
        print(f"trained {tok.vocab_size:,} tokens in {info['seconds']:.1f} s -> {out}")
        for lang, n in used.items():
            avail = info["bytes_available"][lang]
            print(f"  {lang:<5} {n / 1e6:10.2f} MB used of {avail / 1e6:.2f} MB ({n / total:.0%})")
        for note in info["notes"]:
            print(f"  note: {note}")
    else:
        summary = {
            "vocab_size": tok.vocab_size,
            "bytes_used": used,
            "bytes_available": info["bytes_available"],
            "seconds": info["seconds"],
            "out": str(out),
            "notes": info["notes"],
        }
        print(json.dumps(summary, ensure_ascii=False))
    return 0


def _resolve_tokenizer_dir(path: Path) -> Path:
    if (path / "tokenizer" / "tokenizer.json").is_file():
        return path / "tokenizer"
    return path


def _stats(args: argparse.Namespace) -> int:
    from aquila.tokenizer import Tokenizer
    from aquila.tokenizer.stats import (
        InputDoc,
        bytes_per_token,
        input_files,
        iter_file_documents,
        parse_input,
    )

    tok = Tokenizer.load(_resolve_tokenizer_dir(Path(args.tokenizer)))
    if args.input:
        specs = [parse_input(x) for x in args.input]
        docs = [d for s in specs for f in input_files(s) for d in iter_file_documents(f, s.lang)]
        if not docs:
            raise UserError(f"--input {' '.join(args.input)}: no text found")
    else:
        from aquila.data.samples import load_sample_corpus

        docs = [
            InputDoc(s.lang, text, s.name)
            for s in load_sample_corpus("heldout")
            for text in s.documents
        ]
    stats = bytes_per_token(tok, docs).to_json()
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"{'lang':<6} {'documents':>10} {'bytes':>12} {'tokens':>12} {'bytes/token':>12}")
    for lang, s in stats.items():
        print(
            f"{lang:<6} {s['documents']:>10,} {s['bytes']:>12,} {s['tokens']:>12,} "
            f"{s['bytes_per_token']:>12.3f}"
        )
    return 0
