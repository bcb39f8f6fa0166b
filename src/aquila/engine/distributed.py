"""torch.distributed for the trainer: process group from the launcher's environment, FSDP2
(optionally hybrid over a 2-D mesh) and a tensor-parallel plan through DTensor.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; ``init_distributed`` reads them and starts the
process group (NCCL on CUDA, gloo on CPU). Data parallelism is FSDP2: every transformer block is
sharded on its own (so one block's parameters are gathered at a time), then the root (embedding,
final norm, output head). With ``replicate > 1`` the mesh is 2-D (replicate x shard): parameters
are sharded within a node and replicated across nodes (HSDP), so the all-gathers stay on the fast
intra-node links. Tensor parallelism splits q/k/v/gate/up by output columns and o/down by input
rows (Megatron's pairing: one all-reduce per attention and per MLP).

Gradients: the loss of each rank is already divided by the global token count, so the gradient
of the global loss is the *sum* over ranks; FSDP is told to sum (divide factor 1).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from aquila.errors import UserError
from aquila.model.transformer import AquilaModel


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    # Tensor-parallel group size: ranks rank // tp * tp ... + tp - 1 read the same batch.
    tp: int = 1

    @property
    def dp_world(self) -> int:
        """Data-parallel replicas: how many ways each global batch is split."""
        return self.world // self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp


@dataclass
class ParallelPlan:
    """How the world is split: ``world = replicate * shard * tp``."""

    world: int
    tp: int = 1
    replicate: int = 1

    @property
    def shard(self) -> int:
        return self.world // (self.tp * self.replicate)

    def check(self) -> None:
        if self.tp < 1 or self.replicate < 1 or self.world % (self.tp * self.replicate):
            raise UserError(
                f"world size {self.world} is not divisible by tp {self.tp} x replicate "
                f"{self.replicate}"
            )


def env_dist() -> tuple[int, int, int]:
    """(rank, world, local_rank) from the launcher's environment; (0, 1, 0) without one."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def init_distributed() -> DistInfo:
    """Start the process group when launched by torchrun (or Slurm + torchrun); else one process."""
    rank, world, local = env_dist()
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group("gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size())


def shutdown_distributed() -> None:
    """End the process group, if any, once every rank is done.

    A rank that exits with the group still alive can abort in the communication threads'
    teardown ("terminate called without an active exception") and fail a finished job.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def build_mesh(plan: ParallelPlan, device_type: str):
    """A DeviceMesh with dims ("replicate", "shard", "tp"), size-1 dims left out."""
    from torch.distributed.device_mesh import init_device_mesh

    plan.check()
    dims = [("replicate", plan.replicate), ("shard", plan.shard), ("tp", plan.tp)]
    dims = [(n, s) for n, s in dims if s > 1] or [("shard", 1)]
    return init_device_mesh(
        device_type, tuple(s for _, s in dims), mesh_dim_names=tuple(n for n, _ in dims)
    )


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Column-split q/k/v/gate/up, row-split o/down; each rank keeps heads / tp heads."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    tp = tp_mesh.size()
    cfg = model.cfg
    if cfg.n_kv_heads % tp or cfg.n_heads % tp or cfg.ffn_size % tp:
        raise UserError(
            f"--tp {tp} must divide the heads ({cfg.n_heads}), kv heads ({cfg.n_kv_heads}) and "
            f"FFN width ({cfg.ffn_size})"
        )
    if cfg.n_experts > 0:
        raise UserError("tensor parallelism is not planned for mixture-of-experts models")
    plan = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    for block in model.layers:
        parallelize_module(block, tp_mesh, plan)
        # Local outputs hold heads / tp heads: the reshapes must use the local count.
        block.self_attn.n_heads = cfg.n_heads // tp
        block.self_attn.n_kv_heads = cfg.n_kv_heads // tp


def apply_fsdp(model: nn.Module, dp_mesh, device_type: str, reshard_root: bool = True) -> None:
    """FSDP2 per block then the root; bf16 compute with fp32 reduction on GPU, fp32 on CPU."""
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    if device_type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    for i, block in enumerate(model.layers):
        # The last block is gathered again right away by backward: keep it unsharded.
        last = i == len(model.layers) - 1
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=not last)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_root)
    # The trainer calls token_losses, not forward: it must gather the root's parameters too.
    register_fsdp_forward_method(model, "token_losses")
    # token_losses returns a (B, T) view of the flat cross-entropy; FSDP warns that an in-place
    # op on it would skip its backward hook. The trainer only reads it (sum, detach).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # the settings are per FSDP unit: every block and the root
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            if hasattr(module, "set_force_sum_reduction_for_comms"):
                # gloo has no PREMUL_SUM/AVG: plain sums, and no divide since the factor is 1.
                module.set_force_sum_reduction_for_comms(True)


def parallelize(model: nn.Module, plan: ParallelPlan, device: torch.device) -> nn.Module:
    """TP (if ``plan.tp > 1``) then FSDP2 over the data-parallel dims; returns the same module.

    Ranks are laid out row-major over (replicate, shard, tp): the ``tp`` ranks of one group are
    consecutive, so ``rank // tp`` is the data-parallel rank (``DistInfo.dp_rank``)."""
    if plan.world <= 1:
        return model
    mesh = build_mesh(plan, device.type)
    names = mesh.mesh_dim_names or ()
    if "tp" in names:
        apply_tensor_parallel(model, mesh["tp"])
    dp = [n for n in ("replicate", "shard") if n in names]
    if dp:
        dp_mesh = mesh[tuple(dp)] if len(dp) > 1 else mesh[dp[0]]
        apply_fsdp(model, dp_mesh, device.type)
    return model


def local_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each rank's own part: the local shard of a DTensor, a plain tensor itself."""
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


def replica_count(t: torch.Tensor, world: int) -> int:
    """How many of the ``world`` ranks hold each element of ``t``: all of them for a plain
    tensor; for a DTensor, the ranks of its replicated mesh dims times the copies of its mesh
    (a sub-mesh of the world, such as the data-parallel one next to tensor parallelism)."""
    if not hasattr(t, "device_mesh"):
        return world
    mesh = t.device_mesh
    copies = world // mesh.size()
    for dim, placement in enumerate(t.placements):
        if placement.is_partial():
            raise ValueError("a partial (unreduced) DTensor has no elements of its own yet")
        if placement.is_replicate():
            copies *= mesh.size(dim)
    return copies


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm over all ranks of tensors that may be plain (the same on every rank) or
    DTensors on any mesh of the world or a sub-mesh, sharded or replicated. One all-reduce.

    torch's own norm helpers stack the per-tensor norms, which fails when the DTensors live on
    different meshes (FSDP2 over the data-parallel ranks for the embedding, FSDP2 + TP on a 2-D
    mesh for the blocks) or mix with plain tensors (TP alone). Here each rank sums the squares of
    its local elements, each divided by how many ranks hold a copy, and the sums are added.
    """
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    groups: dict[int, list[torch.Tensor]] = {}
    for t in tensors:
        copies = replica_count(t, world)
        if hasattr(t, "device_mesh"):
            t = t.to_local()
        groups.setdefault(copies, []).append(t.detach())
    device = tensors[0].device if tensors else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float32, device=device)
    for copies, group in groups.items():
        norms = torch._foreach_norm([g.float() for g in group], 2.0)
        total += torch.stack(norms).square().sum() / copies
    if world > 1:
        dist.all_reduce(total)
    return total.sqrt()


def all_reduce_grads(model: nn.Module) -> None:
    """Sum plain (unsharded) gradients over ranks: the data-parallel step without FSDP."""
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is not None and not hasattr(p.grad, "full_tensor"):
            dist.all_reduce(p.grad)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def meta_shard_check(cfg, tp: int = 1) -> dict:
    """Build ``cfg`` on the meta device and run the real FSDP2 wrapping in a one-process gloo
    group: proves the code path for any size without allocating a parameter."""
    import tempfile

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    started = False
    if not dist.is_initialized():
        with tempfile.NamedTemporaryFile(prefix="aquila-meta-", delete=False) as store:
            pass
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
        started = True
    try:
        model = AquilaModel(cfg, device="meta")
        mesh = build_mesh(ParallelPlan(1), "cpu")
        apply_fsdp(model, mesh, "cpu")
        params = list(model.parameters())
        return {
            "wrapped_blocks": len(model.layers),
            "dtensor_params": sum(isinstance(p, DTensor) for p in params),
            "params": len(params),
            "on_meta": all(p.device.type == "meta" for p in params),
            "numel": sum(p.numel() for p in params),
        }
    finally:
        if started:
            dist.destroy_process_group()
