"""Automatic data mixing: online policies that steer the source mixture during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aquila.mixing.callback import MixingCallback
from aquila.mixing.config import PolicyConfig, load_policy_config
from aquila.mixing.policies import (
    POLICIES,
    ADOPolicy,
    DoReMiPolicy,
    MixturePolicy,
    ODMPolicy,
    StaticPolicy,
    apply_bounds,
    build_policy,
    fit_power_law,
)


def mixing_callbacks(cfg: Any, policy_file: str | Path | None = None) -> list[MixingCallback]:
    """The policy callback for a run: from ``policy_file`` if given, else from the ``[policy]``
    table of the run's mixture file (``cfg.data.mixture``); none when neither has one."""
    path = policy_file or getattr(cfg.data, "mixture", "")
    if not path:
        return []
    policy = load_policy_config(path)
    return [MixingCallback(policy)] if policy is not None else []


__all__ = [
    "POLICIES",
    "ADOPolicy",
    "DoReMiPolicy",
    "MixingCallback",
    "MixturePolicy",
    "ODMPolicy",
    "PolicyConfig",
    "StaticPolicy",
    "apply_bounds",
    "build_policy",
    "fit_power_law",
    "load_policy_config",
    "mixing_callbacks",
]
