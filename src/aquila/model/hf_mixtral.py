"""Hugging Face interop for mixture-of-experts models: the ``MixtralForCausalLM`` layout.

Export writes the layout every released Mixtral checkpoint uses (and that ``transformers``
converts on ``from_pretrained``): ``model.layers.N.block_sparse_moe.gate.weight`` and
``model.layers.N.block_sparse_moe.experts.E.{w1,w2,w3}.weight``. Import also accepts the fused
in-memory layout of transformers 5 (``mlp.gate.weight``, ``mlp.experts.gate_up_proj``,
``mlp.experts.down_proj``), which is what ``MixtralForCausalLM.state_dict()`` returns there.
Attention, norms, embeddings and the head share the Llama converter's names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from aquila.errors import UserError
from aquila.model.config import ModelConfig
from aquila.model.hf_llama import (
    HEAD,
    Recipe,
    _infos,
    config_from_hf_llama,
    hf_llama_config,
    llama_outputs,
    model_from_recipes,
)
from aquila.model.io import TensorInfo, export_state_dict
from aquila.model.moe import aux_loss_coef, router_std, z_loss_coef
from aquila.model.transformer import AquilaModel

_MLP = re.compile(r"^layers\.(\d+)\.mlp\.(gate\.weight|w1|w2|w3)$")
_HUB_EXPERT = re.compile(r"^layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")
_HUB_GATE = re.compile(r"^layers\.(\d+)\.block_sparse_moe\.gate\.weight$")
_FUSED = re.compile(
    r"^layers\.(\d+)\.mlp\.(gate\.weight|experts\.gate_up_proj|experts\.down_proj)$"
)


def hf_mixtral_config(cfg: ModelConfig) -> dict[str, Any]:
    """The ``MixtralForCausalLM`` config dict of a mixture-of-experts model shape."""
    if cfg.n_experts <= 0:
        raise UserError("to_hf_mixtral needs a mixture-of-experts model (n_experts > 0)")
    config = hf_llama_config(cfg)
    config.update(
        architectures=["MixtralForCausalLM"],
        model_type="mixtral",
        num_local_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        # Kept as is: transformers' Mixtral loss is top_k times ours and is averaged over layers
        # before the product, so no coefficient makes the two objectives identical.
        router_aux_loss_coef=aux_loss_coef(cfg),
        output_router_logits=False,
        router_jitter_noise=0.0,
        sliding_window=None,
        # Not read by transformers; keeps the router settings across a round trip.
        router_z_loss_coef=z_loss_coef(cfg),
        router_init_std=router_std(cfg),
    )
    config.pop("mlp_bias", None)  # Mixtral's experts have no bias option
    return config


def mixtral_outputs(
    native: str, value: torch.Tensor, n_experts: int
) -> list[tuple[str, torch.Tensor]]:
    """The Hub-layout tensors one native tensor becomes: stacked experts are split."""
    m = _MLP.match(native)
    if not m:
        return llama_outputs(native, value)
    layer, kind = m.groups()
    prefix = f"model.layers.{layer}.block_sparse_moe"
    if kind == "gate.weight":
        return [(f"{prefix}.gate.weight", value)]
    return [
        (f"{prefix}.experts.{e}.{kind}.weight", value[e].contiguous()) for e in range(n_experts)
    ]


def to_hf_mixtral(model: AquilaModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A ``MixtralForCausalLM`` config dict and state dict (Hub layout) for an MoE model."""
    cfg = model.cfg
    config = hf_mixtral_config(cfg)
    state: dict[str, torch.Tensor] = {}
    for key, value in export_state_dict(model).items():
        state.update(mixtral_outputs(key, value, cfg.n_experts))
    return config, state


def config_from_hf_mixtral(config: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate a Mixtral ``config.json``; a sliding window or jitter noise is an error."""
    if config.get("sliding_window") not in (None, 0) and int(config["sliding_window"]) < int(
        config.get("max_position_embeddings", 0)
    ):
        raise UserError(
            f"{source}: unsupported sliding_window {config['sliding_window']}; "
            "the decoder attends over the whole context"
        )
    base = config_from_hf_llama(config, source)
    try:
        experts = int(config["num_local_experts"])
        top_k = int(config.get("num_experts_per_tok", 2))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{source}: num_local_experts must be a positive integer") from None
    extra = {
        "aux_loss_coef": float(config.get("router_aux_loss_coef", 0.001)),
        "z_loss_coef": float(config.get("router_z_loss_coef", 0.01)),
        "router_std": float(config.get("router_init_std", base.init_std)),
    }
    return base.replace(n_experts=experts, top_k=top_k, extra=extra)


def _strip(key: str) -> str:
    return key if key == HEAD else key.removeprefix("model.")


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(ts)


def _half(i: int):
    def build(ts: list[torch.Tensor]) -> torch.Tensor:
        return ts[0].chunk(2, dim=1)[i].contiguous()

    return build


def mixtral_recipes(
    cfg: ModelConfig, infos: Mapping[str, TensorInfo], source: str = "config.json"
) -> dict[str, Recipe]:
    """Native tensor -> its recipe, for a Mixtral checkpoint (Hub or fused layout)."""
    recipes: dict[str, Recipe] = {}
    experts: dict[tuple[str, str], dict[int, tuple[str, TensorInfo]]] = {}
    for key, info in infos.items():
        k = _strip(key)
        if k.endswith("rotary_emb.inv_freq"):
            continue
        if m := _HUB_EXPERT.match(k):
            layer, e, kind = m.groups()
            experts.setdefault((layer, kind), {})[int(e)] = (key, info)
        elif m := _HUB_GATE.match(k):
            recipes[f"layers.{m.group(1)}.mlp.gate.weight"] = Recipe([key], info.shape, info.dtype)
        elif m := _FUSED.match(k):
            layer, kind = m.groups()
            if kind == "experts.gate_up_proj":  # (E, 2*ffn, hidden): gate rows, then up rows
                e, two_f, *rest = info.shape
                half = (e, two_f // 2, *rest)
                recipes[f"layers.{layer}.mlp.w1"] = Recipe([key], half, info.dtype, _half(0))
                recipes[f"layers.{layer}.mlp.w3"] = Recipe([key], half, info.dtype, _half(1))
            elif kind == "experts.down_proj":
                recipes[f"layers.{layer}.mlp.w2"] = Recipe([key], info.shape, info.dtype)
            else:
                recipes[f"layers.{layer}.mlp.gate.weight"] = Recipe([key], info.shape, info.dtype)
        else:
            recipes[k] = Recipe([key], info.shape, info.dtype)
    for (layer, kind), by_expert in experts.items():
        missing = sorted(set(range(cfg.n_experts)) - set(by_expert))
        if missing or len(by_expert) != cfg.n_experts:
            raise UserError(
                f"{source}: layer {layer} {kind}: expected experts 0..{cfg.n_experts - 1}, "
                f"missing {missing[:4]}"
            )
        keys = [by_expert[e][0] for e in range(cfg.n_experts)]
        first = by_expert[0][1]
        recipes[f"layers.{layer}.mlp.{kind}"] = Recipe(
            keys, (cfg.n_experts, *first.shape), first.dtype, _stack
        )
    if HEAD not in recipes:
        raise UserError(f"{source}: the weights have no {HEAD} tensor")
    return recipes


def from_hf_mixtral(
    config: dict[str, Any], state: dict[str, torch.Tensor], source: str = "config.json"
) -> AquilaModel:
    """An ``AquilaModel`` holding exactly the tensors of a Mixtral checkpoint (either layout)."""
    cfg = config_from_hf_mixtral(config, source)
    return model_from_recipes(cfg, mixtral_recipes(cfg, _infos(state), source), state)
