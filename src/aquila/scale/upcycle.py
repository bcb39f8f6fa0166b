"""Scale-Out: turn a dense model into a mixture of experts (sparse upcycling, as AquilaMoE does).

Every expert starts as an exact copy of the layer's dense SwiGLU FFN and the router is drawn from
N(0, router_std). Whatever experts the router picks, the renormalised top-k weights sum to one,
so the block computes sum_k w_k FFN(x) = FFN(x): the upcycled model is the dense model's function.
The symmetry between identical experts is broken by the router itself: different experts see
different tokens from the first step, so their gradients differ.

``noise`` adds N(0, (noise * std(W))^2) to each expert's copy. It is *not* function preserving,
and no symmetric variant is: pairing experts as W + d and W - d would need every token routed to
both members of a pair with equal weights (top-2 picks any two experts with unequal weights), and
even then SwiGLU is not linear in W, so (f(W+d) + f(W-d)) / 2 = f(W) only to first order in d.
"""

from __future__ import annotations

import torch

from aquila.errors import UserError
from aquila.model.transformer import AquilaModel

DENSE_MLP = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


@torch.no_grad()
def upcycle(
    model: AquilaModel,
    n_experts: int = 8,
    top_k: int = 2,
    router_std: float = 0.02,
    noise: float = 0.0,
    seed: int = 0,
    aux_loss_coef: float | None = None,
    z_loss_coef: float | None = None,
) -> AquilaModel:
    """An MoE model whose experts copy ``model``'s FFNs; coefficients go into ``cfg.extra``."""
    model = getattr(model, "_orig_mod", model)
    src = model.cfg
    if src.n_experts > 0:
        raise UserError(f"the source already has {src.n_experts} experts; upcycle a dense model")
    if n_experts < 1:
        raise UserError(f"--experts {n_experts} must be at least 1")
    if not 1 <= top_k <= n_experts:
        raise UserError(f"--top-k {top_k} must be between 1 and --experts {n_experts}")
    if router_std < 0 or noise < 0:
        raise UserError("--router-std and --noise must be >= 0")
    extra = {**src.extra, "router_std": float(router_std)}
    if aux_loss_coef is not None:
        extra["aux_loss_coef"] = float(aux_loss_coef)
    if z_loss_coef is not None:
        extra["z_loss_coef"] = float(z_loss_coef)
    cfg = src.replace(n_experts=n_experts, top_k=top_k, extra=extra)
    gen = torch.Generator().manual_seed(seed)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    out = {k: v for k, v in state.items() if not k.endswith(DENSE_MLP)}
    for i in range(src.n_layers):
        p = f"layers.{i}.mlp."
        dense = {
            "w1": state[p + "gate_proj.weight"],
            "w3": state[p + "up_proj.weight"],
            "w2": state[p + "down_proj.weight"],
        }
        for name, w in dense.items():
            experts = w.unsqueeze(0).repeat(n_experts, 1, 1)
            if noise > 0:
                eps = torch.randn(experts.shape, generator=gen) * (noise * w.float().std().item())
                experts = experts + eps.to(experts)
            out[p + name] = experts
        router = torch.randn(n_experts, src.hidden_size, generator=gen) * router_std
        out[p + "gate.weight"] = router.to(dense["w1"])
    moe = AquilaModel(cfg, device="meta")
    from aquila.model.io import load_state_into

    load_state_into(moe, out, "the upcycled model")
    return moe.train(model.training)
