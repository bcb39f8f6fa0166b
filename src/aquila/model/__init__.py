"""The Aquila2 model family."""

from aquila.model.config import ModelConfig, get_preset, preset_names
from aquila.model.transformer import AquilaModel, count_params, flops_per_token

__all__ = [
    "AquilaModel",
    "ModelConfig",
    "count_params",
    "flops_per_token",
    "get_preset",
    "preset_names",
]
