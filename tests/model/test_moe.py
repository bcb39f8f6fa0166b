"""The mixture-of-experts block: dispatch, auxiliary losses, presets, Mixtral interop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aquila.model import count_params, get_preset
from aquila.model.moe import MoEFFN, expert_utilisation, moe_aux_loss
from aquila.model.transformer import AquilaModel


def _moe(seed: int = 0, **overrides) -> MoEFFN:
    cfg = get_preset("aquila-moe-test", **overrides)
    torch.manual_seed(seed)
    block = MoEFFN(cfg)
    with torch.no_grad():  # a router with real preferences, not near-uniform logits
        block.gate.weight.normal_(0.0, 0.5)
    return block


def _naive(block: MoEFFN, x: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax, top-k, renormalise, weighted sum of the chosen SwiGLU experts."""
    rows = []
    for tok in x.reshape(-1, x.shape[-1]):
        probs = F.softmax(block.gate.weight @ tok, dim=-1)
        w, idx = probs.topk(block.top_k)
        w = w / w.sum()
        out = torch.zeros_like(tok)
        for wi, e in zip(w, idx.tolist()):
            hid = F.silu(block.w1[e] @ tok) * (block.w3[e] @ tok)
            out = out + wi * (block.w2[e] @ hid)
        rows.append(out)
    return torch.stack(rows).view(x.shape)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_dispatch_matches_per_token_reference(top_k):
    block = _moe(top_k=top_k)
    x = torch.randn(3, 17, 64)
    with torch.no_grad():
        got, want = block(x), _naive(block, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    counts = block.tokens_per_expert
    assert counts.sum().item() == 3 * 17 * top_k
    assert (counts > 0).sum() >= 2  # the reference really exercised several experts


def test_gradients_reach_router_and_experts():
    block = _moe()
    x = torch.randn(2, 9, 64)
    (block(x).pow(2).sum() + block.aux_loss + block.z_loss).backward()
    for p in (block.gate.weight, block.w1, block.w2, block.w3):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_aux_losses_on_uniform_router():
    block = _moe()
    with torch.no_grad():
        block.gate.weight.zero_()  # every expert gets probability 1/E
    block(torch.randn(4, 8, 64))
    e = block.n_experts
    # P_i = 1/E for all i, so E * sum f_i P_i = sum f_i = 1 however ties were broken.
    assert block.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    # Zero logits: logsumexp = log E.
    assert block.z_loss.item() == pytest.approx(math.log(e) ** 2, rel=1e-6)


def test_aux_loss_on_collapsed_router():
    block = _moe()
    with torch.no_grad():
        block.gate.weight.zero_()
    x = torch.randn(4, 8, 64)
    # A bias-like direction: route everything to experts 0 and 1 with probability ~1/2 each.
    x[..., 0] = 1.0
    with torch.no_grad():
        block.gate.weight[0, 0] = block.gate.weight[1, 0] = 50.0
    block(x)
    assert block.tokens_per_expert.tolist()[:2] == [32, 32]
    # f = (1/2, 1/2, 0, 0), P ~ (1/2, 1/2, 0, 0): E * (1/4 + 1/4) = E / 2.
    assert block.aux_loss.item() == pytest.approx(block.n_experts / 2, rel=1e-3)


def test_model_aux_loss_and_utilisation():
    cfg = get_preset("aquila-moe-test", extra={"aux_loss_coef": 0.5, "z_loss_coef": 0.25})
    model = AquilaModel(cfg)
    dense = AquilaModel(get_preset("aquila-test"))
    assert moe_aux_loss(dense).item() == 0.0 and expert_utilisation(dense) == []
    model(torch.randint(0, cfg.vocab_size, (2, 16)))
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    want = sum(0.5 * m.aux_loss + 0.25 * m.z_loss for m in layers)
    assert moe_aux_loss(model).item() == pytest.approx(want.item())
    util = expert_utilisation(model)
    assert len(util) == cfg.n_layers and all(sum(u) == 2 * 16 * cfg.top_k for u in util)


def test_router_std_from_extra():
    block = MoEFFN(get_preset("aquila-moe-test", n_experts=64, extra={"router_std": 0.5}))
    assert block.gate.weight.std().item() == pytest.approx(0.5, rel=0.05)


def test_preset_param_counts():
    cfg = get_preset("aquila-moe-8x16b")
    h, f, layers = cfg.hidden_size, cfg.ffn_size, cfg.n_layers
    attn = 2 * h * h + 2 * h * cfg.n_kv_heads * cfg.head_dim
    per_layer = attn + 8 * 3 * h * f + 8 * h + 2 * h
    total = layers * per_layer + 2 * cfg.vocab_size * h + h
    assert count_params(cfg) == total
    assert count_params(cfg, active=True) == total - layers * 6 * 3 * h * f
    assert 100e9 < total < 110e9


def _random_moe_model(seed: int = 0):
    extra = {"aux_loss_coef": 0.002, "z_loss_coef": 0.02, "router_std": 0.03}
    cfg = get_preset("aquila-moe-test", init_std=0.2, extra=extra)
    model = AquilaModel(cfg)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()


def test_mixtral_round_trip_is_exact():
    from aquila.model.hf_mixtral import from_hf_mixtral, to_hf_mixtral

    model = _random_moe_model()
    config, state = to_hf_mixtral(model)
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in state
    back = from_hf_mixtral(json.loads(json.dumps(config)), state)
    assert back.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def _hf_layout(hf_model, config: dict, state: dict) -> dict:
    """Our Hub-layout state dict rearranged to whatever layout the installed transformers uses."""
    keys = set(hf_model.state_dict())
    if any(k.endswith("experts.gate_up_proj") for k in keys):  # transformers >= 5: fused
        out = {k: v for k, v in state.items() if "block_sparse_moe.experts" not in k}
        out = {k.replace("block_sparse_moe.gate", "mlp.gate"): v for k, v in out.items()}
        for layer in range(config["num_hidden_layers"]):
            p = f"model.layers.{layer}.block_sparse_moe.experts"
            n = config["num_local_experts"]
            w = {
                kind: torch.stack([state[f"{p}.{e}.{kind}.weight"] for e in range(n)])
                for kind in ("w1", "w2", "w3")
            }
            out[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.cat([w["w1"], w["w3"]], 1)
            out[f"model.layers.{layer}.mlp.experts.down_proj"] = w["w2"]
        return out
    return state


def test_logits_match_transformers_mixtral(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    from aquila.model.hf_mixtral import from_hf_mixtral, to_hf_mixtral

    model = _random_moe_model()
    config, state = to_hf_mixtral(model)
    tokens = torch.randint(
        0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours = model(tokens)
    hf = transformers.MixtralForCausalLM(transformers.MixtralConfig(**config)).eval()
    hf_state = _hf_layout(hf, config, state)
    missing, unexpected = hf.load_state_dict(hf_state, strict=True)
    assert not missing and not unexpected
    with torch.no_grad():
        theirs = hf(tokens).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    # The state dict transformers holds in memory imports back to the same model.
    back = from_hf_mixtral(config, dict(hf.state_dict()))
    with torch.no_grad():
        assert (back(tokens) - ours).abs().max().item() < 1e-6
    # And the Hub layout on disk loads through from_pretrained (its own layout conversion).
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = transformers.MixtralForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (loaded(tokens).logits - ours).abs().max().item() < 1e-4


def test_load_balancing_loss_is_top_k_times_transformers():
    pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    block = _moe()
    x = torch.randn(1, 40, 64)
    block(x)
    logits = F.linear(x.reshape(-1, 64), block.gate.weight)
    theirs = load_balancing_loss_func((logits,), block.n_experts, block.top_k)
    assert theirs.item() == pytest.approx(block.top_k * block.aux_loss.item(), rel=1e-5)
