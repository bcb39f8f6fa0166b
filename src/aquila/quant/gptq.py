"""GPTQ (Frantar et al., 2022): 4-bit rounding that compensates each column's error.

For a layer y = W x with calibration inputs X, GPTQ minimises ||W X - Q X||^2 one column of W at
a time. With H = 2 X X^T (the Hessian of that loss), quantizing column i leaves an error
e = (w_i - q_i) / [H^-1]_ii, which is spread over the columns not yet quantized as
-e [H^-1]_i,j. Using the upper Cholesky factor of H^-1 makes this the exact sequential update;
updates are applied lazily per block of columns to keep the work in matrix products.
"""

from __future__ import annotations

import torch

from aquila.model.int4 import dequantize_columns, group_params, n_groups, quantize_columns


class HessianAccumulator:
    """Running H = 2/n * sum x x^T over the rows of the inputs a Linear sees."""

    def __init__(self, in_features: int):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu()
        m = x.shape[0]
        # Keep H an average so its scale does not depend on the number of calibration tokens.
        self.h *= self.n / (self.n + m)
        self.n += m
        self.h += (2.0 / self.n) * (x.t() @ x)

    def hessian(self) -> torch.Tensor:
        if self.n == 0:
            raise ValueError("no calibration inputs were recorded")
        return self.h.float()


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ-quantize ``weight`` (N, K); returns q (N, K) uint8, scales and zeros (N, groups).

    Groups are contiguous runs of ``group_size`` original columns (the last may be shorter), as
    the int4 kernels need. Without ``act_order`` a group's scale and zero are fitted to the
    columns as already updated by the error compensation when the group is reached (the
    reference behaviour). With ``act_order`` columns are visited by decreasing H_ii, so a
    group's columns are no longer visited together: its parameters are then fitted once, up
    front, to the original weights ("static groups").
    """
    w = weight.detach().float().cpu().clone()
    h = hessian.detach().float().cpu().clone()
    n, k = w.shape
    if h.shape != (k, k):
        raise ValueError(f"Hessian of shape {tuple(h.shape)} does not match in_features {k}")
    g = n_groups(k, group_size)
    scales, zeros = torch.empty(n, g), torch.empty(n, g)

    # Inputs that were always zero carry no information: fix those weights to 0.
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    if act_order:
        for j in range(g):
            scales[:, j], zeros[:, j] = group_params(w[:, j * group_size : (j + 1) * group_size])
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    else:
        perm = torch.arange(k)
        # Fit each group when it is reached: blocks must then hold whole groups.
        block_size = max(block_size // group_size, 1) * group_size

    h += damp * torch.mean(torch.diag(h)) * torch.eye(k)
    # Upper Cholesky factor of H^-1: row i holds the updates that quantizing column i implies.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    q = torch.zeros(n, k)
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        wb = w[:, b0:b1].clone()
        errors = torch.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            group = int(perm[col]) // group_size
            if not act_order and col % group_size == 0:
                scales[:, group], zeros[:, group] = group_params(wb[:, i : i + group_size])
            s, z = scales[:, group], zeros[:, group]
            qi = quantize_columns(wb[:, i : i + 1], s, z)
            q[:, col] = qi[:, 0]
            err = (wb[:, i] - dequantize_columns(qi, s, z)[:, 0]) / hb[i, i]
            wb[:, i:] -= err[:, None] * hb[i, i:][None, :]
            errors[:, i] = err
        w[:, b1:] -= errors @ hinv[b0:b1, b1:]

    if act_order:
        q = q[:, torch.argsort(perm)]
    return q.to(torch.uint8), scales, zeros
