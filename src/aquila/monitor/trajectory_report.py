"""What the stored weight trajectories say: when each parameter type settles, whether attention
projections settle before the MLP ones, and how the distance moves at a data-phase boundary.

The criterion is stated with every answer: a type has *settled* at the first checkpoint where its
distance (Fréchet distance between consecutive per-layer std curves, per 1B tokens) falls below
``fraction`` (10 %) of its first measured value; a group of types has settled when all its types
have. The report says whether each type stays below after settling, since a phase change or an
LR change can raise it again.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from aquila.engine.rundb import RunDB
from aquila.errors import UserError
from aquila.monitor import store

ATTENTION = ("q", "k", "v", "o")
MLP = ("gate", "up", "down")
NORMS = ("input_layernorm", "post_attention_layernorm")
FRACTION = 0.1


def distance_series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per parameter type, its measured distances in token order. A distance covers the training
    from the previous checkpoint (``from_tokens``) to this one (``tokens``); its ``phase`` is the
    phase in force at the interval's start (a checkpoint's label names the phase its next sample
    comes from)."""
    at = {r["step"]: r for r in rows}
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["tokens"], r["step"])):
        if r["distance"] is None:
            continue
        prev = at.get(r["prev_step"])
        out.setdefault(r["ptype"], []).append(
            {
                "step": r["step"],
                "tokens": r["tokens"],
                "from_tokens": prev["tokens"] if prev else None,
                "phase": prev["label"] if prev else r["label"],
                "distance": r["distance"],
            }
        )
    return out


def phase_spans(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The data phases in token order, each from the first checkpoint labelled with it (where
    the phase starts when it starts at a checkpoint, else up to one interval later)."""
    spans: list[dict[str, Any]] = []
    seen: set[int] = set()
    for r in sorted(rows, key=lambda r: (r["tokens"], r["step"])):
        if r["step"] in seen:
            continue
        seen.add(r["step"])
        if not spans or spans[-1]["phase"] != r["label"]:
            spans.append({"phase": r["label"], "from_tokens": r["tokens"], "from_step": r["step"]})
    return spans


def _settle(points: list[dict[str, Any]], fraction: float) -> dict[str, Any]:
    first = points[0]["distance"]
    limit = fraction * first
    at = next((i for i, p in enumerate(points) if p["distance"] < limit), None)
    return {
        "first_distance": first,
        "first_tokens": points[0]["tokens"],
        "threshold": limit,
        "settled_tokens": points[at]["tokens"] if at is not None else None,
        "settled_step": points[at]["step"] if at is not None else None,
        "stays_below": all(p["distance"] < limit for p in points[at:]) if at is not None else None,
        "last_distance": points[-1]["distance"],
        "last_over_first": points[-1]["distance"] / first if first > 0 else None,
        "checkpoints": len(points),
    }


def _group(types: dict[str, dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    present = [n for n in names if n in types]
    tokens = [types[n]["settled_tokens"] for n in present]
    decay = [types[n]["last_over_first"] for n in present]
    return {
        "types": present,
        # A second, criterion-free reading: how far the distance fell by the last checkpoint.
        "median_last_over_first": statistics.median(decay)
        if present and None not in decay
        else None,
        # All of the group's types have settled: the latest of them.
        "settled_tokens": max(tokens) if present and None not in tokens else None,
        "unsettled": [n for n, t in zip(present, tokens) if t is None],
    }


def settle_summary(
    rows: list[dict[str, Any]], fraction: float = FRACTION, window: int = 2
) -> dict[str, Any]:
    """The settle criterion per type and per group (attention q,k,v,o vs MLP gate,up,down), the
    verdict in words, and the distance ratio across each phase boundary."""
    series = distance_series(rows)
    order = [*ATTENTION, *MLP, *NORMS]
    names = sorted(series, key=lambda p: (order.index(p) if p in order else len(order), p))
    types = {p: _settle(series[p], fraction) for p in names}
    attn, mlp = _group(types, ATTENTION), _group(types, MLP)
    criterion = (
        f"a type has settled at the first checkpoint where its distance falls below "
        f"{fraction:.0%} of its first measured value; a group when all its types have"
    )
    if not attn["types"] or not mlp["types"]:
        verdict, answer = "not enough checkpoints: each type needs two distances", None
    elif attn["settled_tokens"] is None or mlp["settled_tokens"] is None:
        late = [g for g, s in (("attention", attn), ("MLP", mlp)) if s["settled_tokens"] is None]
        answer = None
        verdict = f"undecided: {' and '.join(late)} not settled by the last checkpoint"
        if len(late) == 1:
            answer = late[0] == "MLP"
            other = "attention" if late[0] == "MLP" else "MLP"
            s = attn if other == "attention" else mlp
            verdict = (
                f"{other} projections settled (at {s['settled_tokens']:,} tokens), "
                f"{late[0]} not by the last checkpoint"
            )
    else:
        a, m = attn["settled_tokens"], mlp["settled_tokens"]
        answer = a < m
        if a == m:
            verdict = f"attention and MLP projections settled at the same checkpoint ({a:,} tokens)"
            answer = False
        else:
            first, second = ("attention", "MLP") if a < m else ("MLP", "attention")
            verdict = (
                f"{first} projections settled first: attention at {a:,} tokens, MLP at {m:,} tokens"
            )
    spans = phase_spans(rows)
    boundaries = []
    for prev, nxt in zip(spans, spans[1:]):
        ratios = []
        for pts in series.values():
            # The last interval that ended by the change against the largest of the first
            # ``window`` intervals that began after it (a response may lag one interval).
            before = [p for p in pts if p["tokens"] <= nxt["from_tokens"]]
            after = [
                p
                for p in pts
                if p["from_tokens"] is not None and p["from_tokens"] >= nxt["from_tokens"]
            ][:window]
            if before and after and before[-1]["distance"] > 0:
                ratios.append(max(p["distance"] for p in after) / before[-1]["distance"])
        boundaries.append(
            {
                "from": prev["phase"],
                "to": nxt["phase"],
                "tokens": nxt["from_tokens"],
                "window": window,
                # > 1: the weights moved faster right after the change than right before it.
                "median_ratio": statistics.median(ratios) if ratios else None,
                "max_ratio": max(ratios) if ratios else None,
            }
        )
    return {
        "fraction": fraction,
        "criterion": criterion,
        "types": types,
        "attention": attn,
        "mlp": mlp,
        "attention_first": answer,
        "verdict": verdict,
        "phases": spans,
        "boundaries": boundaries,
    }


def format_summary(s: dict[str, Any]) -> list[str]:
    lines = [f"weight trajectory ({s['criterion']}):"]
    for ptype, t in s["types"].items():
        settled = (
            f"settled at {t['settled_tokens']:,} tokens (step {t['settled_step']})"
            + ("" if t["stays_below"] else ", rises above again later")
            if t["settled_tokens"] is not None
            else "not settled"
        )
        lines.append(
            f"  {ptype:<25} first {t['first_distance']:.3g} at {t['first_tokens']:,} tokens; "
            f"{settled}; last {t['last_distance']:.3g}"
        )
    lines.append(f"  {s['verdict']}")
    a, m = s["attention"]["median_last_over_first"], s["mlp"]["median_last_over_first"]
    if a is not None and m is not None:
        lines.append(
            f"  last / first distance (median over types): attention x{a:.3f}, MLP x{m:.3f}"
        )
    for b in s["boundaries"]:
        if b["median_ratio"] is not None:
            lines.append(
                f"  phase {b['from']} -> {b['to']} at {b['tokens']:,} tokens: largest of the next "
                f"{b['window']} distances / the last before x{b['median_ratio']:.2f} (median over "
                f"types, max x{b['max_ratio']:.2f})"
            )
    return lines


PHASE_COLOURS = ("#dbe9f6", "#fde0c5", "#d9f0d3", "#f2d7ee", "#fff2ae", "#e5e5e5")


def save_trajectory_png(db: RunDB, out: str | Path, title: str = "") -> Path:
    """Distance over tokens per parameter type (attention, MLP, norms), phases shaded, each
    type's settle point marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--trajectory-png needs matplotlib: pip install 'aquila[monitor]'"
        ) from None
    rows = store.trajectory(db)
    series = distance_series(rows)
    if not series:
        raise UserError(
            f"{db.path}: no weight-trajectory distances yet (they need two checkpoints)"
        )
    summary = settle_summary(rows)
    spans = summary["phases"]
    end = max(r["tokens"] for r in rows)
    groups = [
        ("attention (q, k, v, o)", ATTENTION),
        ("MLP (gate, up, down)", MLP),
        ("norms", NORMS),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), sharey=True)
    for ax, (name, names) in zip(axes, groups):
        for i, span in enumerate(spans):
            stop = spans[i + 1]["from_tokens"] if i + 1 < len(spans) else end
            ax.axvspan(
                0 if i == 0 else span["from_tokens"],
                stop,
                color=PHASE_COLOURS[i % len(PHASE_COLOURS)],
                label=f"phase: {span['phase']}",
                zorder=0,
            )
        for ptype in names:
            pts = series.get(ptype)
            if not pts:
                continue
            (line,) = ax.plot(
                [p["tokens"] for p in pts],
                [p["distance"] for p in pts],
                marker="o",
                ms=3,
                label=ptype,
            )
            t = summary["types"][ptype]
            if t["settled_tokens"] is not None:
                d = next(p["distance"] for p in pts if p["tokens"] == t["settled_tokens"])
                ax.scatter(
                    [t["settled_tokens"]],
                    [d],
                    marker="X",
                    s=90,
                    color=line.get_color(),
                    edgecolor="black",
                    zorder=4,
                )
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("Fréchet distance / 1B tokens")
    fig.suptitle(
        (title + "\n" if title else "")
        + f"X: settled (below {summary['fraction']:.0%} of the first distance). {summary['verdict']}",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
