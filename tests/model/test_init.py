"""Initial weights from the seed and the parameter's name: any box of a tensor, filled on its own,
holds exactly the values of the whole tensor there."""

from __future__ import annotations

import pytest
import torch

from aquila.model import init as model_init
from aquila.model.config import get_preset
from aquila.model.init import fill_normal, init_weights
from aquila.model.io import materialize
from aquila.model.sharding import LocalView
from aquila.model.transformer import AquilaModel


def _whole(name: str, shape: tuple[int, ...], seed: int = 7, std: float = 0.02) -> torch.Tensor:
    t = torch.empty(shape)
    fill_normal(LocalView(shape, (0,) * len(shape), t), name, seed, std)
    return t


def _box(name, shape, offset, size, seed: int = 7, std: float = 0.02) -> torch.Tensor:
    t = torch.empty(size)
    fill_normal(LocalView(shape, offset, t), name, seed, std)
    return t


@pytest.fixture
def small_blocks(monkeypatch):
    # Blocks of a few rows, so every tensor below spans many generators.
    monkeypatch.setattr(model_init, "BLOCK_ELEMENTS", 64)


@pytest.mark.parametrize(
    ("shape", "offset", "size"),
    [
        ((40, 24), (13, 0), (11, 24)),  # FSDP2 / column-parallel rows, off block boundaries
        ((40, 24), (0, 12), (40, 12)),  # row-parallel columns
        ((40, 24), (20, 6), (10, 6)),  # both (FSDP2 x TP)
        ((40, 24), (39, 0), (1, 24)),  # the last row of an uneven split
        ((6, 10, 8), (2, 0, 0), (3, 10, 8)),  # stacked experts, FSDP2 rows
        ((6, 10, 8), (1, 3, 2), (4, 5, 3)),  # any box of a 3-D tensor
        ((24,), (8,), (8,)),  # a vector
    ],
)
def test_a_box_holds_the_whole_tensors_values(small_blocks, shape, offset, size):
    whole = _whole("layers.0.mlp.w1", shape)
    box = _box("layers.0.mlp.w1", shape, offset, size)
    index = tuple(slice(o, o + n) for o, n in zip(offset, size))
    assert torch.equal(box, whole[index])


def test_values_depend_on_seed_and_name_only(small_blocks):
    a = _whole("layers.0.self_attn.q_proj.weight", (32, 16))
    assert torch.equal(a, _whole("layers.0.self_attn.q_proj.weight", (32, 16)))
    assert not torch.equal(a, _whole("layers.1.self_attn.q_proj.weight", (32, 16)))
    assert not torch.equal(a, _whole("layers.0.self_attn.q_proj.weight", (32, 16), seed=8))
    # An empty shard (a rank past the end of an uneven split) is fine and draws nothing.
    _box("x", (4, 16), (4, 0), (0, 16))


def test_a_block_is_bounded_and_the_draw_is_normal():
    # The default block: a whole 4096-wide matrix is drawn 1024 rows at a time.
    assert model_init.rows_per_block(4096) * 4096 == model_init.BLOCK_ELEMENTS
    t = _whole("w", (3000, 4096), std=0.05)
    assert t.mean().abs() < 1e-3 and t.std().item() == pytest.approx(0.05, rel=0.01)
    # Consecutive blocks come from different generators (no repeated rows).
    assert not torch.equal(t[:1024], t[1024:2048])


def test_model_init_follows_the_schemes_of_each_parameter():
    cfg = get_preset("aquila-moe-test", init_std=0.05, extra={"router_std": 0.5})
    model = materialize(AquilaModel(cfg, device="meta"), "cpu")
    init_weights(model, seed=3)
    params = dict(model.named_parameters())
    assert torch.equal(params["layers.0.input_layernorm.weight"], torch.ones(64))
    assert params["layers.1.mlp.w2"].std().item() == pytest.approx(0.05, rel=0.05)
    assert params["layers.0.mlp.gate.weight"].std().item() == pytest.approx(0.5, rel=0.1)
    assert params["embed_tokens.weight"].std().item() == pytest.approx(0.05, rel=0.05)
    # The rotary tables are recomputed, not left empty.
    eager = AquilaModel(cfg)
    assert torch.equal(model.rope_cos, eager.rope_cos)
    # The same seed gives the same model, another seed another one.
    again = materialize(AquilaModel(cfg, device="meta"), "cpu")
    init_weights(again, seed=3)
    for name, p in again.named_parameters():
        assert torch.equal(p, params[name]), name
    init_weights(again, seed=4)
    assert not torch.equal(again.embed_tokens.weight, model.embed_tokens.weight)
