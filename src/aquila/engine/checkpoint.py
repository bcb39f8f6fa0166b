"""Checkpoints: a model dir plus the training state, renamed into place only when complete.

``RUN_DIR/checkpoints/step-00000100/`` holds ``model.json`` + the weights (a loadable model dir)
and ``train_state.pt`` (schedule, RNG, data position, history). A single-process run writes the
weights as ``model.safetensors`` and the optimizer inside ``train_state.pt``; a multi-process run
writes ``dcp/``, every rank its shards of both (``dcp.py``). Either is written under a temporary
name, fsynced and renamed, so a kill or a full disk at any moment leaves every earlier
checkpoint intact and never exposes a half-written one.
"""

from __future__ import annotations

import copy
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from aquila.errors import UserError
from aquila.model.io import (
    fsync_path,
    load_weights_into,
    open_weights,
    read_model_config,
    step_dirs,
    write_model_files,
)

STATE_FILE = "train_state.pt"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, dir)`` of the run's complete training checkpoints, oldest first."""
    return step_dirs(run_dir, STATE_FILE)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def finalize_checkpoint(tmp: Path, final: Path, state: dict[str, Any]) -> None:
    """Write the training state into ``tmp`` (model files already there), make it durable and
    rename it to ``final``: the one moment a checkpoint becomes visible."""
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)


def snapshot(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors are CPU copies: what a background write may hold while
    training changes the originals in place."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return copy.deepcopy(obj)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write step ``step``'s checkpoint: ``model``'s weights (or ``tensors``, a snapshot of
    them) and the training state."""
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write_model_files(model, tmp, tensors)
        for f in tmp.iterdir():
            fsync_path(f)
        finalize_checkpoint(tmp, final, state)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            last = latest_checkpoint(run_dir)
            raise UserError(
                f"disk full while saving checkpoint {final}; nothing was overwritten, the last good "
                f"checkpoint is {last or 'none'}"
            ) from None
        raise
    return final


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` (shapes must match) and return the training state."""
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{path} is not a training checkpoint (no {STATE_FILE})")
    saved, want = read_model_config(path).to_dict(), model.cfg.to_dict()
    if saved != want:
        diff = {k: (v, want[k]) for k, v in saved.items() if want.get(k) != v}
        raise UserError(
            f"checkpoint {path} is for another model shape: "
            + ", ".join(f"{k}={a} (config says {b})" for k, (a, b) in diff.items())
        )
    load_weights_into(model, open_weights(path))  # into the model's own storage, no copy
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path / STATE_FILE}: {exc}") from None


def prune_checkpoints(run_dir: Path, keep_last: int, keep_every: int = 0) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (and every ``keep_every``-th step)."""
    found = list_checkpoints(run_dir)
    removed = []
    for step, path in found[: max(0, len(found) - keep_last)]:
        if keep_every and step % keep_every == 0:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
