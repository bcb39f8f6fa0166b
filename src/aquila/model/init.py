"""Initial weights that depend on the seed and each parameter's name, never on the layout.

A parameter is viewed as a matrix of rows (its last dimension is the row) cut into fixed blocks
of rows. Block k of parameter ``name`` is drawn from its own generator, seeded from
``(seed, name, k)``. A rank fills its shard by drawing only the blocks that overlap it, so at no
moment does it hold more than its shards and one block, and one process, FSDP2, HSDP and tensor
parallelism on any number of ranks start from the same numbers: no seed checkpoint is needed.

The block size depends on the row length alone. Values are drawn in fp32 on the parameter's
device (CUDA and CPU generators differ, so a GPU run and a CPU run start differently; every
world size on one device type starts alike).
"""

from __future__ import annotations

import hashlib
import math

import torch

from aquila.model.sharding import LocalView, local_view

# Elements drawn per generator: 16 MiB of fp32, whatever the shape of the tensor.
BLOCK_ELEMENTS = 1 << 22


def block_seed(seed: int, name: str, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def rows_per_block(row_length: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, row_length))


def _block(name: str, seed: int, k: int, rows: int, cols: int, std: float, device) -> torch.Tensor:
    per = rows_per_block(cols)
    n = min(per, rows - k * per)
    gen = torch.Generator(device=device).manual_seed(block_seed(seed, name, k))
    return torch.empty((n, cols), dtype=torch.float32, device=device).normal_(
        0.0, std, generator=gen
    )


def _flat_rows(view: LocalView) -> torch.Tensor:
    """Global row index (in the tensor seen as rows of its last dim) of every local row."""
    lead = view.global_shape[:-1]
    idx = torch.zeros(1, dtype=torch.long)
    for d, size in enumerate(lead):
        o, n = view.offset[d], view.local.shape[d]
        idx = (idx[:, None] * size + torch.arange(o, o + n)[None, :]).reshape(-1)
    return idx


@torch.no_grad()
def fill_normal(view: LocalView, name: str, seed: int, std: float) -> None:
    """Write N(0, std) values of parameter ``name`` into this rank's box of it."""
    local = view.local
    if local.numel() == 0:
        return
    shape = view.global_shape
    if len(shape) == 0:
        raise ValueError(f"{name}: cannot initialise a scalar parameter by rows")
    cols = shape[-1]
    rows = math.prod(shape) // max(1, cols)
    c0, c1 = view.offset[-1], view.offset[-1] + local.shape[-1]
    per = rows_per_block(cols)
    # Contiguous rows when every dimension but the first (and the last) is whole: the usual
    # FSDP2 / tensor-parallel box. Otherwise the general path picks the rows one by one.
    inner_whole = all(local.shape[d] == shape[d] for d in range(1, len(shape) - 1))
    target = local if local.is_contiguous() else torch.empty_like(local)
    dst = target.view(-1, local.shape[-1])
    if inner_whole:
        inner = 1
        for d in range(1, len(shape) - 1):
            inner *= shape[d]
        r0 = view.offset[0] * inner if len(shape) > 1 else 0
        r1 = r0 + dst.shape[0]
        for k in range(r0 // per, (r1 - 1) // per + 1):
            start = k * per
            block = _block(name, seed, k, rows, cols, std, local.device)
            lo, hi = max(r0, start), min(r1, start + block.shape[0])
            dst[lo - r0 : hi - r0].copy_(block[lo - start : hi - start, c0:c1])
    else:
        flat = _flat_rows(view).to(local.device)
        first, last = int(flat.min()), int(flat.max())
        for k in range(first // per, last // per + 1):
            start = k * per
            block = _block(name, seed, k, rows, cols, std, local.device)
            sel = (flat >= start) & (flat < start + block.shape[0])
            if bool(sel.any()):
                dst[sel] = block[flat[sel] - start, c0:c1].to(dst.dtype)
    if target is not local:
        local.copy_(target)


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Initialise every parameter of ``model`` (plain or sharded, already materialised) from
    ``seed`` and its name, with the stds of ``model.param_init``; recompute the rotary tables."""
    for name, p in model.named_parameters():
        view = local_view(p)
        std = model.param_init(name)
        if std is None:
            view.local.fill_(1.0)
        else:
            fill_normal(view, name, seed, std)
    model.reset_rope()
