"""Checkpoints written in the background (``train.async_checkpoint``).

Training pauses only to copy what the checkpoint holds into host memory: the weights and the
training state (one process), or each rank's shards through DCP's ``async_save`` plus rank 0's
full weights (several). A thread then writes the files and renames the directory into place, as a
synchronous save does, so a checkpoint still becomes visible only when complete and a crash
mid-write leaves every earlier one intact. One write is in flight at a time: the next save, a
rewind and the end of the run wait for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aquila.engine.trainer import Trainer, TrainState


@dataclass
class PendingCheckpoint:
    """One checkpoint being written by a thread."""

    state: TrainState  # the training state the checkpoint holds
    finish: Callable[[], Path | None]  # the write; returns the checkpoint dir (rank 0)
    # Multi-process: the error to raise once all ranks agree a write failed (cleans up).
    failed: Callable[[Exception | None], Exception] | None = None
    path: Path | None = None
    error: Exception | None = None
    reported: bool = False  # on_checkpoint has run for it
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> PendingCheckpoint:
        # Not a daemon: an interpreter that exits normally still completes the write.
        self._thread = threading.Thread(
            target=self._run, name=f"checkpoint-{self.state.step}", daemon=False
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.path = self.finish()
        except Exception as exc:  # raised where the trainer waits for it
            self.error = exc

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()


def start_async_save(trainer: Trainer, group=None) -> PendingCheckpoint:
    """Copy the checkpoint's contents (collective in a multi-process run) and start the write.

    ``group``: a gloo process group of the checkpoint's own for DCP's background collectives
    (multi-process only)."""
    state = replace(trainer.state)
    if trainer.dist.world > 1:
        from aquila.engine.dcp import save_sharded_async

        finish, failed = save_sharded_async(trainer, group)
        return PendingCheckpoint(state, finish, failed).start()
    from aquila.engine.checkpoint import save_checkpoint, snapshot
    from aquila.model.io import export_state_dict

    tensors = export_state_dict(trainer.model, copy=True)
    train_state = snapshot(trainer.state_dict())
    run_dir, step, model = trainer.run_dir, trainer.state.step, trainer.model

    def finish() -> Path:
        return save_checkpoint(run_dir, step, model, train_state, tensors)

    return PendingCheckpoint(state, finish).start()
