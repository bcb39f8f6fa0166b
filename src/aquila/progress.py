"""The progress bar of long byte-counted work (tokenizing shards, training a tokenizer).

On stderr, so stdout stays clean for ``--json`` readers; a no-op when disabled.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType


class ByteProgress:
    """``with ByteProgress(enabled, label, total) as advance: advance(n_bytes)``."""

    def __init__(self, enabled: bool, label: str, total: int, transient: bool = False):
        self.enabled, self.label, self.total, self.transient = enabled, label, total, transient

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=self.transient,
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            self.bar.stop()
