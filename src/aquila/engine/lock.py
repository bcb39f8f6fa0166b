"""The run directory's owner: one training at a time holds ``RUN_DIR/trainer.lock``.

The lock is an exclusive ``flock`` on that file, so the kernel releases it when the holder
exits, however it exits: after a crash or a kill -9 the next training simply takes it (the file
stays, naming the last holder). The holder writes its pid, host, start time and command line
into the file, and a training refused the lock names them. Under torchrun rank 0 holds the lock
for the whole job and every rank learns of a refusal together.

On file systems without working locks (some network mounts) the run goes on unlocked, with a
warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aquila.engine.callbacks import Callback
from aquila.errors import RunDirBusy, UserError

if TYPE_CHECKING:
    from aquila.engine.distributed import DistInfo
    from aquila.engine.trainer import Trainer

LOCK_FILE = "trainer.lock"
# A probe (`running_trainer`) holds a shared lock for an instant: a starting training retries
# that long before it concludes that another one holds the directory.
PATIENCE_S = 2.0
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


def _holder_text(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "its details are not written yet"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {since}"


def _read(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class RunLock:
    """An exclusive lock on a run directory, held by this process until :meth:`release`."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, patience: float = PATIENCE_S) -> RunLock:
        """Take the lock or raise :class:`RunDirBusy` naming its holder. Idempotent."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(
                f"cannot create the lock of run directory {self.run_dir}: {exc.strerror}"
            ) from None
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read(fd)
                    os.close(fd)
                    raise RunDirBusy(_busy(self.run_dir, holder)) from None
                time.sleep(0.05)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise
                print(
                    f"aquila: warning: the file system of {self.run_dir} has no file locks; "
                    "nothing keeps a second training out of this run directory",
                    file=sys.stderr,
                )
                break
        self._fd = fd
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "command": sys.argv[:8],
        }
        with contextlib.suppress(OSError):  # the details are a courtesy; the lock is the flock
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self) -> None:  # a run prepared but never trained lets go when dropped
        self.release()


def running_trainer(run_dir: str | Path) -> dict[str, Any] | None:
    """The holder's details if a training holds ``run_dir`` now, else None. Read-only."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_running(run_dir: str | Path) -> None:
    """Raise :class:`RunDirBusy` if a training holds ``run_dir`` now (read-only: a check made
    before anything else, so that a busy directory is said first)."""
    holder = running_trainer(run_dir)
    if holder is not None:
        raise RunDirBusy(_busy(Path(run_dir), holder))


def _busy(run_dir: Path, info: dict[str, Any]) -> str:
    return (
        f"run directory {run_dir} is in use by another training ({_holder_text(info)}); "
        f"wait for it to end, or stop it: aquila control {run_dir} stop"
    )


def acquire_run_lock(run_dir: Path, dist: DistInfo) -> RunLock | None:
    """Rank 0 creates the run directory and takes its lock; in a multi-process run every rank
    raises if that failed. Returns the lock on rank 0, None elsewhere."""
    lock: RunLock | None = None
    refusal: str | None = None
    if dist.rank == 0:
        try:
            try:
                Path(run_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
            lock = RunLock(run_dir).acquire()
        except UserError as exc:
            if dist.world <= 1:
                raise
            refusal = f"{type(exc).__name__}:{exc}"
    if dist.world > 1:
        import torch.distributed as tdist

        box = [refusal]
        tdist.broadcast_object_list(box, src=0)
        refusal = box[0]
        if refusal is not None:
            kind, message = refusal.split(":", 1)
            raise (RunDirBusy if kind == RunDirBusy.__name__ else UserError)(message)
    return lock


class RunOwner(Callback):
    """Holds the run directory for the training and writes its resolved config once training
    starts: a run refused before that (a bad key, a checkpoint of another shape) changes
    nothing. Runs after every other callback, so the lock outlives their ``on_end``."""

    def __init__(self, lock: RunLock | None, write_config):
        self.lock = lock
        self.write_config = write_config

    def on_start(self, trainer: Trainer) -> None:
        if self.lock is not None:
            self.lock.acquire()  # again, when the same prepared run trains a second time
        if trainer.is_main:
            self.write_config()

    def on_end(self, trainer: Trainer, reason: str) -> None:
        if self.lock is not None:
            self.lock.release()
        if reason != "error" and trainer.dist.world > 1:
            from aquila.engine.distributed import barrier

            # No rank goes on (to train the same directory again, say) while rank 0 still holds
            # the lock: its own job's lock would read as another training's. After an error the
            # ranks may not all get here, so there is no collective then.
            barrier()
