"""The `aquila` command: parses arguments and dispatches to the package that owns each command.

Each package exposes ``register(subparsers)`` in its ``commands`` module; those modules import
heavy dependencies (torch, tokenizers) lazily so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aquila.errors import EXIT_INTERRUPTED, ReportedError

COMMAND_MODULES = [
    "aquila.model.commands",
    "aquila.tokenizer.commands",
    "aquila.data.commands",
    "aquila.train.commands",
    "aquila.eval.commands",
    "aquila.quant.commands",
    "aquila.engine.control_commands",
    "aquila.engine.plan_commands",
    "aquila.monitor.commands",
    "aquila.scale.commands",
    "aquila.sweep.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aquila",
        description="Pretrain bilingual (English/Chinese) Aquila2-style language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        if args.command is None:
            # `aquila` alone: the default bilingual training run, as `aquila train` would do.
            args = parser.parse_args(["train", *(argv or sys.argv[1:])])
        else:
            parser.parse_args([args.command, "--help"])
    try:
        return int(args.func(args) or 0)
    except ReportedError as exc:
        _say(f"aquila: error: {_one_line(exc)}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("aquila: interrupted")
        return EXIT_INTERRUPTED


def _say(line: str) -> None:
    """One line to stderr in one write: the ranks of a torchrun job share one stderr, and
    print's separate write of the newline let two ranks' lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _one_line(exc: Exception) -> str:
    # A message quoting a file's content or a library's error may hold newlines.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
