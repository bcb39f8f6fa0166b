"""Reshardable checkpoints with torch.distributed.checkpoint (DCP) for multi-process runs.

A distributed run's ``step-N/`` holds ``model.json`` (the shape), ``train_state.pt`` (schedule,
RNG, data position, history; no optimizer) and ``dcp/``: model and optimizer as each rank wrote
its shards, plus DCP's metadata. No rank gathers the weights: a save costs each rank the write of
its own shards. DCP reshards on load, so the run resumes on any number of processes and any
layout, one process included; every tool that reads model dirs reads ``dcp/`` through
``aquila.model.io.open_weights`` (tensor by tensor where it needs whole tensors). A
single-process checkpoint (``model.safetensors``, optimizer inside ``train_state.pt``) loads into
a multi-process run too: each rank reads its boxes of the weights and of the Adam moments.

Everything is written under a temporary name and renamed when complete, as in ``checkpoint.py``.
"""

from __future__ import annotations

import errno
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aquila.engine.checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    finalize_checkpoint,
    latest_checkpoint,
)
from aquila.errors import UserError
from aquila.model.io import DCP_DIR, write_model_config

if TYPE_CHECKING:
    from aquila.engine.trainer import Trainer


def is_sharded(path: Path) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_ok(ok: bool) -> bool:
    """True on every rank only if ``ok`` on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _barrier() -> None:
    from aquila.engine.distributed import barrier

    barrier()


def _begin(trainer: Trainer) -> tuple[Path, Path, dict[str, Any]]:
    """Collective: the temporary dir (rank 0 makes it), and the state dict DCP writes.

    The optimizer state is flattened: hyperparameters per parameter name, not per group, so it
    loads into another layout's grouping (TP splits the groups by device mesh)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = checkpoint_dir(trainer.run_dir, trainer.state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    if _world()[0] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    msd, osd = get_state_dict(
        trainer.model, trainer.optimizer, options=_options(flatten_optimizer_state_dict=True)
    )
    return final, tmp, {"model": msd, "optim": osd}


def _training_state(trainer: Trainer) -> dict[str, Any]:
    state = trainer.state_dict()
    state.pop("optimizer", None)  # in the shards
    return state


def _failed(trainer: Trainer, final: Path, tmp: Path, error: Exception | None) -> Exception:
    if _world()[0] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return UserError(
            f"disk full while saving checkpoint {final}; nothing was overwritten, the last "
            f"good checkpoint is {latest_checkpoint(trainer.run_dir) or 'none'}"
        )
    return RuntimeError(f"saving checkpoint {final} failed on a rank: {error}")


def save_sharded(trainer: Trainer) -> Path | None:
    """Collective: every rank writes its shards; rank 0 the rest. Returns the path on rank 0."""
    import torch.distributed.checkpoint as dcp

    rank, _ = _world()
    final, tmp, sd = _begin(trainer)
    error: Exception | None = None
    try:
        dcp.save(sd, checkpoint_id=str(tmp / DCP_DIR))
    except Exception as exc:  # DCP raises on every rank when one fails
        error = exc
    if rank == 0 and error is None:
        try:
            write_model_config(trainer.model.cfg, tmp)
            finalize_checkpoint(tmp, final, _training_state(trainer))
        except Exception as exc:
            error = exc
    if not _all_ok(error is None):
        raise _failed(trainer, final, tmp, error) from error
    return final if rank == 0 else None


def save_sharded_async(trainer: Trainer, group) -> tuple[Callable[[], Path | None], Callable]:
    """Collective: stage this rank's shards in host memory and start writing them (DCP's
    ``async_save`` on ``group``, a gloo group of its own so that its collectives never interleave
    with training's); rank 0 also copies the training state.

    Returns ``finish`` (run it in a thread: waits for the shards, then rank 0 writes the model
    config and the training state and renames the checkpoint into place; returns the path on
    rank 0) and ``failed``
    (after a failure agreed on by all ranks: cleans up and gives the error to raise)."""
    import torch.distributed.checkpoint as dcp

    from aquila.engine.checkpoint import snapshot

    rank, _ = _world()
    final, tmp, sd = _begin(trainer)
    try:
        response = dcp.async_save(sd, checkpoint_id=str(tmp / DCP_DIR), process_group=group)
        upload = getattr(response, "upload_completion", response)
    except Exception as exc:  # surfaces where the ranks agree on the outcome, not here alone
        upload = Future()
        upload.set_exception(exc)
    state = snapshot(_training_state(trainer)) if rank == 0 else {}

    def finish() -> Path | None:
        upload.result()
        if rank != 0:
            return None
        write_model_config(trainer.model.cfg, tmp)
        finalize_checkpoint(tmp, final, state)
        return final

    def failed(error: Exception | None) -> Exception:
        return _failed(trainer, final, tmp, error)

    return finish, failed


def load_sharded(trainer: Trainer, path: Path) -> dict[str, Any]:
    """Load ``path`` (sharded or single-process) into the trainer's model and optimizer on any
    world size; returns the training state for ``Trainer.load_state_dict``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_state_dict,
        set_optimizer_state_dict,
        set_state_dict,
    )

    from aquila.model.io import read_model_config

    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{path} is not a training checkpoint (no {STATE_FILE})")
    _check_shape(read_model_config(path).to_dict(), trainer.model.cfg.to_dict(), path)
    try:
        # Mapped, not read: each rank touches only the parts of a full optimizer state (from a
        # single-process checkpoint) that its shards need.
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise UserError(f"cannot read {path / STATE_FILE}: {exc}") from None
    model, optim = trainer.model, trainer.optimizer
    if is_sharded(path):
        opts = _options(flatten_optimizer_state_dict=_flat_optimizer(path))
        msd, osd = get_state_dict(model, optim, options=opts)
        sd = {"model": msd, "optim": osd}
        with warnings.catch_warnings():
            # Loading without a process group is the intended single-process resume.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(sd, checkpoint_id=str(path / DCP_DIR))
        set_state_dict(
            model, optim, model_state_dict=sd["model"], optim_state_dict=sd["optim"], options=opts
        )
    else:
        from aquila.model.io import load_weights_into, open_weights

        load_weights_into(model, open_weights(path))  # each rank its boxes of the weights
        fqn_osd = _native_to_fqn(state.pop("optimizer"), model, optim, trainer.cfg.optim.name)
        set_optimizer_state_dict(model, optim, fqn_osd, options=_options(full_state_dict=True))
    state["optimizer"] = optim.state_dict()  # already loaded; keeps load_state_dict's shape
    return state


def _native_to_fqn(native: dict[str, Any], model, optim, name: str) -> dict[str, Any]:
    """A one-process optimizer state (params by position) -> keyed by parameter name, full
    tensors, in this optimizer's grouping. The positions follow the one-process grouping; this
    run's may differ (tensor parallelism splits the groups by device mesh)."""
    from aquila.engine.optim import single_process_order

    order = single_process_order(model, name)
    state = {order[int(i)]: s for i, s in native["state"].items()}
    saved_group = {order[int(i)]: g for g in native["param_groups"] for i in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for k, group in enumerate(optim.param_groups):
        fqns = [names[id(p)] for p in group["params"]]
        source = saved_group[fqns[0]] if fqns else native["param_groups"][k]
        groups.append({**{a: b for a, b in source.items() if a != "params"}, "params": fqns})
    return {"state": state, "param_groups": groups}


def _flat_optimizer(path: Path) -> bool:
    """Whether a sharded checkpoint keeps the optimizer state flattened (by parameter name);
    checkpoints written before that keep one entry per parameter group."""
    import re

    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(str(path / DCP_DIR)).read_metadata().state_dict_metadata
    return not any(re.match(r"optim\.param_groups\.\d+\.", k) for k in keys)


def _check_shape(saved: dict[str, Any], want: dict[str, Any], path: Path) -> None:
    if saved != want:
        diff = ", ".join(
            f"{k}={v} (config says {want.get(k)})" for k, v in saved.items() if want.get(k) != v
        )
        raise UserError(f"checkpoint {path} is for another model shape: {diff}")
