import math
from types import SimpleNamespace

import numpy as np
import pytest

from aquila.errors import UserError
from aquila.mixing import (
    POLICIES,
    PolicyConfig,
    apply_bounds,
    build_policy,
    fit_power_law,
    load_policy_config,
    mixing_callbacks,
)

SOURCES = ["code", "news", "web"]
UNIFORM = {s: 1 / 3 for s in SOURCES}


def stream(policy, curves, steps=30, every=10, batch=30):
    """Feed a policy interval means from ``curves[s](n_total)``; return its weights per update."""
    weights, out, n = dict(UNIFORM), [], 0
    for k in range(1, steps + 1):
        counts = {s: batch * every * weights[s] for s in SOURCES}
        n += batch * every
        losses = {s: curves[s](n) for s in SOURCES}
        weights = policy.update(k * every, losses, counts, weights)
        out.append(weights)
    return out


def test_bounds_respect_floors_caps_and_sum_to_one():
    w = apply_bounds({"a": 0.9, "b": 0.09, "c": 0.01}, {"b": 0.2, "c": 0.2}, {"a": 0.5})
    assert math.isclose(sum(w.values()), 1.0)
    assert w["a"] <= 0.5 + 1e-12 and w["b"] >= 0.2 - 1e-12 and w["c"] >= 0.2 - 1e-12
    # A cap beats a floor: an exhausted source is not read more, whatever its floor.
    w = apply_bounds({"a": 0.5, "b": 0.5}, {"a": 0.3}, {"a": 0.0})
    assert w == {"a": 0.0, "b": 1.0}
    # Unsatisfiable caps (every source nearly exhausted) still give a mixture.
    w = apply_bounds({"a": 0.5, "b": 0.5}, {}, {"a": 0.1, "b": 0.3})
    assert math.isclose(sum(w.values()), 1.0) and w["b"] > w["a"]


def test_static_returns_prior():
    prior = {"code": 0.2, "news": 0.5, "web": 0.3}
    p = build_policy("static", SOURCES, prior)
    w = p.update(10, {"code": 9.0, "news": 1.0}, {"code": 5, "news": 5}, UNIFORM)
    assert w == pytest.approx(prior)


def test_odm_prefers_high_loss_source_within_exploration_bounds():
    p = build_policy("odm", SOURCES, UNIFORM)
    curves = {"code": lambda n: 4.0, "news": lambda n: 2.0, "web": lambda n: 2.0}
    history = stream(p, curves, steps=40)
    for w in history:
        assert math.isclose(sum(w.values()), 1.0, rel_tol=1e-9)
        eps = p.epsilon(400)
        assert all(v >= eps - 1e-12 for v in w.values())
    last = history[-1]
    assert last["code"] > last["news"] + 0.02 and last["code"] > last["web"] + 0.02
    assert last["news"] == pytest.approx(last["web"])
    # Importance weighting raises a starved arm's reward (loss / probability): no runaway.
    assert last["news"] > 0.2


def test_fit_power_law_recovers_parameters():
    n = np.linspace(100, 20000, 60)
    eps, beta, alpha = fit_power_law(n, 1.5 + 30.0 * n**-0.5)
    assert eps == pytest.approx(1.5, abs=0.05)
    assert alpha == pytest.approx(0.5, abs=0.03)
    assert fit_power_law(n, 3.0 + 0.0 * n)[1] == pytest.approx(0.0, abs=1e-9)


def test_ado_favours_the_source_that_still_learns_fast():
    p = build_policy("ado", SOURCES, UNIFORM, {"gamma2": 0.5})
    curves = {
        "code": lambda n: 1.0 + 40.0 * n**-0.4,  # still falling fast
        "news": lambda n: 3.0 + 0.5 * n**-0.4,  # almost flat
        "web": lambda n: 2.0 + 5.0 * n**-0.4,
    }
    history = stream(p, curves, steps=20)
    last = history[-1]
    assert last["code"] > last["web"] > last["news"]
    assert math.isclose(sum(last.values()), 1.0)
    # Before min_points observations there is nothing to fit: the weights stay as they are.
    fresh = build_policy("ado", SOURCES, UNIFORM)
    assert fresh.update(10, {"code": 5.0}, {"code": 10}, UNIFORM) == pytest.approx(UNIFORM)


def test_doremi_upweights_excess_loss_and_needs_a_reference():
    ref = {"code": 1.0, "news": 1.0, "web": 1.0}
    p = build_policy("doremi", SOURCES, UNIFORM, {"reference": ref})
    curves = {"code": lambda n: 3.0, "news": lambda n: 1.2, "web": lambda n: 0.8}
    last = stream(p, curves, steps=10)[-1]
    assert last["code"] > last["news"] > last["web"] * 0.999
    assert last["web"] >= 0.1 / 3 - 1e-9  # smoothing toward the prior keeps every source
    with pytest.raises(UserError, match="reference"):
        build_policy("doremi", SOURCES, UNIFORM, {"reference": {"code": 1.0}})


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_state_round_trip_continues_identically(name):
    params = {"reference": {s: 1.5 for s in SOURCES}} if name == "doremi" else {}
    curves = {
        "code": lambda n: 1.0 + 40.0 * n**-0.4,
        "news": lambda n: 3.0 + 0.5 * n**-0.3,
        "web": lambda n: 2.0 + 5.0 * n**-0.5,
    }
    a = build_policy(name, SOURCES, UNIFORM, params)
    straight = stream(a, curves, steps=12)
    b = build_policy(name, SOURCES, UNIFORM, params)
    stream(b, curves, steps=6)
    c = build_policy(name, SOURCES, UNIFORM, params)
    c.load_state_dict(b.state_dict())
    w = straight[5]
    n = 30 * 10 * 6
    for k in range(7, 13):
        counts = {s: 300 * w[s] for s in SOURCES}
        n += 300
        w = c.update(k * 10, {s: curves[s](n) for s in SOURCES}, counts, w)
        assert w == straight[k - 1]


def test_policy_table_in_mixture_file(tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text(
        "default_max_epochs = 3.0\n[sources.news]\nmax_epochs = 1.5\n"
        '[[phases]]\nname = "p"\nsteps = 10\nweights = { code = 1, news = 1 }\n'
        '[policy]\nname = "ado"\nevery = 5\nmin_weight = { news = 0.1 }\n'
        "[policy.params]\ngamma2 = 0.2\n"
    )
    cfg = load_policy_config(path)
    assert (cfg.name, cfg.every, cfg.params) == ("ado", 5, {"gamma2": 0.2})
    assert cfg.floor("news") == 0.1 and cfg.floor("code") == 0.0
    assert cfg.epochs_limit("news") == 1.5 and cfg.epochs_limit("code") == 3.0
    bare = tmp_path / "policy.toml"
    bare.write_text('name = "odm"\nmax_epochs = 0\n')
    assert load_policy_config(bare).epochs_limit("code") == math.inf
    holder = SimpleNamespace(data=SimpleNamespace(mixture=str(path)))
    [cb] = mixing_callbacks(holder)
    assert cb.config.name == "ado"
    assert mixing_callbacks(SimpleNamespace(data=SimpleNamespace(mixture=""))) == []
    (tmp_path / "none.toml").write_text("[[phases]]\nweights = { a = 1 }\nsteps = 1\n")
    assert load_policy_config(tmp_path / "none.toml") is None


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"name": "magic"}, "unknown policy 'magic'"),
        ({"name": "ado", "every": 0}, "every must be"),
        ({"name": "ado", "cadence": 3}, "unknown key 'cadence'"),
        ({"name": "ado", "params": {"gama2": 1}}, "no parameter 'gama2'"),
        ({"name": "odm", "min_weight": 1.5}, "min_weight"),
    ],
)
def test_policy_config_errors_name_the_key(table, match):
    with pytest.raises(UserError, match=match):
        PolicyConfig.from_dict(table, where="mix.toml: [policy]")
