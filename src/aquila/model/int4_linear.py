"""``QuantLinear``: a bias-free Linear whose weight is int4, run by torch's native int4 kernels.

Kernels (torch >= 2.6; the project needs >= 2.9, where the signatures below are stable):

* CPU: ``_convert_weight_to_int4pack_for_cpu(q int32 (N, K), inner_k_tiles) -> uint8 (N, K/2)``
  and ``_weight_int4pack_mm_for_cpu(x (M, K), w, group_size, scales_and_zeros (K/g, N, 2))``;
  x and scales_and_zeros share a float dtype (fp32, bf16 or fp16); N must be a multiple of 16.
* CUDA: ``_convert_weight_to_int4pack(packed uint8 (N, K/2), inner_k_tiles) -> int32
  (N/8, K/(inner_k_tiles*16), 32, inner_k_tiles/2)`` and ``_weight_int4pack_mm`` with bf16 x and
  bf16 scales_and_zeros; K must be a multiple of inner_k_tiles * 16.

On other devices, or where a kernel refuses a shape, the weight is dequantized for each call
(slower, but the stored weight stays 4-bit). On CPU the kernel serves calls of up to
``KERNEL_MAX_ROWS`` rows (decoding, memory-bound) with bf16 activations, the only dtype it is
vectorised for; larger calls dequantize the layer's weight and run an fp32 matmul (layers of up
to ``DEQUANT_MAX_NUMEL`` weights; larger layers always use the kernel).

The module holds one copy of the weight: the file layout (see :mod:`aquila.model.int4`) until
:meth:`QuantLinear.prepare` converts it in place to the kernel layout of its device. A state dict
taken afterwards is converted back, so a prepared model can still be saved.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from aquila.model.int4 import (
    PARAM_DTYPE,
    dequantize,
    n_groups,
    pack_int4,
    padded_shape,
    unpack_int4,
)

# Up to this many rows per call (decoding) the CPU int4 kernel is used; above it the layer's
# weight is dequantized for the call (faster on CPU for prefill and scoring; see docs/quant.md).
KERNEL_MAX_ROWS = 64
# Dequantizing from the kernel layout needs a cached index per weight (int32): only layers up to
# this size take that path; larger ones always run the kernel.
DEQUANT_MAX_NUMEL = 1 << 24


def _inner_k_tiles(k: int) -> int:
    for tiles in (8, 4, 2):
        if k % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"in_features {k} is not a multiple of 32")


def _kernel_convert(qweight: torch.Tensor) -> torch.Tensor:
    """File layout (N, K/2) uint8 -> the int4 kernel layout of ``qweight``'s device."""
    k = qweight.shape[1] * 2
    tiles = _inner_k_tiles(k)
    if qweight.device.type == "cpu":
        q = unpack_int4(qweight).to(torch.int32)
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, tiles)
    if qweight.device.type == "cuda":
        return torch.ops.aten._convert_weight_to_int4pack(qweight.contiguous(), tiles)
    raise NotImplementedError(f"no int4 kernel for device {qweight.device}")


def _nibbles(t: torch.Tensor) -> torch.Tensor:
    """Every 4-bit field of a tensor's bytes, in memory order (two per byte)."""
    b = t.contiguous().view(torch.uint8).reshape(-1)
    return torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(-1)


@lru_cache(maxsize=16)
def _layout_permutation(n: int, k: int, device_type: str) -> torch.Tensor:
    """For each nibble of the kernel layout, the flat (row * K + col) index it came from.

    Found by converting probe matrices whose entries are the base-16 digits of their own index,
    so no assumption about the kernel's tiling is built in; a permutation check guards it.
    """
    idx = torch.arange(n * k, dtype=torch.int64)
    source = torch.zeros(n * k, dtype=torch.int64)
    for d in range(max(1, math.ceil(math.log2(n * k) / 4))):
        probe = ((idx >> (4 * d)) & 0x0F).to(torch.uint8).view(n, k)
        packed = _kernel_convert(pack_int4(probe).to(device_type)).cpu()
        source |= _nibbles(packed).to(torch.int64) << (4 * d)
    if not torch.equal(torch.sort(source).values, idx):
        raise RuntimeError(f"int4 kernel layout for ({n}, {k}) is not a permutation")
    return source.to(torch.int32)


def kernel_to_ints(kernel_weight: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of the kernel packing: the (N, K) uint8 integers 0..15."""
    source = _layout_permutation(n, k, kernel_weight.device.type)
    q = torch.empty(n * k, dtype=torch.uint8)
    q[source.long()] = _nibbles(kernel_weight.cpu())
    return q.view(n, k).to(kernel_weight.device)


def kernel_to_file_layout(kernel_weight: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of the kernel packing: back to the (N, K/2) uint8 file layout."""
    return pack_int4(kernel_to_ints(kernel_weight, n, k))


class QuantLinear(nn.Module):
    """y = x @ dequant(W).T for a 4-bit group-quantized W (N = out_features, K = in_features)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        n_pad, k_pad = padded_shape(out_features, in_features, group_size)
        self.n_pad, self.k_pad = n_pad, k_pad
        g = n_groups(k_pad, group_size)
        self.register_buffer(
            "qweight", torch.empty(n_pad, k_pad // 2, dtype=torch.uint8, device=device)
        )
        self.register_buffer("scales", torch.empty(g, n_pad, dtype=PARAM_DTYPE, device=device))
        self.register_buffer("zeros", torch.empty(g, n_pad, dtype=PARAM_DTYPE, device=device))
        # "file" while qweight holds the portable layout, else the device type it was packed for.
        self.layout = "file"

    @classmethod
    def from_quantized(
        cls,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        in_features: int,
        out_features: int,
        group_size: int,
    ) -> QuantLinear:
        """Wrap file-layout tensors (from :func:`aquila.model.int4.pad_for_kernel` + pack)."""
        m = cls(in_features, out_features, group_size, device="meta")
        m.qweight, m.scales, m.zeros = qweight, scales, zeros
        return m

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, layout={self.layout}"
        )

    # -- layouts ----------------------------------------------------------------------------

    def prepare(self) -> QuantLinear:
        """Convert ``qweight`` in place to the int4 kernel layout of its device, if there is one."""
        if self.layout != "file":
            return self
        try:
            self.qweight = _kernel_convert(self.qweight)
            self.layout = self.qweight.device.type
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass  # no kernel here: forward dequantizes
        return self

    def file_qweight(self) -> torch.Tensor:
        if self.layout == "file":
            return self.qweight
        return kernel_to_file_layout(self.qweight, self.n_pad, self.k_pad)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "qweight"] = self.file_qweight()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.layout = "file"

    def int_weight(self) -> torch.Tensor:
        """The (N_pad, K_pad) integers 0..15, whatever the layout."""
        if self.layout == "file":
            return unpack_int4(self.qweight)
        return kernel_to_ints(self.qweight, self.n_pad, self.k_pad)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight (out_features, in_features) this module multiplies by."""
        w = dequantize(self.int_weight(), self.scales.t(), self.zeros.t(), self.group_size)
        return w[: self.out_features, : self.in_features]

    # -- compute ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.k_pad != self.in_features:
            x2 = F.pad(x2, (0, self.k_pad - self.in_features))
        few_rows = x2.shape[0] <= KERNEL_MAX_ROWS or self.n_pad * self.k_pad > DEQUANT_MAX_NUMEL
        if self.layout == "cpu" and few_rows:
            # The CPU kernel is vectorised for bf16 activations only (fp32 is ~10x slower).
            sz = torch.stack([self.scales, self.zeros], dim=-1).to(torch.bfloat16)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16).contiguous(), self.qweight, self.group_size, sz
            ).to(x.dtype)
        elif self.layout == "cuda":
            sz = torch.stack([self.scales, self.zeros], dim=-1).to(torch.bfloat16)
            y = torch.ops.aten._weight_int4pack_mm(
                x2.to(torch.bfloat16).contiguous(), self.qweight, self.group_size, sz
            ).to(x.dtype)
        else:
            # Many rows (prefill, scoring): one layer's weight dequantized for this call costs
            # little next to the matmul, and an fp32 matmul beats the int4 kernel here.
            w = dequantize(self.int_weight(), self.scales.t(), self.zeros.t(), self.group_size)
            y = x2 @ w.to(x2.dtype).t()
        return y[:, : self.out_features].reshape(*shape[:-1], self.out_features)


def prepare_int4(model: nn.Module) -> nn.Module:
    """Pack every QuantLinear for its device's int4 kernel (in place); returns ``model``."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.prepare()
    return model
