"""Mixture-of-experts feed-forward block (Mixtral / AquilaMoE style): top-k routing over SwiGLU experts.

Expert weights are stacked into three tensors, ``w1``/``w3`` (gate/up, shape (E, ffn, hidden)) and
``w2`` (down, shape (E, hidden, ffn)), so expert ``e`` is exactly Mixtral's
``block_sparse_moe.experts.e.{w1,w3,w2}.weight``. One parameter per kind also means every rank
always holds a gradient for it, whichever experts its tokens reached, so plain gradient
all-reduces and FSDP never see a missing gradient.

Routing follows Mixtral: softmax over all experts, keep the top-k, renormalise the kept weights.
Dispatch is capacity-free (no token is dropped): the (token, slot) assignments are sorted by
expert and each expert runs one matmul over its contiguous slice.

Auxiliary losses of the last forward are kept on the module for the trainer:
- ``aux_loss``: load balancing, ``E * sum_i f_i * P_i`` with ``f_i`` the share of the N*k
  assignments that went to expert i and ``P_i`` its mean router probability (Switch Transformer
  / Megatron-LM definition: 1.0 when balanced; Hugging Face's Mixtral loss is ``top_k`` times it).
- ``z_loss``: router z-loss, ``mean(logsumexp(logits)^2)`` (ST-MoE), which keeps logits small.
Coefficients come from ``cfg.extra`` ("aux_loss_coef", default 0.001; "z_loss_coef", default 0.01);
the router init std is "router_std" (default 0.02).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aquila.model.config import ModelConfig

DEFAULT_ROUTER_STD = 0.02
DEFAULT_AUX_LOSS_COEF = 0.001
DEFAULT_Z_LOSS_COEF = 0.01


def router_std(cfg: ModelConfig) -> float:
    return float(cfg.extra.get("router_std", DEFAULT_ROUTER_STD))


def aux_loss_coef(cfg: ModelConfig) -> float:
    return float(cfg.extra.get("aux_loss_coef", DEFAULT_AUX_LOSS_COEF))


def z_loss_coef(cfg: ModelConfig) -> float:
    return float(cfg.extra.get("z_loss_coef", DEFAULT_Z_LOSS_COEF))


class MoEFFN(nn.Module):
    """Top-k routed SwiGLU experts; a drop-in replacement for the dense ``SwiGLU`` of a block."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str | None = None):
        super().__init__()
        if cfg.n_experts < 1 or not 1 <= cfg.top_k <= cfg.n_experts:
            from aquila.errors import UserError

            raise UserError(
                f"invalid model config: top_k {cfg.top_k} must be in 1..n_experts {cfg.n_experts}"
            )
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        h, f, e = cfg.hidden_size, cfg.ffn_size, cfg.n_experts
        self.gate = nn.Linear(h, e, bias=False, device=device)
        self.w1 = nn.Parameter(torch.empty(e, f, h, device=device))
        self.w3 = nn.Parameter(torch.empty(e, f, h, device=device))
        self.w2 = nn.Parameter(torch.empty(e, h, f, device=device))
        self.init_std, self.router_std = cfg.init_std, router_std(cfg)
        self.aux_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        self.tokens_per_expert: torch.Tensor | None = None
        if str(device) != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Experts N(0, init_std); router N(0, router_std)."""
        for w in (self.w1, self.w3, self.w2):
            w.normal_(0.0, self.init_std, generator=generator)
        self.gate.weight.normal_(0.0, self.router_std, generator=generator)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits (N, E) in fp32, renormalised top-k weights (N, k) and indices (N, k)."""
        # fp32 routing: under bf16 autocast near-ties would flip expert choices between runs.
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.gate.weight.float())
        probs = logits.softmax(dim=-1)
        weights, index = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n = x.shape[0]
        logits, weights, index = self.route(x)
        flat = index.reshape(-1)  # (N*k,) expert of each (token, slot) assignment
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts)
        token = order // self.top_k
        outs = []
        # One host sync for the split sizes; the loop runs over experts, never over tokens.
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c == 0:
                continue
            outs.append(self.expert_forward(e, x.index_select(0, token[start : start + c])))
            start += c
        sorted_out = torch.cat(outs) if outs else x.new_zeros(0, shape[-1])
        # Un-sort and combine the k slots of each token with a weighted sum (no atomics: the
        # result does not depend on scheduling, unlike an index_add over duplicate tokens).
        per_slot = torch.empty_like(sorted_out).index_copy_(0, order, sorted_out)
        y = (per_slot.view(n, self.top_k, -1) * weights.unsqueeze(-1).to(x.dtype)).sum(dim=1)
        self._store_losses(logits, flat, counts)
        return y.view(shape)

    def expert_forward(self, e: int, xs: torch.Tensor) -> torch.Tensor:
        """Expert ``e``'s SwiGLU on the rows ``xs`` routed to it (a subclass may store experts
        differently, e.g. as int4 Linears)."""
        hid = F.silu(F.linear(xs, self.w1[e])) * F.linear(xs, self.w3[e])
        return F.linear(hid, self.w2[e])

    def _store_losses(self, logits: torch.Tensor, flat: torch.Tensor, counts: torch.Tensor) -> None:
        probs = logits.softmax(dim=-1)
        share = counts.float() / max(flat.numel(), 1)  # f_i: no gradient (argmax routing)
        self.aux_loss = self.n_experts * (share * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        self.tokens_per_expert = counts.detach()


def moe_layers(model: nn.Module) -> list[MoEFFN]:
    return [m for m in model.modules() if isinstance(m, MoEFFN)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum over MoE layers of ``aux_loss_coef * aux_loss + z_loss_coef * z_loss`` of the last
    forward (0 for a dense model); add it to the language-modelling loss before ``backward``."""
    cfg = getattr(getattr(model, "_orig_mod", model), "cfg", None)
    a = aux_loss_coef(cfg) if cfg is not None else DEFAULT_AUX_LOSS_COEF
    z = z_loss_coef(cfg) if cfg is not None else DEFAULT_Z_LOSS_COEF
    total: torch.Tensor | None = None
    for m in moe_layers(model):
        if m.aux_loss is None or m.z_loss is None:
            continue
        term = a * m.aux_loss + z * m.z_loss
        total = term if total is None else total + term
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    return total


def expert_utilisation(model: nn.Module) -> list[list[int]]:
    """Tokens routed to each expert in the last forward, one list per MoE layer ([] if dense)."""
    return [
        m.tokens_per_expert.tolist() if m.tokens_per_expert is not None else [0] * m.n_experts
        for m in moe_layers(model)
    ]
