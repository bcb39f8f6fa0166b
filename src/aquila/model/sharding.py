"""Where a rank's part of a tensor lies in the whole: the local box of a DTensor or a plain tensor.

FSDP2 and tensor parallelism leave each rank a rectangular box of every parameter (rows for
FSDP2 and column-parallel layers, columns for row-parallel ones, both on a 2-D mesh). Loading
and initialising a model shard by shard only needs that box: its offset in the global tensor and
the local tensor that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LocalView:
    """``local`` holds ``global[offset[0] : offset[0] + local.shape[0], ...]`` of a tensor of
    ``global_shape``."""

    global_shape: tuple[int, ...]
    offset: tuple[int, ...]
    local: torch.Tensor

    @property
    def is_whole(self) -> bool:
        return tuple(self.local.shape) == self.global_shape

    def index(self) -> tuple[slice, ...]:
        """The box as slices of the global tensor."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.local.shape))


def is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "device_mesh") and hasattr(t, "placements")


def local_view(t: torch.Tensor) -> LocalView:
    """The box of ``t`` this rank holds (all of it for a plain tensor)."""
    if not is_dtensor(t):
        return LocalView(tuple(t.shape), (0,) * t.ndim, t)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local = t.to_local()
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    if not offset:  # a rank outside the tensor's mesh holds nothing of it
        offset = (0,) * t.ndim
    if tuple(shape) != tuple(local.shape):
        raise RuntimeError(
            f"local shard of shape {tuple(local.shape)} does not match the layout's "
            f"{tuple(shape)} (placements {t.placements})"
        )
    return LocalView(tuple(t.shape), tuple(int(o) for o in offset), local)
