"""Suggestions from what the run database shows: a source whose loss stopped improving, a loss
plateau, a source behind repeated spikes, divergence, held-out bits-per-byte going up.

A suggestion carries the control command that would apply it (``kind`` + ``args``, as the
dashboard enqueues them); nothing is applied without the user asking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aquila.engine.rundb import RunDB
from aquila.monitor import store

# A source counts as stalled when its mean loss over the latest window improved less than this
# (relative) on the window before it.
STALL_REL = 0.01
MIN_ROWS = 12


@dataclass
class Suggestion:
    kind: str
    message: str
    command: dict[str, Any] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def stalled_sources(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Sources whose loss over the latest quarter of the logged steps did not improve on the
    quarter before: ``{source: (earlier mean, latest mean)}``."""
    if len(rows) < MIN_ROWS:
        return {}
    w = max(3, len(rows) // 4)
    before, latest = rows[-2 * w : -w], rows[-w:]
    out = {}
    names = {n for r in latest for n in r.get("source_loss", {})}
    for name in sorted(names):
        a = [
            r["source_loss"][name]
            for r in before
            if isinstance(r.get("source_loss", {}).get(name), float)
        ]
        b = [
            r["source_loss"][name]
            for r in latest
            if isinstance(r.get("source_loss", {}).get(name), float)
        ]
        if len(a) >= 2 and len(b) >= 2 and _mean(b) > _mean(a) * (1 - STALL_REL):
            out[name] = (_mean(a), _mean(b))
    return out


def _lowered(weights: dict[str, float], name: str, factor: float = 0.5) -> dict[str, float]:
    return {k: round(v * factor if k == name else v, 6) for k, v in weights.items()}


def suggestions(db: RunDB) -> list[Suggestion]:
    rows = store.latest_metrics(db)
    mixes = store.mixtures(db)
    weights = mixes[-1]["weights"] if mixes else {}
    events = db.events()
    out: list[Suggestion] = []

    stalled = stalled_sources(rows)
    active = {k for k, v in weights.items() if v > 0}
    # When every source stalls, the run as a whole plateaus: that is the LR suggestion below.
    all_stalled = bool(active) and active <= set(stalled)
    for name, (a, b) in stalled.items():
        if all_stalled or name not in active:
            continue
        out.append(
            Suggestion(
                "source-stalled",
                f"loss on source {name!r} stopped improving ({a:.4f} -> {b:.4f} over the "
                f"latest logged steps): lower its mixture weight and give the tokens to "
                f"sources still learning",
                {"kind": "set-mixture", "args": {"weights": _lowered(weights, name)}},
                {"source": name, "before": a, "latest": b},
            )
        )

    plateaus = [e for e in events if e["kind"] == "plateau"]
    if plateaus or all_stalled:
        step = plateaus[-1]["step"] if plateaus else rows[-1]["step"]
        out.append(
            Suggestion(
                "plateau",
                f"the loss has plateaued (step {step}): halve the learning rate, or move to the "
                f"next data phase",
                {"kind": "set-lr", "args": {"scale": 0.5}},
                {"step": step},
            )
        )

    by_source: dict[str, list[int]] = {}
    for e in events:
        if e["kind"] == "spike" and e["data"].get("suspect_source"):
            by_source.setdefault(e["data"]["suspect_source"], []).append(e["step"])
    for name, steps in sorted(by_source.items()):
        repeated = len(steps) >= 2
        out.append(
            Suggestion(
                "spike-source",
                f"source {name!r} was the suspect of {len(steps)} loss spike(s) (steps "
                f"{', '.join(map(str, steps[:8]))}): inspect the documents listed in those events"
                + ("; lower its weight until they are cleaned" if repeated else ""),
                {"kind": "set-mixture", "args": {"weights": _lowered(weights, name)}}
                if repeated and weights.get(name, 0) > 0
                else None,
                {"source": name, "steps": steps},
            )
        )

    div = [e for e in events if e["kind"] == "divergence"]
    if div:
        out.append(
            Suggestion(
                "divergence",
                f"the loss diverged at step {div[-1]['step']}: lower the learning rate "
                f"(and consider resuming from the checkpoint before it)",
                {"kind": "set-lr", "args": {"scale": 0.5}},
                {"step": div[-1]["step"]},
            )
        )
    out.extend(_eval_suggestions(db))
    return out


def _eval_suggestions(db: RunDB) -> list[Suggestion]:
    series: dict[str, list[tuple[int, float]]] = {}
    for e in db.evals():
        if e["task"] != "heldout-bpb":
            continue
        for lang, r in e["data"].get("languages", {}).items():
            series.setdefault(lang, []).append((e["step"], r["bpb"]))
    out = []
    for lang, pts in sorted(series.items()):
        pts.sort()
        if len(pts) >= 2 and pts[-1][1] > pts[-2][1] * 1.01:
            out.append(
                Suggestion(
                    "heldout-rising",
                    f"held-out bits per byte for {lang!r} rose from {pts[-2][1]:.4f} (step "
                    f"{pts[-2][0]}) to {pts[-1][1]:.4f} (step {pts[-1][0]}): raise the weight of "
                    f"its sources if that language matters",
                    None,
                    {"lang": lang, "points": pts[-2:]},
                )
            )
    return out
