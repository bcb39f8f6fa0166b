import numpy as np
import pytest
import torch

from aquila.model.config import get_preset
from aquila.model.io import save_model_dir
from aquila.model.transformer import AquilaModel
from aquila.monitor.trajectory import (
    checkpoint_curves,
    curve_points,
    discrete_frechet,
    model_curves,
    trajectory_distances,
)


def test_frechet_hand_computed_cases():
    # Identical curves.
    assert discrete_frechet([[0, 0], [1, 1]], [[0, 0], [1, 1]]) == 0.0
    # Parallel lines one unit apart.
    assert discrete_frechet([[0, 0], [1, 0], [2, 0]], [[0, 1], [1, 1], [2, 1]]) == 1.0
    # 1-D: P=(0,1,2), Q=(0,2): best coupling pairs 1 with 0 or 2 -> 1.
    assert discrete_frechet([0, 1, 2], [0, 2]) == 1.0
    # The walk must stay monotone: the backtrack in Q costs the full jump.
    assert discrete_frechet([0, 10], [0, 10, 0, 10]) == 10.0
    # Endpoints are always coupled: a single differing endpoint sets the distance.
    assert discrete_frechet([[0, 0], [3, 4]], [[0, 0], [0, 0]]) == 5.0
    # Symmetric.
    p, q = (
        np.random.default_rng(0).normal(size=(7, 2)),
        np.random.default_rng(1).normal(size=(5, 2)),
    )
    assert discrete_frechet(p, q) == pytest.approx(discrete_frechet(q, p))


def test_frechet_bounds_against_pointwise_distance():
    # For equal-length curves the diagonal coupling is one option: Frechet <= max pointwise gap,
    # and the endpoints bound it from below.
    rng = np.random.default_rng(3)
    for _ in range(20):
        p, q = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
        d = discrete_frechet(p, q)
        gaps = np.linalg.norm(p - q, axis=1)
        assert max(gaps[0], gaps[-1]) <= d + 1e-12 <= gaps.max() + 1e-12


def test_identical_checkpoints_have_zero_distance(tmp_path):
    torch.manual_seed(0)
    model = AquilaModel(get_preset("aquila-test"))
    save_model_dir(model, tmp_path / "a")
    save_model_dir(model, tmp_path / "b")
    a, b = checkpoint_curves(tmp_path / "a"), checkpoint_curves(tmp_path / "b")
    assert a == model_curves(model)
    assert set(a) == {
        "q",
        "k",
        "v",
        "o",
        "gate",
        "up",
        "down",
        "input_layernorm",
        "post_attention_layernorm",
    }
    assert all(len(c) == model.cfg.n_layers for c in a.values())
    assert a["q"][0] == pytest.approx(float(model.layers[0].self_attn.q_proj.weight.detach().std()))
    dist = trajectory_distances(a, b, tokens_between=1000)
    assert dist and all(v == 0.0 for v in dist.values())


def test_distance_is_per_billion_tokens():
    a = {"q": [1.0, 1.0, 1.0]}
    b = {"q": [1.0, 1.5, 1.0]}  # one layer's std moves by 0.5
    d = trajectory_distances(a, b, tokens_between=500_000_000)
    assert d["q"] == pytest.approx(0.5 * 2)  # 0.5 over half a billion tokens
    assert discrete_frechet(curve_points(a["q"]), curve_points(b["q"])) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        trajectory_distances(a, b, 0)
