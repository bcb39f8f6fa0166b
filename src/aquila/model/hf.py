"""Hugging Face interop: export to and import from ``LlamaForCausalLM`` checkpoints.

The Aquila2 decoder is the Llama architecture, so the parameter names already match Hugging Face's
(``model.`` prefix added, ``lm_head.weight`` as is) and the conversion is a rename plus a config
translation. ``transformers`` is not needed: configs are plain JSON and weights are safetensors.
Mixture-of-experts models go through ``aquila.model.hf_mixtral`` (Mixtral layout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from aquila.errors import UserError
from aquila.model.config import ModelConfig
from aquila.model.io import (
    atomic_dir,
    copy_tokenizer_files,
    export_state_dict,
    load_model_dir,
    load_state_into,
    resolve_model_dir,
    resolve_tokenizer_dir,
    write_model_files,
)
from aquila.model.transformer import AquilaModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LLAMA_ARCHS = {"LlamaForCausalLM", "AquilaForCausalLM", "AquilaModel"}
LLAMA_TYPES = {"llama", "aquila"}
HEAD = "lm_head.weight"


# ---------------------------------------------------------------------------------------------
# Llama layout <-> AquilaModel


def to_hf_llama(model: AquilaModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A ``LlamaForCausalLM`` config dict and state dict for a dense model."""
    cfg = model.cfg
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
    state = {(k if k == HEAD else f"model.{k}"): v for k, v in export_state_dict(model).items()}
    return config, state


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
    native: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith("rotary_emb.inv_freq"):  # older checkpoints store the (recomputable) table
            continue
        native[k if k == HEAD else k.removeprefix("model.")] = v
    if HEAD not in native:
        if config.get("tie_word_embeddings"):
            raise UserError(
                f"{source}: unsupported tie_word_embeddings=true without an {HEAD} tensor; "
                "the decoder has an untied output head"
            )
        raise UserError(f"{source}: the weights have no {HEAD} tensor")
    model = AquilaModel(cfg, device="meta")
    return load_state_into(model, native, "the checkpoint weights").eval()


# ---------------------------------------------------------------------------------------------
# Mixture of experts: delegated to the Mixtral converter


def _mixtral():
    try:
        from aquila.model import hf_mixtral
    except ModuleNotFoundError as exc:
        if exc.name != "aquila.model.hf_mixtral":
            raise
        raise UserError(
            "mixture-of-experts models convert through aquila.model.hf_mixtral, which this "
            "installation lacks"
        ) from None
    return hf_mixtral


def _is_mixtral(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return str(config.get("model_type", "")).lower() == "mixtral" or any(
        "mixtral" in str(a).lower() for a in archs
    )


# ---------------------------------------------------------------------------------------------
# Directories


def _check_distinct(src: Path, out: Path) -> None:
    src, dst = src.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise UserError(f"--out {out} would overwrite the source {src}; choose another directory")


def _token_ids(tokenizer_dir: Path | None) -> dict[str, int | None]:
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None}
    if tokenizer_dir is None:
        return ids
    from aquila.tokenizer import Tokenizer

    try:
        tok = Tokenizer.load(tokenizer_dir)
    except UserError:  # a foreign tokenizer without Aquila's specials: ids stay unknown
        return ids
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}


def export_hf(src: str | Path, out: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Export a model or run dir to a Hugging Face dir loadable by ``from_pretrained``."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    model_dir = resolve_model_dir(src)
    _check_distinct(Path(src), Path(out))
    _check_distinct(model_dir, Path(out))
    model = load_model_dir(model_dir, device="cpu")
    try:
        tok_dir: Path | None = resolve_tokenizer_dir(src)
    except UserError:
        tok_dir = None
    if model.cfg.n_experts > 0:
        config, state = _mixtral().to_hf_mixtral(model)
    else:
        config, state = to_hf_llama(model)
    state = {k: v.to(DTYPES[dtype]).contiguous() for k, v in state.items()}
    ids = _token_ids(tok_dir)
    # Explicit nulls: transformers' defaults (bos 1, eos 2) would otherwise be silently wrong.
    config.update(ids)
    config["torch_dtype"] = dtype
    generation = {**ids, "pad_token_id": ids["eos_token_id"]}
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        copied = copy_tokenizer_files(tok_dir, tmp) if tok_dir else []
    return {
        "source": str(model_dir),
        "out": str(out),
        "format": "hf",
        "architecture": config["architectures"][0],
        "dtype": dtype,
        "tensors": len(state),
        "params": sum(v.numel() for v in state.values()),
        "bytes": (out / "model.safetensors").stat().st_size,
        "tokenizer_files": copied,
    }


def read_hf_config(src: Path) -> dict[str, Any]:
    file = src / "config.json"
    if not file.is_file():
        raise UserError(f"{src} is not a Hugging Face model dir: config.json is missing")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{file}: expected a JSON object")
    return config


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weight file {path} is missing")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:  # safetensors and pickle raise several unrelated types
        raise UserError(f"cannot read {path} (corrupt or truncated?): {exc}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict")
    return state


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """Weights of a Hugging Face dir: safetensors (single or sharded) or ``pytorch_model.bin``."""
    for stem in ("model.safetensors", "pytorch_model.bin"):
        index = src / f"{stem}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UserError(f"cannot read {index}: {exc}") from None
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(_load_shard(src / shard))
            return state
        if (src / stem).is_file():
            return _load_shard(src / stem)
    raise UserError(
        f"{src} has no weights: expected model.safetensors, a sharded "
        "model.safetensors.index.json, or pytorch_model.bin"
    )


def import_hf(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Convert a Hugging Face Llama/Aquila/Mixtral dir into a native model dir."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src} does not exist or is not a directory")
    _check_distinct(src, Path(out))
    config = read_hf_config(src)
    source = str(src / "config.json")
    if _is_mixtral(config):
        model = _mixtral().from_hf_mixtral(config, read_hf_weights(src))
    else:
        archs = set(config.get("architectures") or [])
        mtype = str(config.get("model_type", "")).lower()
        if not (archs & LLAMA_ARCHS or mtype in LLAMA_TYPES):
            raise UserError(
                f"{source}: unsupported architectures {sorted(archs)} / model_type {mtype!r}; "
                "supported: LlamaForCausalLM, AquilaForCausalLM, MixtralForCausalLM"
            )
        # Translate the config first: an unsupported key fails before reading gigabytes.
        config_from_hf_llama(config, source)
        model = from_hf_llama(config, read_hf_weights(src), source)
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_model_files(model, tmp)
        copied = copy_tokenizer_files(src, tmp)
    return {
        "source": str(src),
        "out": str(out),
        "config": model.cfg.to_dict(),
        "params": model.num_params(),
        "tokenizer_files": copied,
    }
