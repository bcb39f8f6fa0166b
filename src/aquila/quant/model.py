"""Quantize a whole model (RTN or GPTQ), and save / load quantized model dirs.

Every Linear inside the decoder blocks becomes a :class:`QuantLinear`; the embeddings, norms,
MoE routers and (by default) ``lm_head`` stay in full precision. GPTQ runs block by block: the
calibration tokens go through the model whose earlier blocks are already quantized, so each
block's Hessians see the inputs it will get at inference.

MoE blocks are first split into one Linear per expert projection (:mod:`aquila.model.moe_split`), so
every expert is quantized on its own, and under GPTQ from the tokens the router sends it. An
expert that no calibration token reaches has no Hessian; it is rounded to nearest instead and
named in ``QuantConfig.rtn_fallback``.

A quantized model dir is a normal model dir whose ``model.json`` also holds a ``quantization``
object; its safetensors file holds ``<linear>.qweight`` / ``.scales`` / ``.zeros`` for each
quantized Linear.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from aquila.errors import UserError
from aquila.model.int4 import QuantConfig, pack_int4, pad_for_kernel, quantize_rtn
from aquila.model.int4_linear import QuantLinear
from aquila.model.layers import replace_module
from aquila.model.moe import MoEFFN
from aquila.model.moe_split import split_experts
from aquila.model.transformer import AquilaModel
from aquila.quant.gptq import HessianAccumulator, gptq_quantize


def target_linears(model: AquilaModel, include_lm_head: bool = False) -> dict[str, nn.Linear]:
    """The Linears to quantize, by qualified name, in forward order: MoE routers are not among
    them (a router's weights choose experts; rounding them would change which expert runs)."""
    routers = {id(m.gate) for m in model.modules() if isinstance(m, MoEFFN)}
    out = {
        f"layers.{i}.{name}": m
        for i, block in enumerate(model.layers)
        for name, m in block.named_modules()
        if isinstance(m, nn.Linear) and id(m) not in routers
    }
    if include_lm_head:
        out["lm_head"] = model.lm_head
    return out


def _to_quant_linear(weight: torch.Tensor, q, scales, zeros, group_size: int) -> QuantLinear:
    n, k = weight.shape
    q_pad, s_pad, z_pad = pad_for_kernel(q, scales, zeros, group_size)
    return QuantLinear.from_quantized(pack_int4(q_pad), s_pad, z_pad, k, n, group_size)


class _StopForward(Exception):
    pass


def _block_hessians(
    model: AquilaModel, block_idx: int, calib: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor | None]:
    """Hessians of the inputs of block ``block_idx``'s Linears over the calibration batches
    (an expert's Linears see only the tokens routed to it); None where nothing came in."""
    block = model.layers[block_idx]
    prefix = f"layers.{block_idx}."
    targets = target_linears(model)
    linears = {n[len(prefix) :]: m for n, m in targets.items() if n.startswith(prefix)}
    acc = {n: HessianAccumulator(m.in_features) for n, m in linears.items()}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=n: acc[name].add(inp[0]))
        for n, m in linears.items()
    ]

    def stop(*_):
        raise _StopForward

    hooks.append(block.register_forward_hook(stop))  # later blocks are not needed
    try:
        with torch.no_grad():
            for i in range(0, calib.shape[0], batch_size):
                with contextlib.suppress(_StopForward):
                    model.hidden_states(calib[i : i + batch_size])
    finally:
        for hk in hooks:
            hk.remove()
    return {n: a.hessian() if a.n else None for n, a in acc.items()}


def quantize_model(
    model: AquilaModel,
    cfg: QuantConfig,
    calib: torch.Tensor | None = None,
    batch_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> AquilaModel:
    """Replace the target Linears of ``model`` (in place) by int4 ``QuantLinear``s.

    The new modules hold the portable file layout (ready to save); :func:`aquila.model.int4_linear.prepare_int4` packs
    them for the int4 kernels.

    ``calib`` (B, T) token ids are needed for GPTQ. ``lm_head`` (if included) is quantized with
    GPTQ on the final hidden states, otherwise with RTN.
    """
    cfg.validate()
    if cfg.method == "gptq" and (calib is None or calib.numel() == 0):
        raise UserError("GPTQ needs calibration tokens (--calib-tokens > 0)")
    model.eval()
    split_experts(model)
    targets = target_linears(model, cfg.include_lm_head)
    cfg.modules, cfg.rtn_fallback = list(targets), []
    for i in range(len(model.layers)):
        prefix = f"layers.{i}."
        names = [n for n in targets if n.startswith(prefix)]
        hessians = _block_hessians(model, i, calib, batch_size) if cfg.method == "gptq" else {}
        for name in names:
            h = hessians.get(name[len(prefix) :])
            if cfg.method == "gptq" and h is None:
                cfg.rtn_fallback.append(name)
            _quantize_one(model, name, targets[name], cfg, h)
        if progress:
            progress(f"block {i}")
    if cfg.include_lm_head:
        h = None
        if cfg.method == "gptq":
            acc = HessianAccumulator(model.cfg.hidden_size)
            with torch.no_grad():
                for i in range(0, calib.shape[0], batch_size):
                    acc.add(model.hidden_states(calib[i : i + batch_size]))
            h = acc.hessian()
        _quantize_one(model, "lm_head", model.lm_head, cfg, h)
    return model


def _quantize_one(
    model: AquilaModel, name: str, linear: nn.Linear, cfg: QuantConfig, hessian: torch.Tensor | None
) -> None:
    w = linear.weight.detach().float().cpu()
    if hessian is None:
        q, s, z = quantize_rtn(w, cfg.group_size)
    else:
        q, s, z = gptq_quantize(w, hessian, cfg.group_size, damp=cfg.damp, act_order=cfg.act_order)
    replace_module(model, name, _to_quant_linear(w, q, s, z, cfg.group_size))


# ---------------------------------------------------------------------------------------------
# Model dirs


def save_quantized_model_dir(
    model: AquilaModel, cfg: QuantConfig, out: str | Path, tokenizer=None
) -> Path:
    """Write a quantized model dir (atomically, like :func:`aquila.model.io.save_model_dir`)."""
    from safetensors.torch import save_file

    from aquila.model.io import (
        CONFIG_FILE,
        FORMAT,
        FORMAT_VERSION,
        WEIGHTS_FILE,
        atomic_dir,
        export_state_dict,
    )

    out = Path(out)
    with atomic_dir(out) as tmp:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": model.cfg.to_dict(),
            "quantization": cfg.to_dict(),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(export_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (the rotary tables included)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the decoder blocks' Linear weights (float or int4 + scales + zeros)."""
    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += sum(t.numel() * t.element_size() for t in (m.qweight, m.scales, m.zeros))
    for block in getattr(model, "layers", []):
        for m in block.modules():
            if isinstance(m, nn.Linear):
                total += m.weight.numel() * m.weight.element_size()
            elif type(m) is MoEFFN:  # stacked float experts
                total += sum(w.numel() * w.element_size() for w in (m.w1, m.w3, m.w2))
    return total
