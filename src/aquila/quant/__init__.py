"""Weight-only int4 quantization (RTN and GPTQ) run by torch's native int4 kernels."""

from aquila.quant.gptq import HessianAccumulator, gptq_quantize
from aquila.quant.int4 import dequantize, pack_int4, quantize_rtn, unpack_int4
from aquila.quant.linear import QuantLinear
from aquila.quant.model import (
    QuantConfig,
    linear_weight_bytes,
    load_any_model,
    load_quantized_model_dir,
    model_memory_bytes,
    quantize_model,
    read_quant_config,
    save_quantized_model_dir,
)

__all__ = [
    "HessianAccumulator",
    "QuantConfig",
    "QuantLinear",
    "dequantize",
    "gptq_quantize",
    "linear_weight_bytes",
    "load_any_model",
    "load_quantized_model_dir",
    "model_memory_bytes",
    "pack_int4",
    "quantize_model",
    "quantize_rtn",
    "read_quant_config",
    "save_quantized_model_dir",
    "unpack_int4",
]
