"""The sweep's table: held-out bits per byte per language and the combined objective per ratio,
mean and spread over seeds; as JSON, markdown and a PNG."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from aquila.errors import UserError


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        # Sample standard deviation; 0 with a single seed (no spread measured).
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def summarize(results: list[dict[str, Any]], langs: tuple[str, str]) -> dict[str, Any]:
    """Per ratio (in the order given): the language shares and, per language and for the
    combined objective (the mean of the two swept languages' bpb), mean/sd/min/max over seeds."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get("combined") is not None:
            groups.setdefault(r["ratio"], []).append(r)
    rows = []
    for label, runs in groups.items():
        lang_names = sorted({lang for r in runs for lang in r["bpb"]})
        rows.append(
            {
                "ratio": label,
                "b_per_a": runs[0]["b"] / runs[0]["a"],
                "seeds": [r["seed"] for r in runs],
                "tokens": sorted({r["tokens"] for r in runs}),
                "bpb": {
                    lang: _stats([r["bpb"][lang] for r in runs if lang in r["bpb"]])
                    for lang in lang_names
                },
                "combined": _stats([r["combined"] for r in runs]),
            }
        )
    best = min(rows, key=lambda r: r["combined"]["mean"])["ratio"] if rows else None
    tokens = sorted({t for r in rows for t in r["tokens"]})
    return {
        "langs": list(langs),
        "objective": f"({langs[0]} bpb + {langs[1]} bpb) / 2",
        "rows": rows,
        "best": best,
        "same_tokens": len(tokens) <= 1,
        "tokens": tokens,
        "failed": [r["run_dir"] for r in results if r.get("combined") is None],
    }


def markdown(summary: dict[str, Any]) -> str:
    a, b = summary["langs"]
    rows = summary["rows"]
    if not rows:
        return "no finished runs\n"
    langs = [a, b] + sorted({lang for r in rows for lang in r["bpb"]} - {a, b})
    head = (
        f"| {a}:{b} | seeds | "
        + " | ".join(f"{lang} bpb" for lang in langs)
        + f" | combined ({a}+{b})/2 |"
    )
    lines = [head, "|" + "---|" * (len(langs) + 3)]

    def cell(s):
        return f"{s['mean']:.4f} ± {s['sd']:.4f}" if s["n"] > 1 else f"{s['mean']:.4f}"

    for r in rows:
        cells = [cell(r["bpb"][lang]) if lang in r["bpb"] else "-" for lang in langs]
        combined = cell(r["combined"])
        if r["ratio"] == summary["best"]:
            combined = f"**{combined}**"
        lines.append(
            f"| {r['ratio']} | {len(r['seeds'])} | " + " | ".join(cells) + f" | {combined} |"
        )
    lines.append("")
    lines.append(
        "mean ± sample standard deviation over seeds; bold: the lowest combined objective"
        + (
            ""
            if summary["same_tokens"]
            else f"; WARNING: runs differ in tokens {summary['tokens']}"
        )
    )
    return "\n".join(lines) + "\n"


def save_png(summary: dict[str, Any], out: str | Path, title: str = "") -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the sweep plot needs matplotlib: pip install 'aquila[monitor]'") from None
    a, b = summary["langs"]
    rows = sorted(summary["rows"], key=lambda r: r["b_per_a"])
    if not rows:
        raise UserError("no finished runs to plot")
    langs = [a, b] + sorted({lang for r in rows for lang in r["bpb"]} - {a, b})
    panels = [(f"{lang} held-out bits/byte", [r["bpb"].get(lang) for r in rows]) for lang in langs]
    panels.append((f"combined: ({a} + {b}) / 2", [r["combined"] for r in rows]))
    x = [r["b_per_a"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (name, stats) in zip(axes, panels):
        pts = [(xi, s) for xi, s in zip(x, stats) if s is not None]
        xs = [p[0] for p in pts]
        means = [p[1]["mean"] for p in pts]
        lo = [p[1]["mean"] - p[1]["min"] for p in pts]
        hi = [p[1]["max"] - p[1]["mean"] for p in pts]
        ax.errorbar(xs, means, yerr=[lo, hi], marker="o", capsize=4, lw=1.5)
        for xi, s in pts:  # every seed, so the spread is visible
            ax.scatter([xi] * len(s["values"]), s["values"], s=12, color="grey", zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [r["ratio"] for r in rows])
        ax.set_xlabel(f"{a}:{b} token ratio")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"{a}:{b} ratio sweep (mean, min-max over seeds, grey: each seed)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
