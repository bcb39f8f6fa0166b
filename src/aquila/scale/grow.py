"""Scale-Up: initialise a wider and deeper dense model from a trained smaller one.

Methods:
- ``fpi``: function-preserving initialisation (Net2Net / bert2BERT's FPI, with the RMSNorm care
  described in ``aquila.scale.maps``). Width growth of hidden size, FFN size and query/key/value
  heads keeps the logits; added layers keep them too when they start as identity
  (``identity_new_layers``: zero ``o_proj`` and ``down_proj``, so the residual passes through).
- ``aki``: bert2BERT's advanced knowledge initialisation: as FPI, but every *new* output unit of
  layer l (new query/kv heads, new FFN neurons, new hidden dims written by ``o_proj``/``down_proj``)
  takes its weights from layer l+1 (the top layer uses its own). The copies then differ from their
  sources, which breaks the symmetry FPI leaves; the function is no longer exactly preserved.
- ``aki-pro``: AquilaMoE's AKI-Pro: AKI with depth grown by interpolation (each new layer beside its
  source) rather than stacking; GQA is handled by the head map for every method.
- ``random``: a fresh random initialisation of the target, the from-scratch baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from aquila.errors import UserError
from aquila.model.config import ModelConfig
from aquila.model.transformer import AquilaModel
from aquila.scale.maps import DEPTH_MODES, NORM_MODES, HeadMap, HiddenMap, NeuronMap, depth_plan

METHODS = ("fpi", "aki", "aki-pro", "random")
Tensors = dict[str, torch.Tensor]

Q, K, V, OUT_PROJ = (f"self_attn.{p}_proj.weight" for p in "qkvo")
GATE, UP, DOWN = (f"mlp.{p}_proj.weight" for p in ("gate", "up", "down"))
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def check_target(src: ModelConfig, target: ModelConfig) -> None:
    """Raise ``UserError`` unless ``target`` is a dense model at least as large in every dim."""
    if src.n_experts > 0 or target.n_experts > 0:
        raise UserError(
            "grow works on dense models; grow the dense model first, then `aquila upcycle` it"
        )
    if target.vocab_size != src.vocab_size:
        raise UserError(
            f"--to: vocab_size {target.vocab_size} differs from the source's {src.vocab_size}; "
            "growing keeps the tokenizer"
        )
    dims = {
        "hidden": (src.hidden_size, target.hidden_size),
        "layers": (src.n_layers, target.n_layers),
        "heads": (src.n_heads, target.n_heads),
        "kv_heads": (src.n_kv_heads, target.n_kv_heads),
        "ffn": (src.ffn_size, target.ffn_size),
    }
    for name, (a, b) in dims.items():
        if b < a:
            raise UserError(
                f"--to: {name} {b} is smaller than the source's {a}; grow cannot shrink"
            )
    if target.head_dim != src.head_dim:
        raise UserError(
            f"--to: head_dim {target.head_dim} (hidden/heads) differs from the source's "
            f"{src.head_dim}; width growth keeps head_dim and adds heads"
        )
    g_src, g_dst = src.n_heads // src.n_kv_heads, target.n_heads // target.n_kv_heads
    if g_dst < g_src:
        raise UserError(
            f"--to: {target.n_heads}/{target.n_kv_heads} heads give GQA groups of {g_dst}, "
            f"smaller than the source's {g_src}; every query head must keep its key/value head"
        )


@dataclass
class _Plan:
    hidden: HiddenMap
    ffn: NeuronMap
    heads: HeadMap
    head_dim: int
    std: float
    gen: torch.Generator


def _in_cols(w: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """A reader of the (normed) residual stream: (out, d) -> (out, D)."""
    hm = plan.hidden
    out = w[:, hm.src] * hm.in_scale.to(w)[None]
    n_free = int(hm.free.sum())
    if n_free:
        fresh = torch.randn(w.shape[0], n_free, generator=plan.gen) * plan.std
        out[:, hm.free] = fresh.to(out)
    return out


def _out_rows(w: torch.Tensor, hm: HiddenMap) -> torch.Tensor:
    """A writer into the residual stream: (d, in) -> (D, in)."""
    return w[hm.src] * hm.out_scale.to(w)[:, None]


def _heads(w: torch.Tensor, src: torch.Tensor, hd: int) -> torch.Tensor:
    return w.view(-1, hd, w.shape[-1])[src].reshape(-1, w.shape[-1])


def expand_layer(small: Tensors, plan: _Plan) -> Tensors:
    """FPI width expansion of one block's tensors (names relative to ``layers.N.``)."""
    hm, hd, heads, ffn = plan.hidden, plan.head_dim, plan.heads, plan.ffn
    f = {k: v.float() for k, v in small.items()}
    out = {n: f[n][hm.src] * hm.gain_scale.float() for n in NORMS}
    out[Q] = _heads(_in_cols(f[Q], plan), heads.q_src, hd)
    out[K] = _heads(_in_cols(f[K], plan), heads.kv_src, hd)
    out[V] = _heads(_in_cols(f[V], plan), heads.kv_src, hd)
    o = (
        f[OUT_PROJ].view(f[OUT_PROJ].shape[0], -1, hd)[:, heads.q_src]
        * heads.q_split.float()[None, :, None]
    )
    out[OUT_PROJ] = _out_rows(o.reshape(o.shape[0], -1), hm)
    out[GATE] = _in_cols(f[GATE], plan)[ffn.src]
    out[UP] = _in_cols(f[UP], plan)[ffn.src]
    out[DOWN] = _out_rows(f[DOWN][:, ffn.src] * ffn.split.float()[None], hm)
    return {k: v.to(small[k].dtype) for k, v in out.items()}


def aki_merge(cur: Tensors, nxt: Tensors, plan: _Plan) -> Tensors:
    """AKI: the new output units of a layer come from the next layer's expansion."""
    hd = plan.head_dim
    rows = {
        Q: plan.heads.new_q.repeat_interleave(hd),
        K: plan.heads.new_kv.repeat_interleave(hd),
        V: plan.heads.new_kv.repeat_interleave(hd),
        GATE: plan.ffn.new,
        UP: plan.ffn.new,
        OUT_PROJ: plan.hidden.new,
        DOWN: plan.hidden.new,
    }
    out = dict(cur)
    for name, mask in rows.items():
        w = cur[name].clone()
        w[mask] = nxt[name][mask]
        out[name] = w
    return out


def _layer(state: Tensors, i: int) -> Tensors:
    prefix = f"layers.{i}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def resolve_depth_mode(method: str, depth_mode: str | None) -> str:
    if method not in METHODS:
        raise UserError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if depth_mode is None:
        return "interpolate" if method == "aki-pro" else "stack"
    if depth_mode not in DEPTH_MODES:
        raise UserError(f"--depth-mode {depth_mode!r} is not one of {', '.join(DEPTH_MODES)}")
    if method == "aki-pro" and depth_mode != "interpolate":
        raise UserError("--method aki-pro grows depth by interpolation; drop --depth-mode stack")
    return depth_mode


@torch.no_grad()
def grow(
    model: AquilaModel,
    target: ModelConfig,
    method: str = "fpi",
    depth_mode: str | None = None,
    identity_new_layers: bool = False,
    norm_mode: str = "tile",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> AquilaModel:
    """A model of shape ``target`` initialised from ``model`` (see the module docstring).

    ``depth_mode`` defaults to "interpolate" for aki-pro and "stack" otherwise; ``norm_mode``
    picks how the hidden dims grow ("tile" or "rescale", see ``aquila.scale.maps``);
    ``progress(done, total)`` is called after each layer.
    """
    model = getattr(model, "_orig_mod", model)
    depth_mode = resolve_depth_mode(method, depth_mode)
    if norm_mode not in NORM_MODES:
        raise UserError(f"--norm-mode {norm_mode!r} is not one of {', '.join(NORM_MODES)}")
    src = model.cfg
    check_target(src, target)
    gen = torch.Generator().manual_seed(seed)
    device = model.embed_tokens.weight.device
    if method == "random":
        fresh = AquilaModel(target, device=device)
        fresh.reset_parameters(gen if device.type == "cpu" else None)
        return fresh.train(model.training)
    plan = _Plan(
        HiddenMap.build(src.hidden_size, target.hidden_size, norm_mode, gen),
        NeuronMap.build(src.ffn_size, target.ffn_size, gen),
        HeadMap.build(src.n_heads, src.n_kv_heads, target.n_heads, target.n_kv_heads, gen),
        src.head_dim,
        target.init_std,
        gen,
    )
    _to_device(plan, device)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    hm = plan.hidden
    emb = state["embed_tokens.weight"].float()
    out: Tensors = {
        "embed_tokens.weight": (emb[:, hm.src] * hm.out_scale.float()[None]).to(emb.dtype),
        "norm.weight": (state["norm.weight"][hm.src] * hm.gain_scale.to(state["norm.weight"])),
        "lm_head.weight": _in_cols(state["lm_head.weight"].float(), plan).to(emb.dtype),
    }
    expanded: dict[int, Tensors] = {}

    def fpi_layer(i: int) -> Tensors:
        if i not in expanded:
            expanded[i] = expand_layer(_layer(state, i), plan)
        return expanded[i]

    layers: list[Tensors] = []
    for i in range(src.n_layers):
        cur = fpi_layer(i)
        if method in ("aki", "aki-pro") and i + 1 < src.n_layers:
            cur = aki_merge(cur, fpi_layer(i + 1), plan)
        expanded.pop(i - 1, None)  # keep at most the current and the next expansion
        layers.append(cur)
        if progress:
            progress(i + 1, src.n_layers + 1)
    for j, (i, is_new) in enumerate(depth_plan(src.n_layers, target.n_layers, depth_mode)):
        block = {k: v.clone() for k, v in layers[i].items()} if is_new else layers[i]
        if is_new and identity_new_layers:
            block[OUT_PROJ].zero_()
            block[DOWN].zero_()
        out.update({f"layers.{j}.{k}": v.contiguous() for k, v in block.items()})
    if norm_mode == "rescale":
        # Zero-padded dims shrink mean(h^2) by d/D; RMSNorm's eps must shrink with it to be exact.
        target = target.replace(norm_eps=src.norm_eps * src.hidden_size / target.hidden_size)
    grown = AquilaModel(target, device="meta")
    from aquila.model.io import load_state_into

    load_state_into(grown, out, "the grown model")
    if progress:
        progress(src.n_layers + 1, src.n_layers + 1)
    return grown.train(model.training)


def _to_device(plan: _Plan, device: torch.device) -> None:
    for m in (plan.hidden, plan.ffn, plan.heads):
        for name, value in vars(m).items():
            if isinstance(value, torch.Tensor):
                setattr(m, name, value.to(device))
