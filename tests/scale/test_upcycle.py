"""Scale-Out: the upcycled mixture of experts computes the dense model's function."""

from __future__ import annotations

import pytest
import torch

from aquila.errors import UserError
from aquila.model.moe import moe_aux_loss
from aquila.scale import upcycle


@pytest.mark.parametrize(("experts", "top_k"), [(8, 2), (4, 1), (4, 3)])
def test_upcycled_loss_equals_dense_on_real_text(make_model, text_tokens, loss_of, experts, top_k):
    dense = make_model(init_std=0.05)
    moe = upcycle(dense, n_experts=experts, top_k=top_k, router_std=0.02)
    assert moe.cfg.n_experts == experts and moe.cfg.top_k == top_k
    assert abs(loss_of(moe, text_tokens) - loss_of(dense, text_tokens)) < 1e-4
    # The router really spread the tokens: identical experts, not a single one, did the work.
    util = [m.tokens_per_expert for m in moe.modules() if hasattr(m, "tokens_per_expert")]
    assert all((u > 0).sum() >= min(experts, 2) for u in util)


def test_experts_copy_the_dense_ffn(make_model):
    dense = make_model()
    moe = upcycle(dense, 8, 2, router_std=0.3, seed=1)
    for lay_d, lay_m in zip(dense.layers, moe.layers):
        for e in range(8):
            assert torch.equal(lay_m.mlp.w1[e], lay_d.mlp.gate_proj.weight)
            assert torch.equal(lay_m.mlp.w3[e], lay_d.mlp.up_proj.weight)
            assert torch.equal(lay_m.mlp.w2[e], lay_d.mlp.down_proj.weight)
        assert lay_m.mlp.gate.weight.std().item() == pytest.approx(0.3, rel=0.15)
    assert moe.cfg.extra["router_std"] == 0.3


def test_noise_breaks_function_preservation(make_model, text_tokens, loss_of):
    dense = make_model(init_std=0.05)
    noisy = upcycle(dense, 8, 2, noise=0.05)
    w1 = noisy.layers[0].mlp.w1
    assert not torch.equal(w1[0], w1[1])
    assert abs(loss_of(noisy, text_tokens) - loss_of(dense, text_tokens)) > 1e-5


def test_upcycled_model_trains_its_router(make_model, text_tokens):
    moe = upcycle(make_model(init_std=0.05), 4, 2, aux_loss_coef=0.001, z_loss_coef=0.01).train()
    x, y = text_tokens[:, :-1], text_tokens[:, 1:]
    loss = moe.token_losses(x, y).mean() + moe_aux_loss(moe)
    loss.backward()
    gate = moe.layers[0].mlp.gate.weight.grad
    assert gate is not None and gate.abs().sum() > 0
    # Near-uniform router: aux loss ~1 per layer, z-loss ~ log(4)^2 per layer.
    aux = [m.aux_loss.item() for m in moe.modules() if hasattr(m, "aux_loss")]
    assert all(0.9 < a < 1.3 for a in aux)


def test_bad_arguments(make_model):
    dense = make_model()
    with pytest.raises(UserError, match="--top-k"):
        upcycle(dense, 4, 5)
    with pytest.raises(UserError, match="--experts"):
        upcycle(dense, 0, 1)
    with pytest.raises(UserError, match="already has"):
        upcycle(upcycle(dense, 4, 2), 4, 2)
