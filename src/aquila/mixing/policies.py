"""Online mixture policies: new source weights from the per-source training losses of a run.

Every policy sees, each K steps, the mean per-sequence training loss of each source over those
steps and how many sequences of it were read (the numbers the trainer computes anyway: no extra
forward), and answers with new weights. Bounds (floors, repetition caps) are applied afterwards
by :func:`apply_bounds`, the same for every policy.

* ``static``: the prior (the mixture in force when the policy took over) - the control arm.
* ``odm``: Online Data Mixing (Albalak et al. 2023): sources are EXP3 arms rewarded by their
  smoothed, importance-weighted training loss.
* ``ado``: Adaptive Data Optimization (Jiang et al. 2024): a power law per source fitted to its
  loss curve; sample by the predicted learning speed times the prior and a credit term.
* ``doremi``: DoReMi-style (Xie et al. 2023) multiplicative weights on the excess loss over a
  reference; the reference is a fixed per-source loss measured beforehand (see docs/mixing.md),
  not a reference model scored on every batch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aquila.errors import UserError


class MixturePolicy:
    """The interface: ``update`` every K steps, ``state_dict``/``load_state_dict`` for resume."""

    name: ClassVar[str] = ""
    # Settings under ``[policy.params]`` and their defaults.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, sources: list[str], prior: dict[str, float], params: dict[str, Any] | None = None
    ):
        self.sources = sorted(sources)
        self.params = {**self.defaults, **(params or {})}
        self.prior = _vector(prior, self.sources)

    @classmethod
    def check_params(cls, params: dict[str, Any], where: str = "[policy.params]") -> None:
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            allowed = ", ".join(sorted(cls.defaults)) or "none"
            raise UserError(
                f"{where}: policy {cls.name!r} has no parameter {unknown[0]!r} (allowed: {allowed})"
            )

    def set_prior(self, prior: dict[str, float]) -> None:
        """A new baseline mixture (a scheduled phase, or control handed back after a manual one)."""
        self.prior = _vector(prior, self.sources)

    def update(
        self,
        step: int,
        losses: dict[str, float],
        counts: dict[str, float],
        current: dict[str, float],
    ) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"prior": self.prior.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prior = np.asarray(state["prior"], dtype=np.float64)

    def _out(self, w: np.ndarray) -> dict[str, float]:
        return dict(zip(self.sources, (float(x) for x in w / w.sum())))


class StaticPolicy(MixturePolicy):
    name = "static"

    def update(self, step, losses, counts, current):
        return self._out(self.prior.copy())


class ODMPolicy(MixturePolicy):
    """EXP3 over sources (ODM). Reward of a source: its mean loss divided by its sampling
    probability (the importance weighting of EXP3), smoothed with a moving average ``alpha``.
    Exploration ``eps_t = min(1/K, sqrt(ln K / (K t)))`` with ``t`` the training step; weights
    ``(1 - K eps_t) softmax(eps_{t-1} R) + eps_t``."""

    name = "odm"
    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.9, "importance": True}

    def __init__(self, sources, prior, params=None):
        super().__init__(sources, prior, params)
        self.reward = np.zeros(len(self.sources))
        self.seen = np.zeros(len(self.sources), dtype=bool)
        self.last_step = 0

    def epsilon(self, t: int) -> float:
        k = len(self.sources)
        return min(1.0 / k, math.sqrt(math.log(k) / (k * max(t, 1))))

    def update(self, step, losses, counts, current):
        pi = _vector(current, self.sources)
        alpha = float(self.params["alpha"])
        for i, s in enumerate(self.sources):
            if counts.get(s, 0) <= 0 or s not in losses:
                continue
            r = losses[s] / max(pi[i], 1e-6) if self.params["importance"] else losses[s]
            # The first reward of an arm is taken whole: no bias toward the zero start.
            self.reward[i] = alpha * self.reward[i] + (1 - alpha) * r if self.seen[i] else r
            self.seen[i] = True
        eps_prev, eps = self.epsilon(self.last_step), self.epsilon(step)
        self.last_step = step
        z = eps_prev * self.reward
        p = np.exp(z - z.max())
        p /= p.sum()
        return self._out((1 - len(self.sources) * eps) * p + eps)

    def state_dict(self):
        return {
            **super().state_dict(),
            "reward": self.reward.tolist(),
            "seen": self.seen.tolist(),
            "last_step": self.last_step,
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.reward = np.asarray(state["reward"], dtype=np.float64)
        self.seen = np.asarray(state["seen"], dtype=bool)
        self.last_step = int(state["last_step"])


def fit_power_law(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``loss ~ eps + beta * n**-alpha`` with eps, beta >= 0, 0 < alpha <= 0.8.

    For a fixed alpha the model is linear in (eps, beta), so a grid over alpha with a closed-form
    solve per point finds the global optimum of the grid: deterministic, no optimiser to tune.
    """
    n = np.asarray(n, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    best = (float(y.mean()), 0.0, 0.0, math.inf)
    for a in np.linspace(0.02, 0.8, 40):
        x = n**-a
        xc, yc = x - x.mean(), y - y.mean()
        denom = float(xc @ xc)
        beta = float(xc @ yc) / denom if denom > 0 else 0.0
        eps = float(y.mean() - beta * x.mean())
        if beta < 0:  # a rising curve: no learning left to forecast
            beta, eps = 0.0, float(y.mean())
        elif eps < 0:
            eps, beta = 0.0, float(x @ y) / float(x @ x)
        sse = float(((eps + beta * x - y) ** 2).sum())
        if sse < best[3] - 1e-12:
            best = (eps, beta, float(a), sse)
    return best[0], best[1], best[2]


class ADOPolicy(MixturePolicy):
    """ADO: per source, fit ``L(n) = eps + beta n^-alpha`` to the loss history (``n`` the
    samples the model has read in all, ``count = "total"`` as in the paper, or of that source,
    ``"source"``) and prefer sources by their forecast learning speed ``-dL/dn``:
    ``rho ~ prior * h**s * (-dL/dn)``, ``pi = gamma2 rho + (1 - gamma2) mean(rho so far)``,
    with ``h`` a moving average (``gamma1``) of ``pi`` crediting sources with their own progress.
    """

    name = "ado"
    defaults: ClassVar[dict[str, Any]] = {
        "gamma1": 0.1,
        "gamma2": 0.1,
        "s": 0.5,
        "count": "total",
        "min_points": 4,
        "ignore_points": 0,
    }

    def __init__(self, sources, prior, params=None):
        super().__init__(sources, prior, params)
        if self.params["count"] not in ("total", "source"):
            raise UserError(f"ado: count must be 'total' or 'source', got {self.params['count']!r}")
        k = len(self.sources)
        self.n_source = np.zeros(k)
        self.n_total = 0.0
        self.history: list[list[float]] = []  # rows: n_total, n_source[k], loss[k]
        self.h = self.prior.copy()
        self.rho_mean = self.prior.copy()
        self.t = 0
        self.fits: list[tuple[float, float, float]] = []

    def update(self, step, losses, counts, current):
        k = len(self.sources)
        c = np.array([float(counts.get(s, 0.0)) for s in self.sources])
        self.n_source += c
        self.n_total += float(c.sum())
        last = self.history[-1][1 + k :] if self.history else [math.nan] * k
        # A source absent from the interval keeps its last loss: the curve has a gap, not a jump.
        row = [losses.get(s, last[i]) if c[i] > 0 else last[i] for i, s in enumerate(self.sources)]
        self.history.append([self.n_total, *self.n_source.tolist(), *row])
        rows = np.asarray(self.history[int(self.params["ignore_points"]) :], dtype=np.float64)
        if len(rows) < int(self.params["min_points"]):
            return self._out(_vector(current, self.sources))
        speed = np.zeros(k)
        self.fits = []
        for i in range(k):
            n = rows[:, 0] if self.params["count"] == "total" else rows[:, 1 + i]
            y = rows[:, 1 + k + i]
            ok = np.isfinite(y) & (n > 0)
            if ok.sum() < int(self.params["min_points"]):
                self.fits.append((math.nan, math.nan, math.nan))
                continue
            eps, beta, alpha = fit_power_law(n[ok], y[ok])
            self.fits.append((eps, beta, alpha))
            now = n[ok][-1]
            speed[i] = alpha * beta * now ** (-alpha) / now  # -dL/dn = alpha (L - eps) / n
        rho = self.prior * self.h ** float(self.params["s"]) * speed
        rho = rho / rho.sum() if rho.sum() > 0 else self.prior.copy()
        g1, g2 = float(self.params["gamma1"]), float(self.params["gamma2"])
        pi = g2 * rho + (1 - g2) * self.rho_mean
        pi /= pi.sum()
        self.h = g1 * pi + (1 - g1) * self.h
        self.t += 1
        self.rho_mean = rho / (self.t + 1) + self.rho_mean * (1 - 1 / (self.t + 1))
        return self._out(pi)

    def state_dict(self):
        return {
            **super().state_dict(),
            "n_source": self.n_source.tolist(),
            "n_total": self.n_total,
            "history": [list(r) for r in self.history],
            "h": self.h.tolist(),
            "rho_mean": self.rho_mean.tolist(),
            "t": self.t,
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.n_source = np.asarray(state["n_source"], dtype=np.float64)
        self.n_total = float(state["n_total"])
        self.history = [list(r) for r in state["history"]]
        self.h = np.asarray(state["h"], dtype=np.float64)
        self.rho_mean = np.asarray(state["rho_mean"], dtype=np.float64)
        self.t = int(state["t"])


class DoReMiPolicy(MixturePolicy):
    """Multiplicative weights on the clipped excess loss ``max(L_s - ref_s, 0)``:
    ``a <- a * exp(eta * excess)``, weights ``(1 - smoothing) a + smoothing * prior``.

    ``reference`` (a table source -> loss) or ``reference_file`` (a JSON object of the same) is
    the per-source loss of a reference run, e.g. a small model trained on the uniform mixture.
    """

    name = "doremi"
    defaults: ClassVar[dict[str, Any]] = {
        "eta": 0.3,
        "smoothing": 0.1,
        "reference": {},
        "reference_file": "",
    }

    def __init__(self, sources, prior, params=None):
        super().__init__(sources, prior, params)
        ref = dict(self.params["reference"])
        if self.params["reference_file"]:
            path = Path(self.params["reference_file"])
            try:
                ref = {**json.loads(path.read_text(encoding="utf-8")), **ref}
            except (OSError, ValueError) as exc:
                raise UserError(f"doremi reference_file {path}: {exc}") from None
        missing = [s for s in self.sources if s not in ref]
        if missing:
            raise UserError(
                f"doremi: no reference loss for source(s) {missing}: set [policy.params] "
                "reference = { SOURCE = LOSS, ... } or reference_file = 'ref.json'"
            )
        self.reference = np.array([float(ref[s]) for s in self.sources])
        self.log_alpha = np.log(np.maximum(self.prior, 1e-12))

    def update(self, step, losses, counts, current):
        for i, s in enumerate(self.sources):
            if counts.get(s, 0) > 0 and s in losses:
                excess = max(losses[s] - self.reference[i], 0.0)
                self.log_alpha[i] += float(self.params["eta"]) * excess
        a = np.exp(self.log_alpha - self.log_alpha.max())
        a /= a.sum()
        c = float(self.params["smoothing"])
        return self._out((1 - c) * a + c * self.prior)

    def state_dict(self):
        return {**super().state_dict(), "log_alpha": self.log_alpha.tolist()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.log_alpha = np.asarray(state["log_alpha"], dtype=np.float64)


POLICIES: dict[str, type[MixturePolicy]] = {
    p.name: p for p in (StaticPolicy, ODMPolicy, ADOPolicy, DoReMiPolicy)
}


def build_policy(
    name: str, sources: list[str], prior: dict[str, float], params: dict[str, Any] | None = None
) -> MixturePolicy:
    if name not in POLICIES:
        raise UserError(f"unknown mixture policy {name!r}; known: {', '.join(POLICIES)}")
    POLICIES[name].check_params(params or {})
    return POLICIES[name](sources, prior, params)


def apply_bounds(
    weights: dict[str, float], lower: dict[str, float], upper: dict[str, float]
) -> dict[str, float]:
    """The weights, summing to 1, with ``lower <= w <= upper`` per source where feasible.

    The result is ``clip(lam * w, lower, upper)`` with the one scale ``lam`` that makes it sum to
    1 (found by bisection): sources inside their bounds keep their ratios. A cap beats a floor (an
    exhausted source cannot be read more); if every source is capped below a total of 1 the caps
    are scaled up together, and floors summing past 1 are scaled down.
    """
    names = sorted(weights)
    w = np.array([max(float(weights[n]), 0.0) for n in names])
    hi = np.array([max(float(upper.get(n, 1.0)), 0.0) for n in names])
    lo = np.minimum([max(float(lower.get(n, 0.0)), 0.0) for n in names], hi)
    if hi.sum() < 1.0:
        hi = hi / hi.sum() if hi.sum() > 0 else np.ones_like(hi) / len(hi)
        lo = np.minimum(lo, hi)
    if lo.sum() > 1.0:
        lo = lo / lo.sum()
    w = w / w.sum() if w.sum() > 0 else np.ones_like(w) / len(w)
    if np.clip(w * 1e12, lo, hi).sum() < 1.0 - 1e-9:
        w = w + 1e-9  # the room left is with zero-weight sources: let them take it
    low, high = 0.0, 1.0
    while np.clip(w * high, lo, hi).sum() < 1.0 and high < 1e15:
        high *= 2.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if np.clip(w * mid, lo, hi).sum() < 1.0 else (low, mid)
    out = np.clip(w * high, lo, hi)
    return dict(zip(names, (float(x) for x in out / out.sum())))


def _vector(weights: dict[str, float], sources: list[str]) -> np.ndarray:
    v = np.array([max(float(weights.get(s, 0.0)), 0.0) for s in sources], dtype=np.float64)
    return v / v.sum() if v.sum() > 0 else np.full(len(sources), 1.0 / len(sources))
