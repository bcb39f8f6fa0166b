"""Mixture TOML files: phases, validation errors, segments for the sampler, repetition."""

from __future__ import annotations

import pytest

from aquila.data.mixture import check_repetition, load_mixture
from aquila.errors import UserError

THREE_PHASES = """
name = "aquila2"
default_max_epochs = 4.0
[sources.kjv]
max_epochs = 1.0

[[phases]]
name = "language_modelling"
tokens = 10240
weights = { kjv = 1, peoples_daily = 3 }

[[phases]]
name = "knowledge"
tokens = 5120
weights = { kjv = 1, peoples_daily = 1, python_docs = 2 }

[[phases]]
name = "target_oriented"
steps = 10
weights = { python_docs = 1 }
"""
SOURCES = {"kjv", "peoples_daily", "python_docs"}


def _write(tmp_path, text):
    p = tmp_path / "mix.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_three_phase_plan(tmp_path):
    plan = load_mixture(_write(tmp_path, THREE_PHASES), SOURCES)
    assert [p.name for p in plan.phases] == ["language_modelling", "knowledge", "target_oriented"]
    assert plan.phases[0].weights == {"kjv": 0.25, "peoples_daily": 0.75}
    segs = plan.segments(tokens_per_sample=128, samples_per_step=4)
    assert [g for g, _ in segs] == [0, 80, 120]
    assert segs[1][1]["python_docs"] == 0.5
    assert plan.phase_at_sample(79, 128, 4).name == "language_modelling"
    assert plan.phase_at_sample(80, 128, 4).name == "knowledge"
    assert plan.phase_at_sample(10_000, 128, 4).name == "target_oriented"
    with pytest.raises(UserError, match="steps"):
        plan.segments(tokens_per_sample=128)


def test_repetition_warnings(tmp_path):
    plan = load_mixture(_write(tmp_path, THREE_PHASES), SOURCES)
    # kjv: 0.25*80 + 0.25*40 = 30 samples over 20 chunks = 1.5 epochs > 1.0
    warnings = check_repetition(
        plan, {"kjv": 20, "peoples_daily": 1000, "python_docs": 1000}, 128, 4
    )
    assert len(warnings) == 1 and "'kjv'" in warnings[0] and "1.50" in warnings[0]
    assert (
        check_repetition(plan, {"kjv": 30, "peoples_daily": 1000, "python_docs": 1000}, 128, 4)
        == []
    )
    missing = check_repetition(plan, {"kjv": 30, "peoples_daily": 1000}, 128, 4)
    assert any("python_docs" in w and "no data" in w for w in missing)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("tokens = 10240", "tokens = 10240\nlr = 1"), "unknown key in phases\\[0\\].*'lr'"),
        (("kjv = 1, peoples", "kjv = -1, peoples"), "weight of 'kjv' must be finite and >= 0"),
        (("python_docs = 1 }", "wiki = 1 }"), r"unknown source\(s\) \['wiki'\]"),
        (("max_epochs = 1.0", "max_epoch = 1.0"), "unknown key in \\[sources.kjv\\]"),
        (("steps = 10", "steps = 10\ntokens = 5"), "exactly one of 'tokens' or 'steps'"),
        (("weights = { python_docs = 1 }", "weights = {}"), "weights: no source given"),
    ],
)
def test_errors_name_the_key(tmp_path, edit, message):
    text = THREE_PHASES.replace(*edit)
    with pytest.raises(UserError, match=message):
        load_mixture(_write(tmp_path, text), SOURCES)


def test_empty_and_missing(tmp_path):
    with pytest.raises(UserError, match="no \\[\\[phases\\]\\]"):
        load_mixture(_write(tmp_path, 'name = "x"\n'))
    with pytest.raises(UserError, match="not found"):
        load_mixture(tmp_path / "none.toml")
