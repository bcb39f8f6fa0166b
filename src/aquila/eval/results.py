"""Where evaluation results go: the run database's ``evals`` table, a table on the terminal.

Results are ``{task name: {metric: value, ..., "chance": c}}``. :func:`record_results` is the
one place that stores task results for a run, for ``aquila eval RUN`` and for the background
evaluator alike: one row per task and checkpoint step, ``task`` its unique name, ``data``
``{"metrics": {...}, "spec": the task as given, "path": its file made absolute, "kind": ...,
"origin": "aquila eval" or "evaluator", "checkpoint": "step-N", ...}``. The run database's ``evals()`` reads them (and the
evaluator's own ``heldout-bpb`` rows); the dashboard draws them over steps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, Any]]
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_step(model_dir: Path) -> int | None:
    """The step of a ``checkpoints/step-N`` dir, or None for a model dir outside a run."""
    m = _STEP_DIR.match(model_dir.name)
    return int(m.group(1)) if m and model_dir.parent.name == "checkpoints" else None


def record_results(
    run_dir: str | Path,
    step: int,
    results: Results,
    tasks: list | None = None,
    origin: str = "aquila eval",
    meta: dict | None = None,
) -> Path:
    """Store ``results`` of checkpoint ``step`` in the run database, one row per task, each
    with the exact spec of its task (``tasks``: the :class:`Task` objects, by name)."""
    from aquila.engine.rundb import RunDB

    by_name = {t.name: t for t in tasks or []}
    db = RunDB(run_dir)
    for name, metrics in results.items():
        task = by_name.get(name)
        row = {
            "metrics": metrics,
            "spec": task.spec if task else name,
            "kind": task.kind if task else "",
            "origin": origin,
            **(meta or {}),
        }
        if task is not None and task.path:
            row["path"] = task.path
        if task is not None and task.extra.get("fewshot_source"):
            row["fewshot_from"] = task.extra["fewshot_source"]
        db.add_eval(step, name, row)
    return db.path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def results_table(
    results: Results, titles: list[str] | None = None, others: list[Results] | None = None
):
    """A rich Table of task / metric / value (/ chance); ``others`` add columns side by side."""
    from rich.table import Table

    columns = [results, *(others or [])]
    titles = titles or ["value"] * len(columns)
    table = Table(show_header=True, header_style="bold")
    table.add_column("task")
    table.add_column("metric")
    for t in titles:
        table.add_column(t, justify="right")
    table.add_column("chance", justify="right")
    for task, metrics in results.items():
        for metric in metrics:
            if metric == "chance" or _unigram_of(metric, metrics) is not None:
                continue  # shown in the chance column of its bpb row
            row = [_fmt(c.get(task, {}).get(metric, "")) for c in columns]
            table.add_row(task, metric, *row, _fmt_chance(metric, metrics))
    return table


def _unigram_of(metric: str, metrics: dict[str, Any]) -> str | None:
    """The bpb metric a ``unigram...`` metric stands beside (``unigram_en``: ``bpb_en``)."""
    if metric.startswith("unigram") and "bpb" + metric[len("unigram") :] in metrics:
        return "bpb" + metric[len("unigram") :]
    return None


def _fmt_chance(metric: str, metrics: dict[str, Any]) -> str:
    """The chance column: a bpb metric's own byte-unigram entropy where the task measured it
    (``bpb:PATH`` per file and language), else the task's chance; none for counts."""
    if metric in ("n", "seconds", "bytes", "files"):
        return ""
    own = metrics.get("unigram" + metric[3:]) if metric.startswith("bpb") else None
    chance = own if own is not None else metrics.get("chance")
    return _fmt(chance) if chance is not None else ""
