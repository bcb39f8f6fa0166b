"""Where evaluation results go: a run's ``eval/step-N.json``, a table on the terminal.

Results are ``{task: {metric: value, ..., "chance": c}}``. :func:`record_results` is the one
place that stores them for a run, so that it can later write to the run database instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, Any]]
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_step(model_dir: Path) -> int | None:
    """The step of a ``checkpoints/step-N`` dir, or None for a model dir outside a run."""
    m = _STEP_DIR.match(model_dir.name)
    return int(m.group(1)) if m and model_dir.parent.name == "checkpoints" else None


def results_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "eval" / f"step-{step}.json"


def record_results(
    run_dir: str | Path, step: int, results: Results, meta: dict | None = None
) -> Path:
    """Store ``results`` for ``step`` of a run (atomically, replacing earlier ones)."""
    from aquila.model.io import save_file_atomic

    path = results_path(Path(run_dir), step)
    payload = {"step": step, **(meta or {}), "results": results}
    save_file_atomic(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())
    return path


def load_results(run_dir: str | Path) -> dict[int, Results]:
    """Every recorded step's results of a run, by step."""
    out = {}
    for p in sorted((Path(run_dir) / "eval").glob("step-*.json")):
        m = _STEP_DIR.match(p.stem)
        if m:
            out[int(m.group(1))] = json.loads(p.read_text())["results"]
    return out


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
        chance = metrics.get("chance")
        for metric in metrics:
            if metric == "chance":
                continue
            row = [_fmt(c.get(task, {}).get(metric, "")) for c in columns]
            table.add_row(
                task,
                metric,
                *row,
                _fmt(chance) if chance is not None and metric not in ("n", "seconds") else "",
            )
    return table
