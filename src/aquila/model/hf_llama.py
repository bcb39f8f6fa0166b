"""The Llama layout <-> AquilaModel: Hugging Face's config and tensor names for a dense decoder,
and the recipes that build an ``AquilaModel`` from them (shared by the Mixtral converter)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from aquila.errors import UserError
from aquila.model.config import ModelConfig
from aquila.model.io import (
    TensorInfo,
    check_names,
    export_state_dict,
    load_state_into,
)
from aquila.model.transformer import AquilaModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LLAMA_ARCHS = {"LlamaForCausalLM", "AquilaForCausalLM", "AquilaModel"}
LLAMA_TYPES = {"llama", "aquila"}
HEAD = "lm_head.weight"
# Hugging Face's default shard size for save_pretrained.
DEFAULT_MAX_SHARD_SIZE = "5GB"


# ---------------------------------------------------------------------------------------------
# Llama layout <-> AquilaModel


def hf_llama_config(cfg: ModelConfig) -> dict[str, Any]:
    """The ``LlamaForCausalLM`` config dict of a dense model shape."""
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_base,
        "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_seq_len,
        "vocab_size": cfg.vocab_size,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "use_cache": True,
    }
    if cfg.rope_scaling != 1.0:
        config["rope_scaling"] = {"rope_type": "linear", "factor": cfg.rope_scaling}
    return config


def hf_name(native: str) -> str:
    return native if native == HEAD else f"model.{native}"


def llama_outputs(native: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The Hugging Face tensors one native tensor becomes (Llama: itself, renamed)."""
    return [(hf_name(native), tensor)]


def to_hf_llama(model: AquilaModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A ``LlamaForCausalLM`` config dict and state dict for a dense model (in memory)."""
    state = {}
    for k, v in export_state_dict(model).items():
        state.update(llama_outputs(k, v))
    return hf_llama_config(model.cfg), state


@dataclass
class Recipe:
    """How one native tensor is made from tensors of a checkpoint: ``build`` of ``sources``."""

    sources: list[str]
    shape: tuple[int, ...]
    dtype: torch.dtype
    build: Callable[[list[torch.Tensor]], torch.Tensor] = lambda ts: ts[0]


def llama_recipes(
    config: dict[str, Any], infos: Mapping[str, TensorInfo], source: str = "config.json"
) -> dict[str, Recipe]:
    """Native tensor -> its recipe, for a Llama-layout checkpoint with tensors ``infos``."""
    recipes: dict[str, Recipe] = {}
    for k, info in infos.items():
        if k.endswith("rotary_emb.inv_freq"):  # older checkpoints store the (recomputable) table
            continue
        native = k if k == HEAD else k.removeprefix("model.")
        recipes[native] = Recipe([k], info.shape, info.dtype)
    if HEAD not in recipes:
        if config.get("tie_word_embeddings"):
            raise UserError(
                f"{source}: unsupported tie_word_embeddings=true without an {HEAD} tensor; "
                "the decoder has an untied output head"
            )
        raise UserError(f"{source}: the weights have no {HEAD} tensor")
    return recipes


def build_native(
    recipes: Mapping[str, Recipe], names: list[str], read: Callable[[list[str]], dict]
) -> dict[str, torch.Tensor]:
    """The native tensors ``names``, from the checkpoint tensors ``read`` returns."""
    needed = list(dict.fromkeys(s for n in names for s in recipes[n].sources))
    got = read(needed)
    return {n: recipes[n].build([got[s] for s in recipes[n].sources]) for n in names}


def _infos(state: Mapping[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()}


def model_from_recipes(
    cfg: ModelConfig, recipes: Mapping[str, Recipe], state: Mapping[str, torch.Tensor]
) -> AquilaModel:
    """An ``AquilaModel`` holding the tensors the recipes make from an in-memory ``state``."""
    model = AquilaModel(cfg, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_names(expected, {k: r.shape for k, r in recipes.items()}, "the checkpoint weights")
    native = build_native(recipes, list(expected), lambda names: {n: state[n] for n in names})
    return load_state_into(model, native, "the checkpoint weights").eval()


def _get(config: dict[str, Any], key: str, default: Any = ..., source: str = "config.json") -> Any:
    if key in config and config[key] is not None:
        return config[key]
    if default is ...:
        raise UserError(f"{source}: required key {key!r} is missing")
    return default


def _rope_from_hf(config: dict[str, Any], source: str) -> tuple[float, float]:
    """(rope_theta, linear factor) from either the legacy keys or ``rope_parameters``."""
    params = config.get("rope_parameters")
    key = "rope_parameters"
    if not isinstance(params, dict):
        params, key = config.get("rope_scaling") or {}, "rope_scaling"
        if not isinstance(params, dict):
            raise UserError(f"{source}: {key} must be an object or null")
    theta = float(params.get("rope_theta", _get(config, "rope_theta", 10000.0, source)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, 1.0
    if rope_type == "linear":
        factor = float(_get(params, "factor", source=f"{source}: {key}"))
        if factor < 1.0:
            raise UserError(f"{source}: {key}.factor {factor} must be >= 1")
        return theta, factor
    raise UserError(
        f"{source}: unsupported {key}.rope_type {rope_type!r}; only 'default' and 'linear' are"
    )


def config_from_hf_llama(config: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate a Llama/Aquila ``config.json``; anything the decoder can't express is an error."""
    act = _get(config, "hidden_act", "silu", source)
    if act not in ("silu", "swish"):
        raise UserError(f"{source}: unsupported hidden_act {act!r}; only 'silu' (SwiGLU) is")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise UserError(f"{source}: unsupported {key}=true; the decoder has no biases")
    hidden = int(_get(config, "hidden_size", source=source))
    heads = int(_get(config, "num_attention_heads", source=source))
    head_dim = config.get("head_dim")
    if head_dim is not None and heads and int(head_dim) * heads != hidden:
        raise UserError(
            f"{source}: unsupported head_dim {head_dim} != hidden_size / num_attention_heads"
        )
    theta, factor = _rope_from_hf(config, source)
    return ModelConfig(
        vocab_size=int(_get(config, "vocab_size", source=source)),
        hidden_size=hidden,
        n_layers=int(_get(config, "num_hidden_layers", source=source)),
        n_heads=heads,
        n_kv_heads=int(_get(config, "num_key_value_heads", heads, source)),
        ffn_size=int(_get(config, "intermediate_size", source=source)),
        max_seq_len=int(_get(config, "max_position_embeddings", 2048, source)),
        rope_base=theta,
        rope_scaling=factor,
        norm_eps=float(_get(config, "rms_norm_eps", 1e-6, source)),
        init_std=float(_get(config, "initializer_range", 0.02, source)),
    )


def from_hf_llama(
    config: dict[str, Any], state: dict[str, torch.Tensor], source: str = "config.json"
) -> AquilaModel:
    """An ``AquilaModel`` holding exactly the tensors of a Llama-layout checkpoint."""
    cfg = config_from_hf_llama(config, source)
    return model_from_recipes(cfg, llama_recipes(config, _infos(state), source), state)
