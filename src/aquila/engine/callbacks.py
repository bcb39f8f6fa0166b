"""Callbacks: everything that watches or steers a run plugs into the trainer through this interface."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aquila.engine.step import StepMetrics
    from aquila.engine.trainer import Trainer


class Callback:
    """Hooks called by the trainer at step boundaries, on every rank."""

    def on_start(self, trainer: Trainer) -> None: ...

    def before_step(self, trainer: Trainer) -> None:
        """At the boundary before a step: the place to apply commands (LR, mixture, stop)."""

    def before_optimizer(self, trainer: Trainer, info: dict[str, Any]) -> None:
        """After backward and clipping, before the update. ``info`` holds device tensors
        (``loss``, ``grad_norm``) and the batch's ``source_ids``/``global_indices``; a callback may
        call ``trainer.skip_update(reason)`` (reading a tensor here costs a host sync on GPU)."""

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        """After each optimizer step. ``metrics`` always holds the step's device tensors
        (loss, per-source loss sums and counts); on logging steps (``metrics.logged``) also the
        plain numbers (loss, grad_norm, source_loss, tokens_per_s, ...)."""

    def before_save(self, trainer: Trainer) -> None:
        """On every rank as a checkpoint starts (a collective moment in a multi-process run):
        the weights are the ones the checkpoint holds, even if it is written in the background
        and ``on_checkpoint`` (rank 0 only) comes steps later."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...

    def on_end(self, trainer: Trainer, reason: str) -> None: ...


class MetricsLog(Callback):
    """Appends one JSON line per logged step to ``RUN_DIR/metrics.jsonl``.

    A line that cannot be written whole (a full disk, a read-only run directory) is taken back,
    so the file never holds a partial line, and the training stops with :class:`RunFileFailed`
    (exit code 4): every logged step is in the file or the run says it is not.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if trainer.is_main and metrics.logged:
            try:
                append_line(self.path, json.dumps(metrics.row()) + "\n")
            except OSError as exc:
                from aquila.engine.checkpoint import latest_checkpoint
                from aquila.errors import RunFileFailed

                last = latest_checkpoint(trainer.run_dir)
                raise RunFileFailed(
                    f"{self.path}: step {metrics.step} not logged: "
                    f"{exc.strerror or exc}; the training stopped, the latest checkpoint is "
                    f"{last or 'none'} (free space, then `aquila train --resume "
                    f"{trainer.run_dir}`)"
                ) from None


def append_line(path: Path, line: str) -> None:
    """Append ``line`` whole or not at all: on a failed write the file is cut back to its size
    before (best effort: a file that cannot be written may not be truncatable either)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        view = memoryview(line.encode("utf-8"))
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressReporter(Callback):
    """A live progress bar on a terminal; plain log lines when the output is a file or pipe."""

    def __init__(self, total_steps: int, stream=None, use_bar: bool | None = None):
        self.total = total_steps
        self.stream = stream or sys.stderr
        self.use_bar = self.stream.isatty() if use_bar is None else use_bar
        self._progress = None
        self._task = None

    def on_start(self, trainer: Trainer) -> None:
        if not trainer.is_main or not self.use_bar:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
        )
        self._task = self._progress.add_task(
            "train", total=self.total, info="", completed=trainer.state.step
        )
        self._progress.start()

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if not trainer.is_main or not metrics.logged:
            return
        info = f"loss {metrics.loss:.4f}  {metrics.tokens_per_s:,.0f} tok/s  lr {metrics.lr:.2e}"
        if metrics.mfu is not None:
            info += f"  MFU {metrics.mfu:.1%}"
        if metrics.peak_memory:
            info += f"  mem {metrics.peak_memory / 1024**3:.2f} GiB"
        if self._progress is not None:
            self._progress.update(self._task, completed=metrics.step, info=info)
        else:
            eta = format_eta(metrics.eta_s or 0.0)
            print(
                f"step {metrics.step}/{self.total}  {info}  eta {eta}",
                file=self.stream,
                flush=True,
            )

    def on_end(self, trainer: Trainer, reason: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class GracefulInterrupt(Callback):
    """First Ctrl-C (or SIGTERM): finish the current step, checkpoint and stop. Second: abort."""

    def __init__(self):
        self._old: dict[int, Any] = {}
        self._trainer: Trainer | None = None
        self.hits = 0

    def _handle(self, signum, frame) -> None:
        self.hits += 1
        if self.hits > 1 or self._trainer is None:
            raise KeyboardInterrupt
        print(
            "\naquila: interrupt received: finishing this step and saving a checkpoint "
            "(press Ctrl-C again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )
        self._trainer.request_stop("interrupted", checkpoint=True)

    def on_start(self, trainer: Trainer) -> None:
        self._trainer = trainer
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                return

    def on_end(self, trainer: Trainer, reason: str) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


class TimeLimit(Callback):
    """Stops the run (with a checkpoint) once ``seconds`` of training have passed."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._start = 0.0

    def on_start(self, trainer: Trainer) -> None:
        self._start = time.perf_counter()

    def before_step(self, trainer: Trainer) -> None:
        if self.seconds and time.perf_counter() - self._start >= self.seconds:
            trainer.request_stop("time limit", checkpoint=True)
