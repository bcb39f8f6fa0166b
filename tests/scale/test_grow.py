"""Scale-Up: function preservation of FPI, the depth plans, AKI's next-layer copies, errors."""

from __future__ import annotations

import pytest
import torch

from aquila.errors import UserError
from aquila.scale import grow
from aquila.scale.grow import DOWN, GATE, OUT_PROJ, Q
from aquila.scale.maps import HiddenMap, depth_plan

TOKENS = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(3))

# (source overrides, target overrides): the aquila-test shape is hidden 64, 2 layers, ffn 160.
SHAPES = {
    "x2": ({}, dict(hidden_size=128, n_heads=8, ffn_size=320)),
    "x1.25-gqa": (
        dict(n_heads=8, n_kv_heads=2),
        dict(hidden_size=80, n_heads=10, n_kv_heads=2, ffn_size=200),
    ),
    "more-kv-heads": (
        dict(n_heads=8, n_kv_heads=2),
        dict(hidden_size=128, n_heads=16, n_kv_heads=4, ffn_size=333),
    ),
    "x3-odd": (
        dict(n_heads=8, n_kv_heads=2),
        dict(hidden_size=192, n_heads=24, n_kv_heads=3, ffn_size=500),
    ),
}


def _max_diff(a, b) -> float:
    with torch.no_grad():
        return (a(TOKENS) - b(TOKENS)).abs().max().item()


@pytest.mark.parametrize("norm_mode", ["tile", "rescale"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fpi_width_preserves_logits(make_model, shape, norm_mode):
    src_over, dst_over = SHAPES[shape]
    small = make_model(**src_over)
    target = small.cfg.replace(**dst_over)
    big = grow(small, target, method="fpi", norm_mode=norm_mode)
    assert big.cfg.hidden_size == target.hidden_size and big.num_params() > small.num_params()
    assert _max_diff(big, small) < 1e-4


@pytest.mark.parametrize("norm_mode", ["tile", "rescale"])
@pytest.mark.parametrize("depth_mode", ["stack", "interpolate"])
def test_fpi_depth_with_identity_layers_preserves_logits(make_model, depth_mode, norm_mode):
    small = make_model(n_heads=8, n_kv_heads=2)
    target = small.cfg.replace(hidden_size=80, n_heads=10, ffn_size=200, n_layers=5)
    big = grow(small, target, "fpi", depth_mode, identity_new_layers=True, norm_mode=norm_mode)
    assert big.cfg.n_layers == 5
    assert _max_diff(big, small) < 1e-4
    # Without identity layers the copies change the function: the test above is not vacuous.
    changed = grow(small, target, "fpi", depth_mode, identity_new_layers=False, norm_mode=norm_mode)
    assert _max_diff(changed, small) > 1e-2


def test_tile_map_keeps_rms():
    hm = HiddenMap.build(64, 80, "tile", torch.Generator().manual_seed(0))
    m = torch.zeros(80, 64, dtype=torch.float64)
    m[torch.arange(80), hm.src] = hm.out_scale
    torch.testing.assert_close(m.T @ m, torch.eye(64, dtype=torch.float64) * 80 / 64)


def test_rescale_mode_scales_gains_down(make_model):
    small = make_model()
    big = grow(small, small.cfg.replace(hidden_size=128, n_heads=8), norm_mode="rescale")
    g, g2 = small.layers[0].input_layernorm.weight, big.layers[0].input_layernorm.weight
    # Zero-padded dims halve mean(h^2): the normalised input grows by sqrt(2), the gain shrinks.
    torch.testing.assert_close(g2[:64], g / 2**0.5)
    assert big.embed_tokens.weight[:, 64:].abs().max() == 0
    assert big.cfg.norm_eps == pytest.approx(small.cfg.norm_eps / 2)


def test_depth_plans():
    inter = depth_plan(32, 40, "interpolate")
    assert len(inter) == 40 and sum(new for _, new in inter) == 8
    for j, (src, new) in enumerate(inter):
        if new:  # each copy sits right after its source
            assert inter[j - 1][0] == src
    assert [s for s, _ in inter if not _] == list(range(32))
    stack = depth_plan(4, 6, "stack")
    assert stack == [(0, False), (1, False), (2, False), (3, False), (0, True), (1, True)]


def test_identity_layers_zero_only_new_layers(make_model):
    small = make_model()
    big = grow(small, small.cfg.replace(n_layers=4), "fpi", "interpolate", identity_new_layers=True)
    new = [j for j, (_, n) in enumerate(depth_plan(2, 4, "interpolate")) if n]
    for j, layer in enumerate(big.layers):
        zero = layer.self_attn.o_proj.weight.abs().max().item() == 0
        assert zero == (j in new)


def test_aki_new_units_come_from_next_layer(make_model):
    small = make_model(n_heads=8, n_kv_heads=2)
    target = small.cfg.replace(hidden_size=80, n_heads=10, ffn_size=200)
    fpi = grow(small, target, "fpi", seed=5)
    aki = grow(small, target, "aki", seed=5)
    sd_f, sd_a = fpi.state_dict(), aki.state_dict()
    # Layer 0: old FFN neurons as FPI, new neurons are layer 1's FPI rows.
    g = f"layers.0.{GATE}"
    torch.testing.assert_close(sd_a[g][:160], sd_f[g][:160])
    torch.testing.assert_close(sd_a[g][160:], sd_f[f"layers.1.{GATE}"][160:])
    # New hidden dims written by down_proj / o_proj come from layer 1 too (tile mode).
    for name in (DOWN, OUT_PROJ):
        torch.testing.assert_close(sd_a[f"layers.0.{name}"][64:], sd_f[f"layers.1.{name}"][64:])
    # New query heads (slot 4 of each group of 5, head dim 8) copy layer 1's.
    q0, q1 = sd_a[f"layers.0.{Q}"].view(2, 5, 8, 80), sd_f[f"layers.1.{Q}"].view(2, 5, 8, 80)
    torch.testing.assert_close(q0[:, 4], q1[:, 4])
    torch.testing.assert_close(q0[:, :4], sd_f[f"layers.0.{Q}"].view(2, 5, 8, 80)[:, :4])
    # The top layer has no next layer: it is FPI's.
    for k in sd_f:
        if k.startswith("layers.1."):
            assert torch.equal(sd_a[k], sd_f[k]), k
    assert _max_diff(aki, small) > 1e-3


def test_aki_pro_interpolates(make_model):
    small = make_model()
    target = small.cfg.replace(hidden_size=128, n_heads=8, n_layers=3)
    pro = grow(small, target, "aki-pro")
    aki = grow(small, target, "aki", depth_mode="interpolate")
    for k, v in pro.state_dict().items():
        assert torch.equal(v, aki.state_dict()[k]), k
    with pytest.raises(UserError, match="aki-pro"):
        grow(small, target, "aki-pro", depth_mode="stack")


def test_seed_changes_choices_and_random_baseline(make_model):
    small = make_model()
    target = small.cfg.replace(hidden_size=96, n_heads=6, ffn_size=200)
    a, b = grow(small, target, seed=0), grow(small, target, seed=1)
    assert not torch.equal(a.layers[0].mlp.gate_proj.weight, b.layers[0].mlp.gate_proj.weight)
    assert _max_diff(a, small) < 1e-4 and _max_diff(b, small) < 1e-4
    rnd = grow(small, target, "random")
    assert _max_diff(rnd, small) > 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(hidden_size=32, n_heads=2), "cannot shrink"),
        (dict(n_layers=1), "layers 1 is smaller"),
        (dict(hidden_size=128), "head_dim"),
        (dict(vocab_size=1024), "vocab_size"),
        (dict(n_experts=4), "dense"),
    ],
)
def test_bad_targets(make_model, overrides, message):
    small = make_model()
    with pytest.raises(UserError, match=message):
        grow(small, small.cfg.replace(**overrides))


def test_gqa_group_must_not_shrink(make_model):
    small = make_model(n_heads=8, n_kv_heads=2)
    with pytest.raises(UserError, match="GQA groups"):
        grow(small, small.cfg.replace(hidden_size=80, n_heads=10, n_kv_heads=5))
