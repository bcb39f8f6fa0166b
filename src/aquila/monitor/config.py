"""Monitor options: typed dataclasses, readable from a ``[monitor]`` table of a run config."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from aquila.checks import Rule, check_fields, coerce, integer, number, one_of, rule
from aquila.errors import UserError

POLICIES = ("log", "skip", "rewind", "lower-lr", "stop")


@dataclass
class DetectorOptions:
    """One detector: its thresholds and the policy applied when it fires."""

    enabled: bool = True
    # "log" (event only), "skip" (drop the optimizer step; needs the loss every step, i.e. one
    # host sync per step), "rewind" (reload the last good checkpoint and skip the bad samples),
    # "lower-lr" (multiply the LR schedule by ``lr_factor``) or "stop" (end the run).
    policy: str = rule("log", one_of(*POLICIES))
    lr_factor: float = rule(0.5, number(above=0, below=1))
    # Steps to wait after an action before the same detector acts again.
    cooldown: int = rule(50, integer(at_least=0))


@dataclass
class SpikeOptions(DetectorOptions):
    # OLMo-core's default: more than 6 standard deviations above a 128-step rolling window.
    sigma: float = rule(6.0, number(above=0))
    window: int = rule(128, integer(at_least=2))
    min_history: int = rule(20, integer(at_least=2))
    watch_grad_norm: bool = True


@dataclass
class PlateauOptions(DetectorOptions):
    # No relative improvement of the smoothed loss larger than ``min_delta`` for ``window`` steps.
    window: int = rule(500, integer(at_least=1))
    min_delta: float = rule(0.005, number(at_least=0))
    ema: float = rule(0.98, number(at_least=0, below=1))


@dataclass
class DivergenceOptions(DetectorOptions):
    # The smoothed loss rose more than ``rise`` (relative) above its minimum.
    rise: float = rule(0.25, number(above=0))
    ema: float = rule(0.9, number(at_least=0, below=1))
    min_steps: int = rule(50, integer(at_least=0))


def _task_specs_ok(specs: Any) -> bool:
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        return False
    if not specs:
        return True
    from aquila.errors import UserError
    from aquila.eval.tasks import parse_tasks

    try:
        parse_tasks(specs, option="monitor.eval.tasks")
    except UserError:
        return False
    return True


@dataclass
class EvalOptions:
    enabled: bool = True
    # Evaluate every n-th checkpoint (1: all of them).
    every: int = rule(1, integer(at_least=1))
    # Held-out bytes per source (keeps an evaluation to seconds on CPU).
    max_bytes: int = rule(60_000, integer(at_least=1))
    # ``aquila eval`` task specs, as for --tasks (e.g. "bpb:data/heldout", "mc:mine.jsonl",
    # "mine=hellaswag:hs.jsonl"); checked when training starts.
    tasks: list[str] = rule(
        [],
        Rule(
            _task_specs_ok,
            "must be a list of `aquila eval` tasks with unique names (a built-in name, "
            "FORMAT:PATH or NAME=FORMAT:PATH; see docs/eval.md)",
        ),
    )
    task_limit: int = rule(50, integer(at_least=1))
    threads: int = rule(1, integer(at_least=1))
    # Wait for running evaluations when training ends (so results land in the run database).
    wait_on_end: bool = True
    # Where the evaluation process loads the checkpoint: "auto" is the training device (in the
    # run's dtype, bf16 on CUDA by default); or "cpu", "cuda", "cuda:N".
    device: str = rule(
        "auto",
        Rule(
            lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
            "must be 'auto', 'cpu', 'cuda' or 'cuda:N'",
        ),
    )


@dataclass
class MonitorOptions:
    enabled: bool = True
    tensorboard: bool = False
    wandb: bool = False
    param_norm: bool = True
    trajectory: bool = True
    # After this many rewinds a "rewind" policy stops the run instead (it is not converging).
    max_rewinds: int = rule(5, integer(at_least=0))
    nonfinite: DetectorOptions = field(
        default_factory=lambda: DetectorOptions(policy="rewind", cooldown=0)
    )
    spike: SpikeOptions = field(default_factory=SpikeOptions)
    plateau: PlateauOptions = field(default_factory=PlateauOptions)
    divergence: DivergenceOptions = field(default_factory=DivergenceOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)

    @classmethod
    def from_any(cls, obj: Any) -> MonitorOptions:
        """From MonitorOptions, a dict (a ``[monitor]`` table), a config with ``.monitor``, or None."""
        if obj is None:
            return cls()
        if isinstance(obj, MonitorOptions):
            return obj
        if isinstance(obj, dict):
            return _from_dict(cls, obj, "monitor")
        inner = getattr(obj, "monitor", None)
        return cls.from_any(inner)


def _from_dict(tp: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(tp)
    obj = tp()
    for key, value in raw.items():
        if key not in hints:
            raise UserError(
                f"unknown config key {where}.{key}; valid keys: {', '.join(sorted(hints))}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"config key {where}.{key} must be a table")
            value = _from_dict(
                hint, {**dataclasses.asdict(getattr(obj, key)), **value}, f"{where}.{key}"
            )
        else:
            value = coerce(value, hint, f"{where}.{key}")
        setattr(obj, key, value)
    check_fields(obj, where)
    return obj
