"""Model configuration and the named presets of the Aquila2 family."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aquila.checks import check_fields, integer, number, refuse, rule
from aquila.errors import UserError

if TYPE_CHECKING:
    pass

# Aquila2's vocabulary: 100,000 BPE tokens + 8 special tokens; [CLS] is BOS and </s> is EOS.
AQUILA2_VOCAB = 100_008


@dataclass
class ModelConfig:
    """Shape and numerics of an Aquila2 decoder (Llama architecture: RMSNorm, SwiGLU, RoPE, GQA)."""

    vocab_size: int = rule(AQUILA2_VOCAB, integer(at_least=1))
    hidden_size: int = rule(4096, integer(at_least=1))
    n_layers: int = rule(32, integer(at_least=1))
    n_heads: int = rule(32, integer(at_least=1))
    n_kv_heads: int = rule(32, integer(at_least=1))
    ffn_size: int = rule(11008, integer(at_least=1))
    max_seq_len: int = rule(2048, integer(at_least=1))
    rope_base: float = rule(10000.0, number(above=0))
    # Linear position interpolation for long context: positions are divided by this factor.
    rope_scaling: float = rule(1.0, number(at_least=1))
    norm_eps: float = rule(1e-5, number(above=0))
    init_std: float = rule(0.02, number(at_least=0))
    # Mixture of experts: 0 experts means a dense SwiGLU FFN in every layer.
    n_experts: int = rule(0, integer(at_least=0))
    top_k: int = rule(2, integer(at_least=1))
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def validate(self) -> None:
        """Each key against its rule, then the relations between them; one line names the
        first key that is wrong."""
        check_fields(self, "model")
        if self.hidden_size % self.n_heads:
            raise refuse(
                "model.n_heads", self.n_heads, f"must divide model.hidden_size ({self.hidden_size})"
            )
        if self.n_heads % self.n_kv_heads:
            raise refuse(
                "model.n_kv_heads", self.n_kv_heads, f"must divide model.n_heads ({self.n_heads})"
            )
        if self.head_dim % 2:
            raise refuse(
                "model.n_heads",
                self.n_heads,
                f"must leave an even head dim for rotary embeddings (hidden_size / n_heads = "
                f"{self.head_dim})",
            )
        if self.n_experts and self.top_k > self.n_experts:
            raise refuse(
                "model.top_k", self.top_k, f"must be <= model.n_experts ({self.n_experts})"
            )
        if not isinstance(self.extra, dict):
            raise refuse("model.extra", self.extra, "must be a table")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown model config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


_PRESETS: dict[str, ModelConfig] = {
    # The published Aquila2 shapes (head dim 128, untied embeddings, vocab 100,008).
    "aquila2-7b": ModelConfig(
        hidden_size=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        ffn_size=11008,
        max_seq_len=2048,
        init_std=0.02,
    ),
    "aquila2-34b": ModelConfig(
        hidden_size=6144,
        n_layers=60,
        n_heads=48,
        n_kv_heads=8,
        ffn_size=24576,
        max_seq_len=4096,
        init_std=0.0165,
    ),
    "aquila2-70b": ModelConfig(
        hidden_size=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        ffn_size=28672,
        max_seq_len=4096,
        init_std=0.0149,
    ),
    # A ~1.1B model for one GPU (Aquila2 proportions, GQA 16/4 heads of 128).
    "aquila2-1b": ModelConfig(
        hidden_size=2048,
        n_layers=16,
        n_heads=16,
        n_kv_heads=4,
        ffn_size=5632,
        max_seq_len=4096,
    ),
    # CPU presets with a small vocabulary: a 100k vocabulary would dominate a model this size.
    "aquila-10m": ModelConfig(
        vocab_size=8192,
        hidden_size=256,
        n_layers=6,
        n_heads=4,
        n_kv_heads=4,
        ffn_size=688,
        max_seq_len=256,
    ),
    "aquila-50m": ModelConfig(
        vocab_size=16384,
        hidden_size=512,
        n_layers=10,
        n_heads=8,
        n_kv_heads=4,
        ffn_size=1376,
        max_seq_len=512,
    ),
    # AquilaMoE's EfficientScale path: a dense 7B, grown to a dense 16B (width x1.25 with GQA
    # 32/8 -> 40/8 heads, depth 32 -> 40), upcycled to 8 experts of 16B with top-2 routing.
    "aquila-moe-7b-dense": ModelConfig(
        hidden_size=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_size=14336,
        max_seq_len=4096,
    ),
    "aquila-moe-16b-dense": ModelConfig(
        hidden_size=5120,
        n_layers=40,
        n_heads=40,
        n_kv_heads=8,
        ffn_size=20480,
        max_seq_len=4096,
    ),
    "aquila-moe-8x16b": ModelConfig(
        hidden_size=5120,
        n_layers=40,
        n_heads=40,
        n_kv_heads=8,
        ffn_size=20480,
        max_seq_len=4096,
        n_experts=8,
        top_k=2,
    ),
    # For tests: a few hundred thousand parameters.
    "aquila-test": ModelConfig(
        vocab_size=512,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_size=160,
        max_seq_len=128,
    ),
    # aquila-test with 4 experts, top-2: the mixture-of-experts test model.
    "aquila-moe-test": ModelConfig(
        vocab_size=512,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_size=160,
        max_seq_len=128,
        n_experts=4,
        top_k=2,
    ),
}


def preset_names() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Return a copy of the named preset, with optional field overrides."""
    if name not in _PRESETS:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(_PRESETS)}")
    return _PRESETS[name].replace(**overrides)
