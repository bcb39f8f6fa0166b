"""``aquila-lm-eval``: lm_eval's own command line, in a process where ``--model aquila`` exists.

lm_eval 0.4.x has no plugin discovery for models (its table is ``lm_eval.models.MODEL_MAPPING``),
so a model from another package is usable from the shell only where that package has registered
it first. Every option is lm_eval's; see ``aquila-lm-eval run --help``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    import aquila.eval.lm_eval_adapter  # noqa: F401  (registers "aquila")

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
