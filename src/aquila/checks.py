"""What a config key allows, declared next to the key; one refusal line names key, value and range.

A dataclass field carries its rule in its metadata::

    lr: float = rule(1.5e-4, number(above=0))
    schedule: str = rule("cosine", one_of("cosine", "constant"))

``check_fields(obj, "optim")`` then refuses the first field whose value breaks its rule with
``config key optim.lr = -1.0: must be a finite number > 0``. Relations between keys
(``min_lr <= lr``) are checked by the dataclass itself with :func:`refuse`. The same rules check
command-line arguments (``aquila control``), so every refusal reads alike.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aquila.errors import UserError

RULE = "rule"


@dataclass(frozen=True)
class Rule:
    """A test of one value and the words that say what it allows."""

    test: Callable[[Any], bool]
    allowed: str

    def ok(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _bounds(at_least: Any, above: Any, at_most: Any, below: Any) -> tuple[list[str], Callable]:
    words, tests = [], []
    if at_least is not None:
        words.append(f">= {at_least}")
        tests.append(lambda v: v >= at_least)
    if above is not None:
        words.append(f"> {above}")
        tests.append(lambda v: v > above)
    if at_most is not None:
        words.append(f"<= {at_most}")
        tests.append(lambda v: v <= at_most)
    if below is not None:
        words.append(f"< {below}")
        tests.append(lambda v: v < below)
    return words, lambda v: all(t(v) for t in tests)


def integer(at_least: int | None = None, at_most: int | None = None) -> Rule:
    words, within = _bounds(at_least, None, at_most, None)
    allowed = "must be an integer" + (" " + " and ".join(words) if words else "")
    return Rule(lambda v: _is_int(v) and within(v), allowed)


def number(
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> Rule:
    """A finite number (int or float) within the given bounds."""
    words, within = _bounds(at_least, above, at_most, below)
    allowed = "must be a finite number" + (" " + " and ".join(words) if words else "")
    return Rule(lambda v: _is_number(v) and within(v), allowed)


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, "must be one of " + ", ".join(repr(c) for c in choices))


def weights() -> Rule:
    """A table of source -> weight: finite, >= 0, with a positive sum (empty: the default)."""

    def test(v: Any) -> bool:
        if v == {}:
            return True
        try:
            check_weights(v)
        except UserError:
            return False
        return True

    return Rule(test, "must map sources to finite weights >= 0 with a positive sum")


def check_weights(weights: Any, known: set[str] | None = None, where: str = "") -> dict[str, float]:
    """The one check of a mixture's weights, wherever they come from (a mixture file, a
    command, the dashboard, a policy): a non-empty table of sources to finite numbers >= 0
    with a positive sum, naming only ``known`` sources when given. Returns them as floats,
    unnormalised; raises :class:`UserError` (``where`` leads the message)."""
    if not isinstance(weights, Mapping) or not weights:
        raise UserError(f"{where}weights: no source given")
    out: dict[str, float] = {}
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}weight of {name!r} is not a number: {value!r}")
        v = float(value)
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"{where}weight of {name!r} must be finite and >= 0, got {value!r}")
        out[str(name)] = v
    if known is not None:
        unknown = sorted(set(out) - set(known))
        if unknown:
            raise UserError(f"{where}unknown source(s) {unknown}; known: {sorted(known)}")
    if sum(out.values()) <= 0:
        raise UserError(f"{where}weights must have a positive sum, got {out}")
    return out


def rule(default: Any, check: Rule, **kwargs: Any) -> Any:
    """A dataclass field with ``check`` as its rule; a list/dict default becomes a factory."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={RULE: check}, **kwargs
        )
    return dataclasses.field(default=default, metadata={RULE: check}, **kwargs)


def refuse(key: str, value: Any, allowed: str, what: str = "config key") -> UserError:
    """The one-line refusal of ``key = value`` (``what``: "config key", "argument", ...)."""
    return UserError(f"{what} {key} = {_show(value)}: {allowed}")


def check_value(key: str, value: Any, check: Rule, what: str = "config key") -> None:
    if not check.ok(value):
        raise refuse(key, value, check.allowed, what)


def check_fields(obj: Any, section: str) -> None:
    """Refuse the first field of dataclass ``obj`` whose value breaks its rule."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get(RULE)
        if check is not None:
            check_value(f"{section}.{f.name}", getattr(obj, f.name), check)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (read from TOML or JSON) as type ``tp``; an int is accepted for a float."""
    origin = typing.get_origin(tp)
    if tp is float and _is_int(value):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
            raise refuse(key, value, f"expected {names[tp]}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise refuse(key, value, "expected a list")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise refuse(key, value, "expected a table")
        return value
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
