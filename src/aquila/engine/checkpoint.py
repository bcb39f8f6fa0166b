"""Checkpoints: a model dir plus the training state, renamed into place only when complete.

``RUN_DIR/checkpoints/step-00000100/`` holds ``model.json`` + the weights (a loadable model dir)
and ``train_state.pt`` (schedule, RNG, data position, history). A single-process run writes the
weights as ``model.safetensors`` and the optimizer inside ``train_state.pt``; a multi-process run
writes ``dcp/``, every rank its shards of both (``dcp.py``). Either is written under a temporary
name, fsynced and renamed, so a kill or a full disk at any moment leaves every earlier
checkpoint intact and never exposes a half-written one. A save that fails removes what it wrote
and raises :class:`SaveFailed` in one line. Pruning renames a checkpoint out of sight before
deleting it, and never removes the latest; what a kill leaves behind (``.tmp-*``, ``.old-*``,
``.del-*``) is removed by :func:`remove_stale_temps` when the next training takes the run
directory.
"""

from __future__ import annotations

import copy
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from aquila.errors import SaveFailed, UserError
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
    old = None
    if final.exists():  # the same step saved again (after a rewind): swap, never a gap
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    except BaseException as exc:  # a second Ctrl-C too: no partial dir is left behind
        error = save_failure(exc, run_dir, step) if isinstance(exc, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            raise
        raise error from exc
    return final


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_WORDS = ("No space left", "StorageFull", "Disk quota exceeded", "disk is full")


def _errors(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def save_failure(exc: BaseException, run_dir: Path, step: int) -> SaveFailed:
    """The one-line :class:`SaveFailed` for an error raised while writing step ``step``'s
    checkpoint (any writer: OSError, safetensors, torch's zip writer, DCP)."""
    if isinstance(exc, SaveFailed):
        return exc
    final = checkpoint_dir(run_dir, step)
    try:
        free = shutil.disk_usage(final.parent if final.parent.exists() else run_dir).free
    except OSError:
        free = None
    chain = list(_errors(exc))
    full = any(getattr(e, "errno", None) in _DISK_FULL for e in chain) or any(
        w in str(e) for e in chain for w in _DISK_FULL_WORDS
    )
    if isinstance(exc, UserError):  # already one line (e.g. a rank's error, agreed on)
        what = str(exc)
    else:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if full and "disk full" not in what:
        what = f"disk full ({what})"
    if free is not None:
        what += f"; {_size(free)} free on its disk"
    last = latest_checkpoint(run_dir)
    return SaveFailed(
        f"checkpoint {final} was not saved: {what}; nothing partial is left and the latest "
        f"checkpoint is still {last or 'none'}"
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# What an interrupted save, swap or prune leaves in ``checkpoints/`` (and an interrupted atomic
# write in the run dir itself): safe to delete while the run directory's lock is held.
STALE_PREFIXES = (".tmp-", ".old-", ".del-")
# A ``step-N`` dir holding only these (and no training state) is what an interrupted delete
# of a checkpoint left.
_CHECKPOINT_PARTS = {
    "model.json",
    "model.safetensors",
    STATE_FILE,
    "dcp",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
}


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete what interrupted saves and prunes left behind; returns what was removed.

    Call only while holding the run directory's lock: a save in progress looks the same."""
    import re

    removed = []
    root = Path(run_dir) / "checkpoints"
    candidates = list(root.iterdir()) if root.is_dir() else []
    if Path(run_dir).is_dir():
        candidates += [p for p in Path(run_dir).iterdir() if p.name.startswith(".tmp-")]
    for p in candidates:
        stale = p.name.startswith(STALE_PREFIXES)
        if not stale and re.fullmatch(r"step-\d+", p.name) and p.is_dir():
            names = {q.name for q in p.iterdir()}
            stale = STATE_FILE not in names and names <= _CHECKPOINT_PARTS
        if stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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
    """Delete all but the newest ``keep_last`` checkpoints (and every ``keep_every``-th step).

    The newest complete checkpoint is never deleted, whatever ``keep_last`` says. Each one is
    renamed out of sight first, so a kill mid-delete never leaves a half-deleted ``step-N``."""
    found = list_checkpoints(run_dir)
    removed = []
    for step, path in found[: max(0, len(found) - max(1, keep_last))]:
        if keep_every and step % keep_every == 0:
            continue
        doomed = path.with_name(f".del-{path.name}-{os.getpid()}")
        try:
            os.replace(path, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(path)
    return removed
