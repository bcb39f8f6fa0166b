"""The mixtures of a ratio sweep: two languages in a given ratio, others held at fixed shares.

A ratio ``a:b`` between languages A and B (``zh:en = 1:2``) and held shares (``code = 0.1``)
give every source a weight: the held languages take their shares, A and B split the rest as
a : b, and inside each language the sources keep their natural proportions (by tokens), so the
sweep changes only the balance between the two languages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aquila.errors import UserError


@dataclass(frozen=True)
class Ratio:
    """``a:b`` between the sweep's two languages, as the user wrote it."""

    a: float
    b: float

    @property
    def label(self) -> str:
        return f"{self.a:g}:{self.b:g}"

    @property
    def b_per_a(self) -> float:
        return self.b / self.a


@dataclass(frozen=True)
class SourceInfo:
    name: str
    lang: str
    tokens: int


def parse_ratios(text: str, option: str = "--ratios") -> list[Ratio]:
    """``"1:0.5,1:1,1:2"`` -> ratios; each part positive and finite, no repeats."""
    out: list[Ratio] = []
    for part in (p.strip() for p in text.split(",")):
        pieces = part.split(":")
        try:
            if len(pieces) != 2:
                raise ValueError
            a, b = float(pieces[0]), float(pieces[1])
        except ValueError:
            raise UserError(
                f"{option} {part!r}: not a ratio A:B of two numbers, e.g. 1:2"
            ) from None
        if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
            raise UserError(f"{option} {part!r}: both sides must be finite numbers > 0")
        r = Ratio(a, b)
        if any(math.isclose(r.b_per_a, o.b_per_a) for o in out):
            raise UserError(f"{option} {part!r}: the same mixture as an earlier ratio")
        out.append(r)
    return out


def parse_langs(text: str) -> tuple[str, str]:
    langs = tuple(p.strip() for p in text.split(":"))
    if len(langs) != 2 or not all(langs) or langs[0] == langs[1]:
        raise UserError(f"--langs {text!r}: two different languages A:B, e.g. zh:en")
    return langs  # type: ignore[return-value]


def parse_hold(items: list[str]) -> dict[str, float]:
    """``["code=0.1"]`` -> ``{"code": 0.1}``; shares in [0, 1) summing below 1; ``["none"]``:
    no language held."""
    out: dict[str, float] = {}
    if items == ["none"]:
        return out
    for item in items:
        lang, sep, value = item.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = float("nan")
        if not sep or not lang.strip() or not (0 <= share < 1):
            raise UserError(f"--hold {item!r}: LANG=SHARE with 0 <= SHARE < 1, e.g. code=0.1")
        out[lang.strip()] = share
    if sum(out.values()) >= 1:
        raise UserError(f"--hold shares sum to {sum(out.values()):g}: they must leave room (< 1)")
    return out


def sweep_weights(
    ratio: Ratio,
    langs: tuple[str, str],
    hold: dict[str, float],
    sources: list[SourceInfo],
) -> dict[str, float]:
    """Source weights (summing to 1) for one ratio of the sweep."""
    by_lang: dict[str, list[SourceInfo]] = {}
    for s in sources:
        by_lang.setdefault(s.lang, []).append(s)
    overlap = set(langs) & set(hold)
    if overlap:
        raise UserError(f"--hold {sorted(overlap)[0]}: a swept language cannot also be held")
    for lang in (*langs, *hold):
        if lang not in by_lang:
            have = ", ".join(f"{k} ({', '.join(s.name for s in v)})" for k, v in by_lang.items())
            raise UserError(f"no source of language {lang!r} in the data (languages: {have})")
    stray = sorted(s.name for s in sources if s.lang not in langs and s.lang not in hold)
    if stray:
        lang = next(s.lang for s in sources if s.name == stray[0])
        raise UserError(
            f"source {stray[0]!r} (language {lang!r}) is neither swept nor held: "
            f"add --hold {lang}=SHARE, or choose the sources with --set data.sources=[...]"
        )
    rest = 1.0 - sum(hold.values())
    shares = dict(hold)
    shares[langs[0]] = rest * ratio.a / (ratio.a + ratio.b)
    shares[langs[1]] = rest * ratio.b / (ratio.a + ratio.b)
    weights: dict[str, float] = {}
    for lang, share in shares.items():
        group = by_lang[lang]
        total = sum(s.tokens for s in group)
        for s in group:
            weights[s.name] = share * (s.tokens / total if total else 1 / len(group))
    return {name: weights[name] for name in sorted(weights)}
