"""The ``[policy]`` table: which online mixture policy steers a run, how often and within which bounds.

It lives in the run's mixture file next to the phases, or in a file of its own::

    [policy]
    name = "ado"                 # static | odm | ado | doremi
    every = 10                   # update the weights every K steps
    warmup = 50                  # steps before the first update (losses are still collected)
    min_weight = 0.02            # or per source: { kjv = 0.05, reviews = 0.01 }
    max_epochs = 4.0             # repetition limit for every source (0: none) ...
    [policy.source_max_epochs]   # ... or per source
    python_docs = 8.0
    [policy.params]              # the policy's own settings (see docs/mixing.md)
    gamma2 = 0.1

When ``max_epochs`` is not given, the mixture file's own limits (``default_max_epochs`` and
``[sources.NAME] max_epochs``) apply, so one number means the same thing to the plan checker and
to the policy.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aquila.errors import UserError

if TYPE_CHECKING:
    from aquila.data.mixture import MixturePlan

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MAX_EPOCHS = 4.0
KEYS = {"name", "every", "warmup", "min_weight", "max_epochs", "source_max_epochs", "params"}


@dataclass
class PolicyConfig:
    name: str = "static"
    every: int = 10
    warmup: int = 0
    # A floor for every source (float) or per source (dict; unnamed sources get 0).
    min_weight: float | dict[str, float] = 0.0
    max_epochs: float = DEFAULT_MAX_EPOCHS
    source_max_epochs: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def floor(self, source: str) -> float:
        if isinstance(self.min_weight, dict):
            return float(self.min_weight.get(source, 0.0))
        return float(self.min_weight)

    def epochs_limit(self, source: str) -> float:
        """Passes over a source's chunks the policy may reach (inf: unlimited)."""
        limit = float(self.source_max_epochs.get(source, self.max_epochs))
        return limit if limit > 0 else math.inf

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], where: str = "[policy]", defaults: dict[str, Any] | None = None
    ) -> PolicyConfig:
        """Validate a ``[policy]`` table; ``where`` names the file or option in errors."""
        from aquila.mixing.policies import POLICIES

        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a table, got {raw!r}")
        unknown = sorted(set(raw) - KEYS)
        if unknown:
            raise UserError(
                f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(KEYS))})"
            )
        merged = {**(defaults or {}), **raw}
        cfg = cls()
        cfg.name = str(merged.get("name", cfg.name))
        if cfg.name not in POLICIES:
            raise UserError(f"{where}: unknown policy {cfg.name!r}; known: {', '.join(POLICIES)}")
        for key in ("every", "warmup"):
            v = merged.get(key, getattr(cfg, key))
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "every" else 0):
                raise UserError(f"{where}: {key} must be an integer >= {int(key == 'every')}")
            setattr(cfg, key, v)
        mw = merged.get("min_weight", 0.0)
        values = mw.values() if isinstance(mw, dict) else [mw]
        if not all(_number(v) and 0 <= v < 1 for v in values):
            raise UserError(f"{where}: min_weight must be in [0, 1), got {mw!r}")
        cfg.min_weight = {k: float(v) for k, v in mw.items()} if isinstance(mw, dict) else float(mw)
        me = merged.get("max_epochs", DEFAULT_MAX_EPOCHS)
        if not _number(me) or me < 0:
            raise UserError(f"{where}: max_epochs must be >= 0 (0: no limit), got {me!r}")
        cfg.max_epochs = float(me)
        sme = merged.get("source_max_epochs", {})
        if not isinstance(sme, dict) or not all(_number(v) and v >= 0 for v in sme.values()):
            raise UserError(f"{where}: source_max_epochs must map sources to numbers >= 0")
        cfg.source_max_epochs = {k: float(v) for k, v in sme.items()}
        params = merged.get("params", {})
        if not isinstance(params, dict):
            raise UserError(f"{where}: params must be a table")
        cfg.params = dict(params)
        POLICIES[cfg.name].check_params(cfg.params, where)
        return cfg


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"policy file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None


def policy_config(plan: MixturePlan, path: str | Path = "") -> PolicyConfig | None:
    """The ``[policy]`` table of a parsed mixture file, validated; None when it has none.
    Repetition limits default to the file's own ``default_max_epochs`` / ``[sources.NAME]``."""
    if plan.policy is None:
        return None
    defaults: dict[str, Any] = {"max_epochs": plan.default_max_epochs}
    if plan.max_epochs:
        defaults["source_max_epochs"] = dict(plan.max_epochs)
    return PolicyConfig.from_dict(
        plan.policy, where=f"{path or plan.name}: [policy]", defaults=defaults
    )


def load_policy_config(path: str | Path) -> PolicyConfig | None:
    """The ``[policy]`` table of a mixture file or a policy file; None when it has none.

    A file holding only policy keys at the top level (a bare ``policy.toml``) works too. Repetition
    limits default to the mixture file's own ``default_max_epochs`` / ``[sources.NAME]``.
    """
    raw = read_toml(path)
    if "phases" in raw:
        from aquila.data.mixture import load_mixture

        return policy_config(load_mixture(path), path)
    if "policy" in raw:
        table = raw["policy"]
    elif raw and set(raw) <= KEYS and "name" in raw:
        table = raw
    else:
        return None
    return PolicyConfig.from_dict(table, where=f"{path}: [policy]")
