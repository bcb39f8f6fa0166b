"""Group-wise asymmetric 4-bit weights in torch's int4 convention, and their packed layouts.

A weight ``W`` of shape (N, K) is cut along K into groups of ``group_size`` columns. Each
(row, group) has a ``scale`` and a ``zero`` and its values are stored as integers q in 0..15:

    W ~= (q - 8) * scale + zero,   scale = (max - min) / 15,   zero = min + 8 * scale

This is the convention of ``torch.ops.aten._weight_int4pack_mm`` (and its ``_for_cpu`` twin): the
zero point lives in the float domain as the value of the mid-level 8, so the kernels compute
``(q - 8) * scale + zero`` per group, reading ``scales_and_zeros`` of shape (K / group, N, 2).

The file layout is device-independent: ``qweight`` uint8 (N, K / 2) with column 2j in the high
nibble and 2j + 1 in the low nibble (the input layout of the CUDA packer), ``scales`` and
``zeros`` in bf16 of shape (K / group, N). The kernel layouts are made from it when a model is
loaded on a device (see :mod:`aquila.model.int4_linear`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from aquila.errors import UserError

BITS = 4
MAX_Q = 2**BITS - 1
MID_Q = 2 ** (BITS - 1)
# The group sizes torch's int4 matmul kernels accept.
GROUP_SIZES = (32, 64, 128, 256)
# The kernels need the output dimension to be a multiple of 16 (CPU) / 8 (CUDA).
N_MULTIPLE = 16
# Scales and zeros are stored in bf16, as torch's CUDA kernel reads them; quantizers round them
# first, so that the error they compensate is the error of the stored weights.
PARAM_DTYPE = torch.bfloat16


def padded_shape(n: int, k: int, group_size: int) -> tuple[int, int]:
    """(N, K) rounded up to the multiples the kernels need: N to 16, K to the group size."""
    return math.ceil(n / N_MULTIPLE) * N_MULTIPLE, math.ceil(k / group_size) * group_size


def n_groups(k: int, group_size: int) -> int:
    return math.ceil(k / group_size)


def group_params(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max scale and zero, one per row, of columns ``w`` (N, g): shapes (N,).

    The range always contains 0, as in GPTQ and torch's own quantizers, so small groups keep an
    exact zero; the result is rounded to ``PARAM_DTYPE``.
    """
    w = w.float()
    lo = w.amin(dim=1).clamp(max=0.0)
    hi = w.amax(dim=1).clamp(min=0.0)
    scale = ((hi - lo) / MAX_Q).clamp(min=1e-8)
    zero = lo + scale * MID_Q
    return scale.to(PARAM_DTYPE).float(), zero.to(PARAM_DTYPE).float()


def quantize_columns(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Integers 0..15 for ``w`` (N, c) given per-row ``scale``/``zero`` (N,)."""
    q = torch.round((w.float() - zero[:, None]) / scale[:, None]) + MID_Q
    return q.clamp(0, MAX_Q)


def dequantize_columns(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q.float() - MID_Q) * scale[:, None] + zero[:, None]


def quantize_rtn(
    w: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest: q (N, K) uint8, scales and zeros (N, groups) fp32; a ragged last group."""
    n, k = w.shape
    q = torch.empty(n, k, dtype=torch.uint8)
    g = n_groups(k, group_size)
    scales, zeros = torch.empty(n, g), torch.empty(n, g)
    for j in range(g):
        cols = w[:, j * group_size : (j + 1) * group_size]
        s, z = group_params(cols)
        q[:, j * group_size : (j + 1) * group_size] = quantize_columns(cols, s, z).to(torch.uint8)
        scales[:, j], zeros[:, j] = s, z
    return q, scales, zeros


def dequantize(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The float weight (N, K) that ``q`` (N, K) with scales/zeros (N, groups) stand for."""
    k = q.shape[1]
    s = scales.float().repeat_interleave(group_size, dim=1)[:, :k]
    z = zeros.float().repeat_interleave(group_size, dim=1)[:, :k]
    return (q.float() - MID_Q) * s + z


def pad_for_kernel(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad q to the kernel shape and transpose scales/zeros to (groups, N_pad) in ``PARAM_DTYPE``.

    Padded columns meet zero-padded inputs and padded rows are sliced off the output, so their
    values never matter; they are set to the mid level 8 (dequantizes to ``zero``).
    """
    n, k = q.shape
    n_pad, k_pad = padded_shape(n, k, group_size)
    q = F.pad(q, (0, k_pad - k, 0, n_pad - n), value=MID_Q)
    scales = F.pad(scales.float(), (0, 0, 0, n_pad - n), value=1.0)
    zeros = F.pad(zeros.float(), (0, 0, 0, n_pad - n), value=0.0)
    return q, scales.t().contiguous().to(PARAM_DTYPE), zeros.t().contiguous().to(PARAM_DTYPE)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) integers 0..15 -> (N, K / 2) uint8, even column in the high nibble."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even number of columns, got {q.shape[-1]}")
    q = q.to(torch.uint8)
    return (q[:, 0::2] << 4) | q[:, 1::2]


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (N, K / 2) uint8 -> (N, K) uint8."""
    hi, lo = packed >> 4, packed & 0x0F
    return torch.stack([hi, lo], dim=-1).reshape(packed.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# The "quantization" entry of a model dir's model.json

METHODS = ("rtn", "gptq")


@dataclass
class QuantConfig:
    method: str = "gptq"
    bits: int = 4
    group_size: int = 128
    include_lm_head: bool = False
    act_order: bool = False
    damp: float = 0.01
    # Filled in by quantize_model: the names of the Linears that were quantized, and those GPTQ
    # had no calibration inputs for (MoE experts no token was routed to), rounded to nearest.
    modules: list[str] = field(default_factory=list)
    rtn_fallback: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.bits != 4:
            raise UserError(f"--bits {self.bits} is not supported: only 4-bit weights are")
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.group_size not in GROUP_SIZES:
            raise UserError(
                f"--group-size {self.group_size} is not supported: torch's int4 kernels take "
                f"{', '.join(map(str, GROUP_SIZES))}"
            )

    def to_dict(self) -> dict:
        return {"scheme": "int4-asym-group (torch int4pack)", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> QuantConfig:
        return cls(**{k: v for k, v in data.items() if k != "scheme"})
