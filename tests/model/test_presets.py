"""The published Aquila2 shapes: parameter counts on the meta device and training FLOPs."""

from __future__ import annotations

import json

import pytest
import torch

from aquila.cli import main
from aquila.model import count_params, flops_per_token, get_preset
from aquila.model.transformer import AquilaModel

PUBLISHED = {"aquila2-7b": 7.30e9, "aquila2-34b": 33.7e9, "aquila2-70b": 70.1e9}


@pytest.mark.parametrize(("preset", "published"), PUBLISHED.items())
def test_published_counts_within_one_percent(preset, published, capsys):
    assert main(["model", "info", preset, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(info["params"] - published) / published < 0.01
    cfg = get_preset(preset)
    assert info["head_dim"] == 128 and info["vocab_size"] == 100_008
    # 6N (N without the input embedding) + 12 * layers * hidden * seq_len.
    n = count_params(cfg) - cfg.vocab_size * cfg.hidden_size
    assert info["flops_per_token"] == 6 * n + 12 * cfg.n_layers * cfg.hidden_size * cfg.max_seq_len
    assert flops_per_token(cfg) == info["flops_per_token"]


def test_published_init_std():
    assert [get_preset(p).init_std for p in PUBLISHED] == [0.02, 0.0165, 0.0149]


def test_gqa_shares_kv_heads_and_matches_explicit_repeat():
    torch.manual_seed(0)
    model = AquilaModel(get_preset("aquila-test"))  # 4 query heads, 2 key/value heads
    attn = model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (2 * 16, 64) and attn.q_proj.weight.shape == (4 * 16, 64)
    x = torch.randn(1, 8, 64)
    cos, sin = model.rope_cos[:8], model.rope_sin[:8]
    out = attn(x, cos, sin)
    # The same layer with K/V duplicated into 4 full heads computes the same function.
    full = AquilaModel(get_preset("aquila-test", n_kv_heads=4)).layers[0].self_attn
    with torch.no_grad():
        full.q_proj.weight.copy_(attn.q_proj.weight)
        full.o_proj.weight.copy_(attn.o_proj.weight)
        for proj in ("k_proj", "v_proj"):
            w = getattr(attn, proj).weight.view(2, 16, 64).repeat_interleave(2, dim=0)
            getattr(full, proj).weight.copy_(w.reshape(64, 64))
    torch.testing.assert_close(full(x, cos, sin), out, rtol=1e-5, atol=1e-6)


def test_rope_linear_scaling_divides_positions():
    base = AquilaModel(get_preset("aquila-test"))
    scaled = AquilaModel(get_preset("aquila-test", rope_scaling=2.0))
    torch.testing.assert_close(scaled.rope_cos[10], base.rope_cos[5])
    torch.testing.assert_close(scaled.rope_sin[2], base.rope_sin[1])


def test_kv_cache_decoding_matches_full_forward():
    torch.manual_seed(0)
    model = AquilaModel(get_preset("aquila-test", init_std=0.2)).eval()
    tokens = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        parts = [model(tokens[:, :12], cache)]
        parts += [model(tokens[:, i : i + 1], cache) for i in range(12, 16)]
        parts.append(model(tokens[:, 16:], cache))  # a chunk appended to a non-empty cache
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_bad_shapes_are_clear_errors():
    from aquila.errors import UserError

    with pytest.raises(UserError, match=r"model.n_kv_heads = 4: must divide model.n_heads \(6\)"):
        get_preset("aquila-test", n_heads=6, n_kv_heads=4, hidden_size=96)
    with pytest.raises(UserError, match="model.hidden_size = 0: must be an integer >= 1"):
        get_preset("aquila-test", hidden_size=0)
    with pytest.raises(UserError, match=r"model.top_k = 5: must be <= model.n_experts \(4\)"):
        get_preset("aquila-moe-test", top_k=5)
    with pytest.raises(UserError, match="model.norm_eps = nan: must be a finite number > 0"):
        get_preset("aquila-test", norm_eps=float("nan"))
