"""Anomaly detectors over per-step numbers: plain Python state, no torch, easy to test alone.

Each ``update`` takes one step's values and returns a ``Finding`` (with its evidence) or None.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aquila.monitor.config import DivergenceOptions, PlateauOptions, SpikeOptions


@dataclass
class Finding:
    kind: str  # "nonfinite", "spike", "plateau", "divergence"
    step: int
    message: str
    severity: str = "warning"
    evidence: dict[str, Any] = field(default_factory=dict)


class NonFiniteDetector:
    def update(self, step: int, loss: float, grad_norm: float) -> Finding | None:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return None
        return Finding(
            "nonfinite",
            step,
            f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step}",
            "error",
            {"loss": _num(loss), "grad_norm": _num(grad_norm)},
        )


class RollingZ:
    """Mean and std of the last ``window`` accepted values (spikes are kept out of the window)."""

    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=window)

    def stats(self) -> tuple[float, float]:
        n = len(self.values)
        mean = sum(self.values) / n
        var = sum((v - mean) ** 2 for v in self.values) / max(1, n - 1)
        return mean, math.sqrt(var)


class SpikeDetector:
    """Loss (or grad norm) more than ``sigma`` standard deviations above a rolling window."""

    def __init__(self, opts: SpikeOptions):
        self.opts = opts
        self.series = {"loss": RollingZ(opts.window), "grad_norm": RollingZ(opts.window)}

    def update(self, step: int, loss: float, grad_norm: float) -> Finding | None:
        values = {"loss": loss}
        if self.opts.watch_grad_norm:
            values["grad_norm"] = grad_norm
        hits = {}
        for name, x in values.items():
            if not math.isfinite(x):
                continue
            z = self.series[name]
            if len(z.values) >= self.opts.min_history:
                mean, std = z.stats()
                threshold = mean + self.opts.sigma * max(std, 1e-8)
                if x > threshold:
                    hits[name] = {
                        "value": x,
                        "mean": mean,
                        "std": std,
                        "threshold": threshold,
                        "sigmas": (x - mean) / max(std, 1e-8),
                    }
                    continue
            z.values.append(x)
        if not hits:
            return None
        what = " and ".join(hits)
        return Finding(
            "spike",
            step,
            f"{what} spike at step {step}: "
            + ", ".join(f"{k} {h['value']:.4g} ({h['sigmas']:.1f} sigma)" for k, h in hits.items()),
            "warning",
            {**hits, "window": self.opts.window, "sigma": self.opts.sigma},
        )


class PlateauDetector:
    """The smoothed loss has not improved by ``min_delta`` (relative) for ``window`` steps."""

    def __init__(self, opts: PlateauOptions):
        self.opts = opts
        self.ema: float | None = None
        self.best = math.inf
        self.best_step = 0
        self.reported = False

    def update(self, step: int, loss: float) -> Finding | None:
        if not math.isfinite(loss):
            return None
        a = self.opts.ema
        self.ema = loss if self.ema is None else a * self.ema + (1 - a) * loss
        if self.ema < self.best * (1 - self.opts.min_delta):
            self.best, self.best_step, self.reported = self.ema, step, False
            return None
        if self.reported or step - self.best_step < self.opts.window:
            return None
        self.reported = True
        return Finding(
            "plateau",
            step,
            f"loss plateau: smoothed loss {self.ema:.4f} has not improved by "
            f"{self.opts.min_delta:.1%} since step {self.best_step} ({self.best:.4f})",
            "info",
            {"smoothed": self.ema, "best": self.best, "best_step": self.best_step},
        )


class DivergenceDetector:
    """The smoothed loss has risen more than ``rise`` (relative) above its minimum."""

    def __init__(self, opts: DivergenceOptions):
        self.opts = opts
        self.ema: float | None = None
        self.low = math.inf
        self.low_step = 0
        self.seen = 0
        self.active = False

    def update(self, step: int, loss: float) -> Finding | None:
        if not math.isfinite(loss):
            return None
        a = self.opts.ema
        self.ema = loss if self.ema is None else a * self.ema + (1 - a) * loss
        self.seen += 1
        if self.ema < self.low:
            self.low, self.low_step = self.ema, step
        rising = self.seen >= self.opts.min_steps and self.ema > self.low * (1 + self.opts.rise)
        if not rising:
            self.active = False
            return None
        if self.active:
            return None
        self.active = True
        return Finding(
            "divergence",
            step,
            f"divergence: smoothed loss {self.ema:.4f} is {self.ema / self.low - 1:.0%} above its "
            f"minimum {self.low:.4f} (step {self.low_step})",
            "error",
            {"smoothed": self.ema, "minimum": self.low, "minimum_step": self.low_step},
        )


def _num(x: float) -> float | str:
    # JSON has no NaN/inf: keep them readable as strings.
    return x if math.isfinite(x) else str(x)
