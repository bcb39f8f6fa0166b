"""Ratio sweeps: the same model trained on mixtures that differ in the balance of two languages,
scored on held-out text per language (`aquila sweep`)."""

from aquila.sweep.mixtures import Ratio, SourceInfo, parse_ratios, sweep_weights
from aquila.sweep.runner import SWEEP_DEFAULTS, SweepSpec, run_name, run_sweep
from aquila.sweep.table import markdown, save_png, summarize

__all__ = [
    "SWEEP_DEFAULTS",
    "Ratio",
    "SourceInfo",
    "SweepSpec",
    "markdown",
    "parse_ratios",
    "run_name",
    "run_sweep",
    "save_png",
    "summarize",
    "sweep_weights",
]
