"""Packing, kernel layouts and QuantLinear against a dequantized-weight matmul."""

from __future__ import annotations

import pytest
import torch

from aquila.model.int4 import (
    GROUP_SIZES,
    dequantize,
    pack_int4,
    pad_for_kernel,
    quantize_rtn,
    unpack_int4,
)
from aquila.model.int4_linear import KERNEL_MAX_ROWS, QuantLinear


def _quant_linear(w: torch.Tensor, group_size: int) -> QuantLinear:
    q, s, z = quantize_rtn(w, group_size)
    qp, sp, zp = pad_for_kernel(q, s, z, group_size)
    return QuantLinear.from_quantized(pack_int4(qp), sp, zp, w.shape[1], w.shape[0], group_size)


def test_pack_unpack_round_trip():
    q = torch.randint(
        0, 16, (48, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    packed = pack_int4(q)
    assert packed.shape == (48, 128) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    # Column 2j is the high nibble, as the CUDA packer expects.
    assert int(packed[0, 0]) == (int(q[0, 0]) << 4) | int(q[0, 1])


def test_rtn_error_is_at_most_half_a_step():
    w = torch.randn(32, 320, generator=torch.Generator().manual_seed(2))
    q, s, z = quantize_rtn(w, 128)  # 320 = 2 * 128 + a ragged group of 64
    assert s.shape == (32, 3) and int(q.max()) <= 15
    err = (dequantize(q, s, z, 128) - w).abs()
    step = s.repeat_interleave(128, dim=1)[:, :320]
    assert bool((err <= step / 2 + 1e-5).all())
    # The mid level 8 stands for `zero` (torch's convention).
    assert torch.allclose(
        dequantize(torch.full_like(q, 8), s, z, 128), z.repeat_interleave(128, 1)[:, :320]
    )


@pytest.mark.parametrize(
    ("n", "k", "g"), [(64, 256, 128), (40, 160, 64), (96, 688, 128), (32, 64, 32)]
)
def test_quant_linear_matches_dequantized_matmul(n, k, g):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.05
    layer = _quant_linear(w, g)
    x = torch.randn(3, 5, k, generator=torch.Generator().manual_seed(3))
    w_deq = layer.dequantized_weight()
    assert w_deq.shape == (n, k)
    want = x @ w_deq.t()
    assert torch.allclose(layer(x), want, atol=1e-5)  # dequantizing path
    layer.prepare()
    assert layer.layout == "cpu"  # packed for torch's native int4 kernel
    # Few rows (decoding) run the kernel with bf16 activations: bf16 rounding tolerance.
    assert x.shape[0] * x.shape[1] <= KERNEL_MAX_ROWS
    err = (layer(x) - want).abs().max() / want.abs().max()
    assert err < 1e-2, err
    # Many rows dequantize the packed weight: fp32 exact.
    xl = torch.randn(KERNEL_MAX_ROWS + 1, k, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(layer(xl), xl @ w_deq.t(), atol=1e-5)
    assert (w_deq - w).abs().max() < 0.05 * 0.5  # int4 is close to the original weight


def test_kernel_layout_converts_back_for_saving():
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(4))
    layer = _quant_linear(w, 64)
    file_layout = layer.qweight.clone()
    layer.prepare()
    assert not torch.equal(layer.qweight, file_layout)  # the kernel layout differs
    assert torch.equal(layer.state_dict()["qweight"], file_layout)


def test_group_sizes_are_the_kernels():
    assert GROUP_SIZES == (32, 64, 128, 256)
