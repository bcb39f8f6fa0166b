"""Weight-only int4 quantization (RTN and GPTQ) run by torch's native int4 kernels.

The int4 format itself (packing, :class:`QuantLinear`, the ``quantization`` entry of a model dir)
lives in :mod:`aquila.model` so that :func:`aquila.model.io.load_model_dir` reads int4 dirs; this
package holds the algorithms that produce them."""

from aquila.model.int4 import QuantConfig, dequantize, pack_int4, quantize_rtn, unpack_int4
from aquila.model.int4_linear import QuantLinear
from aquila.quant.gptq import HessianAccumulator, gptq_quantize
from aquila.quant.model import (
    linear_weight_bytes,
    model_memory_bytes,
    quantize_model,
    save_quantized_model_dir,
)

__all__ = [
    "HessianAccumulator",
    "QuantConfig",
    "QuantLinear",
    "dequantize",
    "gptq_quantize",
    "linear_weight_bytes",
    "model_memory_bytes",
    "pack_int4",
    "quantize_model",
    "quantize_rtn",
    "save_quantized_model_dir",
    "unpack_int4",
]
