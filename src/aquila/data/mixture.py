"""Mixture files: training phases in order, each with source weights and a length.

    name = "aquila2"
    default_max_epochs = 4.0           # optional; sources without their own limit
    [sources.kjv]
    max_epochs = 2.0
    [[phases]]
    name = "language_modelling"
    tokens = 2_000_000_000             # or: steps = 10_000
    weights = { kjv = 0.2, peoples_daily = 0.8 }

Aquila2 trained in three such phases (language modelling, knowledge, target-oriented). The
default repetition limit of 4 epochs follows "Scaling Data-Constrained Language Models"
(Muennighoff et al. 2023): up to ~4 repetitions cost almost nothing against unique data.
The last phase continues past its stated length if training runs longer.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aquila.checks import check_weights
from aquila.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# [policy]: an online mixture policy, kept as written here and validated by aquila.mixing.
TOP_KEYS = {"name", "default_max_epochs", "sources", "phases", "policy"}
PHASE_KEYS = {"name", "weights", "tokens", "steps"}
SOURCE_KEYS = {"max_epochs"}


@dataclass(frozen=True)
class Phase:
    name: str
    weights: dict[str, float]  # normalised to sum to 1
    tokens: int | None = None
    steps: int | None = None

    def samples(self, tokens_per_sample: int, samples_per_step: int | None) -> int:
        if self.tokens is not None:
            return math.ceil(self.tokens / tokens_per_sample)
        if samples_per_step is None:
            raise UserError(f"phase {self.name!r} is given in steps: samples_per_step is needed")
        return int(self.steps) * samples_per_step


@dataclass(frozen=True)
class MixturePlan:
    name: str
    phases: tuple[Phase, ...]
    max_epochs: dict[str, float]
    default_max_epochs: float = 4.0
    # The [policy] table as written (aquila.mixing validates it), None without one.
    policy: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def sources(self) -> list[str]:
        return sorted({s for p in self.phases for s in p.weights})

    def boundaries(self, tokens_per_sample: int, samples_per_step: int | None = None) -> list[int]:
        """The global sample index at which each phase starts."""
        starts, g = [], 0
        for p in self.phases:
            starts.append(g)
            g += p.samples(tokens_per_sample, samples_per_step)
        return starts

    def phase_at_sample(
        self, g: int, tokens_per_sample: int, samples_per_step: int | None = None
    ) -> Phase:
        """The phase that global sample ``g`` belongs to (the last one continues forever)."""
        starts = self.boundaries(tokens_per_sample, samples_per_step)
        idx = max(i for i, s in enumerate(starts) if s <= g) if g >= 0 else 0
        return self.phases[idx]

    def segments(
        self, tokens_per_sample: int, samples_per_step: int | None = None
    ) -> list[tuple[int, dict[str, float]]]:
        """``[(from_g, weights)]``: the mixture history a sampler follows for this plan."""
        starts = self.boundaries(tokens_per_sample, samples_per_step)
        return [(s, dict(p.weights)) for s, p in zip(starts, self.phases)]

    def epochs_limit(self, source: str) -> float:
        return self.max_epochs.get(source, self.default_max_epochs)


def _unknown(keys, allowed: set[str], where: str, path: Path) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise UserError(
            f"{path}: unknown key {where}{extra[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def parse_mixture(text: str, path: Path, known_sources: set[str] | None = None) -> MixturePlan:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None
    _unknown(raw, TOP_KEYS, "", path)
    policy = raw.get("policy")
    if policy is not None and not isinstance(policy, dict):
        raise UserError(f"{path}: [policy] must be a table")
    limits = raw.get("sources", {})
    for name, spec in limits.items():
        _unknown(spec, SOURCE_KEYS, f"in [sources.{name}]: ", path)
    phases_raw = raw.get("phases")
    if not phases_raw:
        raise UserError(f"{path}: no [[phases]] given")
    phases = []
    for i, p in enumerate(phases_raw):
        pname = p.get("name", f"phase{i}")
        where = f"phases[{i}] ({pname})"
        _unknown(p, PHASE_KEYS, f"in {where}: ", path)
        weights = check_weights(p.get("weights"), known_sources, f"{path}: {where}: ")
        total = float(sum(weights.values()))
        if ("tokens" in p) == ("steps" in p):
            raise UserError(f"{path}: {where}: give exactly one of 'tokens' or 'steps'")
        length = p.get("tokens", p.get("steps"))
        if not isinstance(length, int) or length <= 0:
            raise UserError(f"{path}: {where}: length must be a positive integer, got {length!r}")
        phases.append(
            Phase(
                pname, {s: w / total for s, w in weights.items()}, p.get("tokens"), p.get("steps")
            )
        )
    max_epochs = {}
    for s, spec in limits.items():
        v = spec.get("max_epochs")
        if v is not None and (not isinstance(v, (int, float)) or v <= 0):
            raise UserError(f"{path}: [sources.{s}] max_epochs must be > 0, got {v!r}")
        if v is not None:
            max_epochs[s] = float(v)
    default = raw.get("default_max_epochs", 4.0)
    if not isinstance(default, (int, float)) or default <= 0:
        raise UserError(f"{path}: default_max_epochs must be > 0, got {default!r}")
    return MixturePlan(
        raw.get("name", path.stem), tuple(phases), max_epochs, float(default), policy
    )


def load_mixture(path: Path | str, known_sources: set[str] | None = None) -> MixturePlan:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mixture file not found: {path}")
    return parse_mixture(path.read_text(encoding="utf-8"), path, known_sources)


def expected_samples(
    plan: MixturePlan, tokens_per_sample: int, samples_per_step: int | None = None
) -> dict[str, float]:
    """Samples each source contributes over the whole plan."""
    out: dict[str, float] = {}
    for p in plan.phases:
        n = p.samples(tokens_per_sample, samples_per_step)
        for s, w in p.weights.items():
            out[s] = out.get(s, 0.0) + w * n
    return out


def check_repetition(
    plan: MixturePlan,
    source_chunks: dict[str, int],
    tokens_per_sample: int,
    samples_per_step: int | None = None,
) -> list[str]:
    """Warnings for sources the plan would repeat more than their ``max_epochs``."""
    warnings = []
    for s, n in sorted(expected_samples(plan, tokens_per_sample, samples_per_step).items()):
        if n <= 0:
            continue
        chunks = source_chunks.get(s, 0)
        if chunks <= 0:
            warnings.append(f"source {s!r} has weight but no data ({n:.0f} samples wanted)")
            continue
        epochs, limit = n / chunks, plan.epochs_limit(s)
        if epochs > limit:
            warnings.append(
                f"source {s!r} would be seen {epochs:.2f} times ({n:.0f} samples of {chunks} "
                f"chunks), more than its max_epochs {limit:g}"
            )
    return warnings
