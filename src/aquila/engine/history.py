"""The kinds of a run's history: what changed its course, saved in every checkpoint.

``Trainer.record(Event.X, **details)`` appends ``{"step", "samples", "kind", **details}``;
the entries stay plain dicts so that checkpoints load with ``weights_only=True``. The control
queue's command kinds are here too, so control, the dashboard and the monitor share one list.
"""

from __future__ import annotations

from enum import Enum


class Event(str, Enum):
    """A history entry's ``kind``."""

    COMMAND = "command"  # a control command applied ("command": its Command; "args")
    AUTO_MIXTURE = "auto-mixture"  # the mixing policy's update, or its hand-over ("on", "by")
    SKIP_SAMPLES = "skip-samples"  # the data position moved ("start", "end")
    REWIND = "rewind"  # back to a checkpoint, skipping samples ("to_step", "skip")
    LOWER_LR = "lower-lr"  # a monitor policy lowered the LR ("factor", "scale")
    SAVE_FAILED = "save-failed"  # a checkpoint could not be written ("error")
    COMPILE = "compile"  # what torch.compile covers ("scope")
    COMPILE_FALLBACK = "compile-fallback"  # compile failed, the run went on eager ("error")


class Command(str, Enum):
    """A control command's kind (``aquila control``, the dashboard, monitor policies)."""

    SET_MIXTURE = "set-mixture"
    SET_LR = "set-lr"
    SET_PHASE = "set-phase"
    ADD_SOURCE = "add-source"
    AUTO_MIXTURE = "auto-mixture"
    PAUSE = "pause"
    RESUME = "resume"
    CHECKPOINT_NOW = "checkpoint-now"
    STOP = "stop"


COMMANDS = tuple(c.value for c in Command)
# Commands that change what later steps compute; only these are re-applied after a resume.
REPLAYED = frozenset(
    c.value
    for c in (
        Command.SET_MIXTURE,
        Command.SET_LR,
        Command.SET_PHASE,
        Command.ADD_SOURCE,
        Command.AUTO_MIXTURE,
    )
)
# Commands for the training running now: one queued while none ran is refused by the CLI and,
# queued behind its back, rejected by the next training rather than stopping it at once.
TRANSIENT = frozenset(
    c.value for c in (Command.PAUSE, Command.RESUME, Command.CHECKPOINT_NOW, Command.STOP)
)
