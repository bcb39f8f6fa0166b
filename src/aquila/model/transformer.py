"""The Aquila2 decoder: embeddings, pre-norm blocks, final norm and an untied output head."""

from __future__ import annotations

import torch
from torch import nn

from aquila.model.config import ModelConfig
from aquila.model.layers import Attention, KVCache, RMSNorm, SwiGLU, rope_tables
from aquila.model.loss import linear_cross_entropy


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, device=None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, device=device)
        self.self_attn = Attention(cfg, layer_idx, device=device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, device=device)
        if cfg.n_experts > 0:
            from aquila.model.moe import MoEFFN

            self.mlp: nn.Module = MoEFFN(cfg, device=device)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.ffn_size, device=device)

    def forward(self, x, cos, sin, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class AquilaModel(nn.Module):
    """Decoder-only transformer; parameter names follow Hugging Face's Llama layout."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device)
        self.layers = nn.ModuleList(Block(cfg, i, device=device) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, device=device)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device)
        cos, sin = rope_tables(
            cfg.head_dim, cfg.max_seq_len, cfg.rope_base, cfg.rope_scaling, device
        )
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if str(device) != "meta":
            self.reset_parameters()

    def param_init(self, name: str) -> float | None:
        """The initial distribution of parameter ``name``: the std of a zero-mean normal, or
        None for ones (norm gains). Aquila2's scheme: every matrix N(0, init_std); the experts
        of a mixture-of-experts layer too, its router N(0, router_std)."""
        if name.endswith("norm.weight") or "layernorm" in name:
            return None
        if self.cfg.n_experts > 0 and name.endswith("mlp.gate.weight"):
            from aquila.model.moe import router_std

            return router_std(self.cfg)
        return self.cfg.init_std

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every parameter from ``generator`` (or torch's global one) in name order, with
        the distributions of ``param_init``. Training runs use ``aquila.model.init`` instead,
        whose values depend on the seed and the names alone, however the model is sharded."""
        for name, p in self.named_parameters():
            std = self.param_init(name)
            if std is None:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=generator)
        self.reset_rope()

    def reset_rope(self) -> None:
        """Recompute the rotary tables (buffers, not saved: still empty after a meta build)."""
        cos, sin = rope_tables(
            self.cfg.head_dim,
            self.cfg.max_seq_len,
            self.cfg.rope_base,
            self.cfg.rope_scaling,
            self.embed_tokens.weight.device,
        )
        self.rope_cos, self.rope_sin = cos, sin

    def hidden_states(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-normed hidden states of shape (B, T, hidden)."""
        t = tokens.shape[1]
        start = cache.pos if cache is not None else 0
        if start + t > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {start + t} positions exceeds max_seq_len {self.cfg.max_seq_len}"
            )
        cos, sin = self.rope_cos[start : start + t], self.rope_sin[start : start + t]
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, cache)
        if cache is not None:
            cache.pos += t
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits of shape (B, T, vocab)."""
        return self.lm_head(self.hidden_states(tokens, cache))

    def token_losses(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor,
        impl: str = "chunked",
        chunk_tokens: int = 0,
    ) -> torch.Tensor:
        """Cross-entropy per position, shape (B, T), in fp32; targets < 0 are ignored (loss 0).

        ``impl``: "chunked" (default) never holds the (tokens x vocab) logits, recomputing them
        a chunk at a time in backward; "full" materialises them; "liger" is Liger Kernel's
        fused kernel on CUDA (see :mod:`aquila.model.loss`)."""
        h = self.hidden_states(tokens)
        return linear_cross_entropy(h, self.lm_head.weight, targets, impl, chunk_tokens)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.max_seq_len, p.device, p.dtype)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.embed_tokens.weight.numel()
        return n


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6N (forward + backward matmuls) + 12 * layers * hidden * seq_len.

    N excludes the input embedding table, whose lookup does no arithmetic. For mixture-of-experts
    models N counts the active parameters (top-k experts per token).
    """
    t = seq_len or cfg.max_seq_len
    n = count_params(cfg, active=True) - cfg.vocab_size * cfg.hidden_size
    return 6 * n + 12 * cfg.n_layers * cfg.hidden_size * t


def count_params(cfg: ModelConfig, active: bool = False) -> int:
    """Parameter count from a model built on the meta device (allocates no memory)."""
    model = AquilaModel(cfg, device="meta")
    total = sum(p.numel() for p in model.parameters())
    if active and cfg.n_experts > 0:
        expert = 3 * cfg.hidden_size * cfg.ffn_size
        total -= cfg.n_layers * (cfg.n_experts - cfg.top_k) * expert
    return total
