"""Errors the CLI reports in one line, each with the exit code scripts can test for.

Exit codes of every `aquila` command:

====  ===============================================================================
0     success (a training that completed, reached ``train.max_seconds`` or was stopped by
      ``aquila control RUN_DIR stop``)
1     an unexpected failure (a bug: the traceback is printed)
2     bad input: a file, an option or a config key (:class:`UserError`)
3     the training was stopped by the monitor (non-finite values, divergence, a ``stop``
      policy, rewinds exhausted)
4     a checkpoint (:class:`SaveFailed`) or another file of the run (``metrics.jsonl``,
      ``run.sqlite``: :class:`RunFileFailed`) could not be written: a full disk, a read-only
      run directory; the latest checkpoint is intact, and the run resumes once there is room.
      Also a token shard that ``aquila data tokenize`` could not write (:class:`WriteFailed`)
5     the run directory is in use by another training (:class:`RunDirBusy`)
6     ``aquila control ... --wait``: the training rejected the command (the reason is printed)
7     ``aquila control ... --wait``: the command is still pending at ``--timeout``
8     ``train.compile`` was asked for and torch.compile failed (:class:`CompileFailed`);
      ``train.compile_fallback = true`` trains eagerly instead
130   interrupted (Ctrl-C or SIGTERM; a training saves a checkpoint first)
====  ===============================================================================
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_MONITOR_STOP = 3
EXIT_SAVE_FAILED = 4
EXIT_RUN_BUSY = 5
EXIT_COMMAND_REJECTED = 6
EXIT_COMMAND_PENDING = 7
EXIT_COMPILE_FAILED = 8
EXIT_INTERRUPTED = 130


class ReportedError(Exception):
    """An error the CLI prints as a single line, without a traceback, exiting with
    ``exit_code``."""

    exit_code = EXIT_BUG


class UserError(ReportedError):
    """An error caused by the user's input (a file, an option, a config key): exit code 2."""

    exit_code = EXIT_USAGE


class WriteFailed(ReportedError):
    """A file could not be written (a full disk, a quota, a read-only file system) and what was
    partly written is gone: exit code 4, the code of a failed checkpoint."""

    exit_code = EXIT_SAVE_FAILED


class RunFileFailed(WriteFailed):
    """A file of the run other than a checkpoint (``metrics.jsonl``, ``run.sqlite``) could not
    be written; what was partly written is taken back and the training stops: exit code 4."""


class RunDirBusy(UserError):
    """The run directory's lock is held by another training: exit code 5."""

    exit_code = EXIT_RUN_BUSY


class SaveFailed(ReportedError):
    """A checkpoint could not be written; nothing partial was left and the previous checkpoint
    is still the latest: exit code 4."""

    exit_code = EXIT_SAVE_FAILED


class CompileFailed(ReportedError):
    """torch.compile failed on the first step of a run that asked for it: exit code 8."""

    exit_code = EXIT_COMPILE_FAILED


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
