"""Two models side by side: task scores, size on disk and in memory, decoding speed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aquila.eval.lm import ModelLM
from aquila.eval.tasks import Task

SPEED_PROMPT = "In the beginning God created the heaven and the earth. 中华人民共和国"
SPEED_TOKENS = 64


def decode_speed(lm: ModelLM, new_tokens: int = SPEED_TOKENS, repeats: int = 2) -> float:
    """Greedy decoding tokens per second with the KV cache (best of ``repeats``)."""
    from aquila.model.generate import generate

    ids = [lm.tokenizer.eos_id, *lm.tokenizer.encode(SPEED_PROMPT)]
    n = min(new_tokens, lm.max_len - len(ids))
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = sum(1 for _ in generate(lm.model, ids, n, greedy=True))
        best = max(best, count / (time.perf_counter() - t0))
    return best


def size_report(model_dir: Path, model) -> dict[str, Any]:
    from aquila.model.io import weights_bytes
    from aquila.quant.model import linear_weight_bytes, model_memory_bytes

    return {
        "disk_bytes": weights_bytes(model_dir),
        "memory_bytes": model_memory_bytes(model),
        "linear_weight_bytes": linear_weight_bytes(model),
    }


def compare_models(
    a: str | Path,
    b: str | Path,
    tasks: list[Task],
    limit: int | None = None,
    num_fewshot: int = 0,
    batch_size: int = 8,
    show_progress: bool = True,
    unsafe_exec: bool = False,
) -> dict[str, Any]:
    """``{"models": [A, B], "results": [..], "size": [..], "tokens_per_s": [..]}``."""
    from aquila.eval.runner import evaluate, load_lm

    report: dict[str, Any] = {"models": [], "results": [], "size": [], "tokens_per_s": []}
    for path in (a, b):
        loaded = load_lm(path, batch_size)
        report["models"].append(str(loaded.model_dir) + (" (int4)" if loaded.quantized else ""))
        report["results"].append(
            evaluate(loaded.lm, tasks, limit, num_fewshot, show_progress, unsafe_exec)
        )
        report["size"].append(size_report(loaded.model_dir, loaded.lm.model))
        report["tokens_per_s"].append(round(decode_speed(loaded.lm), 1))
        del loaded
    for task, metrics in report["results"][0].items():
        other = report["results"][1].get(task, {})
        if "bpb" in metrics and "bpb" in other:
            metrics_b = other
            metrics_b["bpb_rel_change"] = metrics_b["bpb"] / metrics["bpb"] - 1
    return report


def compare_table(report: dict[str, Any]):
    from rich.table import Table

    from aquila.eval.results import _fmt

    a, b = report["results"]
    table = Table(show_header=True, header_style="bold")
    for col in ("task", "metric", report["models"][0], report["models"][1], "chance"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task in dict.fromkeys([*a, *b]):
        ma, mb = a.get(task, {}), b.get(task, {})
        chance = ma.get("chance", mb.get("chance"))
        for metric in dict.fromkeys([*ma, *mb]):
            if metric in ("chance", "n", "seconds"):
                continue
            table.add_row(
                task,
                metric,
                _fmt(ma.get(metric, "")),
                _fmt(mb.get(metric, "")),
                _fmt(chance) if chance is not None else "",
            )
    sa, sb = report["size"]
    for key in ("disk_bytes", "memory_bytes", "linear_weight_bytes"):
        table.add_row("size", key, f"{sa[key] / 1e6:.2f} MB", f"{sb[key] / 1e6:.2f} MB", "")
    ta, tb = report["tokens_per_s"]
    table.add_row("speed", "tokens/s (greedy)", f"{ta:.1f}", f"{tb:.1f}", "")
    return table
