"""Live control: commands from the run database's queue applied at step boundaries.

A command (set-mixture, set-lr, set-phase, add-source, pause, resume, checkpoint-now, stop) is
queued in ``RUN_DIR/run.sqlite`` by `aquila control` or the monitor. At the next step boundary
rank 0 reads the queue and broadcasts what it read, so every rank applies the same commands at
the same step. Each applied command is recorded in the trainer's history (which checkpoints
carry) and marked applied with its step in the database; an invalid one is rejected with the
reason and changes nothing.

Scheduled phase changes from the run's mixture file go the same way: each phase's weights are
set when the step that reaches its first sample begins (exactly at that sample, even mid-step).

After a kill, the commands applied since the last checkpoint are in the database but not in the
checkpoint: on resume they are applied again at the steps they were applied at, so the resumed
run reads the same data as the lost one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aquila.checks import check_value, number
from aquila.data.mixture import check_weights
from aquila.engine.callbacks import Callback
from aquila.engine.history import COMMANDS, REPLAYED, TRANSIENT, Event
from aquila.errors import UserError

if TYPE_CHECKING:
    from aquila.engine.rundb import RunDB
    from aquila.engine.trainer import Trainer

KINDS = COMMANDS
MAX_LR = 1.0
LR_VALUE = number(above=0, at_most=MAX_LR)
LR_SCALE = number(above=0)
SOURCE_WEIGHT = number(at_least=0, below=1)


class Rejected(Exception):
    """A command that cannot apply; the message is the reason stored with it."""


# -- parsing and validation (used by the CLI before queueing and by the trainer when applying) --
def parse_weights(text: str) -> dict[str, float]:
    """``kjv=0.5,news=0.5`` or a JSON object -> weights; raises UserError saying what is wrong."""
    text = text.strip()
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"weights {text!r}: invalid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise UserError(f"weights {text!r}: expected a JSON object of source -> weight")
        items = list(raw.items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise UserError(f"weights {text!r}: expected SOURCE=WEIGHT pairs, got {part!r}")
            name, value = part.split("=", 1)
            items.append((name.strip(), value.strip()))
    out: dict[str, float] = {}
    for name, value in items:
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            raise UserError(f"weights: weight of {name!r} is not a number: {value!r}") from None
    return check_weights(out)


def check_lr(args: dict[str, Any]) -> None:
    if ("value" in args) == ("scale" in args):
        raise UserError("set-lr takes a VALUE or --scale F, not both or neither")
    if "value" in args:
        check_value("set-lr VALUE", args["value"], LR_VALUE, what="argument")
    else:
        check_value("set-lr --scale", args["scale"], LR_SCALE, what="argument")


@dataclass
class RunContext:
    """What a run directory says about valid commands: its sources and mixture phases."""

    available_sources: list[str] | None  # in the data dir (or the sample corpus); None: unknown
    phases: list[str]
    has_policy: bool = False  # an online mixture policy steers the run
    # The sources the training has open (``data.sources``, or all available): a mixture names
    # only these; add-source opens another.
    loaded_sources: list[str] | None = None

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> RunContext:
        from aquila.engine.config import CONFIG_FILE, load_config

        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
        cfg = load_config(path)
        available = None
        if not cfg.data.dir:
            from aquila.data.samples import SOURCE_NAMES

            available = list(SOURCE_NAMES)
        elif Path(cfg.data.dir).is_dir():
            from aquila.data.shards import available_sources

            available = available_sources(Path(cfg.data.dir))
        loaded = list(cfg.data.sources) or available
        phases, has_policy = [], False
        if cfg.data.mixture:
            from aquila.data.mixture import load_mixture

            plan = load_mixture(cfg.data.mixture)
            phases, has_policy = [p.name for p in plan.phases], plan.policy is not None
        return cls(available, phases, has_policy, loaded)


def validate(kind: str, args: dict[str, Any], ctx: RunContext | None = None) -> None:
    """Checks that need no running trainer; raises UserError with a one-line reason."""
    if kind not in KINDS:
        raise UserError(f"unknown command {kind!r}; known: {', '.join(KINDS)}")
    known = set(ctx.available_sources) if ctx and ctx.available_sources is not None else None
    loaded = set(ctx.loaded_sources) if ctx and ctx.loaded_sources is not None else known
    if kind == "set-mixture":
        check_weights(args.get("weights"))
        if loaded is not None:
            unknown = sorted(set(args["weights"]) - loaded)
            if unknown:
                where = "the run's sources are" if loaded == known else "the run trains on"
                hint = "; add one with add-source" if loaded != known else ""
                raise UserError(f"unknown source(s) {unknown}; {where} {sorted(loaded)}{hint}")
    elif kind == "set-lr":
        check_lr(args)
    elif kind == "set-phase":
        if ctx is not None and args.get("name") not in ctx.phases:
            have = ", ".join(ctx.phases) or "none (the run has no mixture file)"
            raise UserError(f"unknown phase {args.get('name')!r}; phases: {have}")
    elif kind == "add-source":
        if known is not None and args.get("name") not in known:
            raise UserError(
                f"source {args.get('name')!r} is not in the run's data dir; have {sorted(known)}"
            )
        check_value("add-source --weight", args.get("weight", 0.0), SOURCE_WEIGHT, what="argument")
    elif kind == "auto-mixture":
        if not isinstance(args.get("on"), bool):
            raise UserError(f"auto-mixture takes on or off, got {args.get('on')!r}")
        if ctx is not None and not ctx.has_policy:
            raise UserError(
                "auto-mixture: the run has no mixture policy (a [policy] table in its mixture file)"
            )


# -- applying commands inside the trainer ---------------------------------------------------
def _reject_on(fn, *args):
    try:
        return fn(*args)
    except (UserError, ValueError) as exc:
        raise Rejected(str(exc)) from None


class ControlCallback(Callback):
    """Reads the command queue at each step boundary and applies it on every rank."""

    def __init__(
        self,
        run_dir: Path,
        db: RunDB | None = None,
        poll_seconds: float = 0.5,
        since: float | None = None,
        has_policy: bool = False,
    ):
        """``since``: when this training took the run directory; a pause, stop or
        checkpoint-now queued before then was meant for no training now running.
        ``has_policy``: an online mixture policy runs, which auto-mixture switches."""
        self.run_dir = Path(run_dir)
        self._db = db
        self.poll_seconds = poll_seconds
        self.since = since
        self.has_policy = has_policy
        self.paused = False
        self._phases: list[tuple[int, str, dict[str, float]]] = []
        self._replay: list[dict[str, Any]] = []

    @property
    def db(self) -> RunDB:
        if self._db is None:
            from aquila.engine.rundb import RunDB

            self._db = RunDB(self.run_dir)
        return self._db

    # -- hooks --------------------------------------------------------------------------------
    def on_start(self, trainer: Trainer) -> None:
        self._phases = trainer.data.phases(trainer.cfg.train.batch_size)
        if trainer.is_main:
            self._replay = self._lost_commands(trainer)

    def before_step(self, trainer: Trainer) -> None:
        self._boundary(trainer)
        while self.paused and not trainer.stop_requested:
            time.sleep(self.poll_seconds)
            self._boundary(trainer)

    # -- one boundary -------------------------------------------------------------------------
    def _boundary(self, trainer: Trainer) -> None:
        decided: list[dict[str, Any]] = []
        if trainer.is_main:
            step = trainer.state.step
            decided = [c for c in self._replay if c["applied_step"] <= step]
            self._replay = [c for c in self._replay if c["applied_step"] > step]
            for c in self.db.pending():
                if c["kind"] in TRANSIENT and self.since is not None and c["created"] < self.since:
                    self.db.resolve(
                        c["id"], "rejected", step, "queued while no training was running"
                    )
                    continue
                decided.append({**c, "origin": "queue"})
        decided = broadcast(decided, trainer)
        for cmd in decided:
            self._apply_one(trainer, cmd)
        self._scheduled_phases(trainer)

    def _apply_one(self, trainer: Trainer, cmd: dict[str, Any]) -> None:
        kind, args = cmd["kind"], dict(cmd.get("args") or {})
        step = trainer.state.step
        try:
            details = self.apply(trainer, kind, args)
        except Rejected as exc:
            if trainer.is_main and cmd.get("origin") == "queue":
                self.db.resolve(cmd["id"], "rejected", step, str(exc))
                self.db.add_event(
                    step, "command", f"rejected {kind}: {exc}", "warning", id=cmd["id"]
                )
            return
        trainer.record(Event.COMMAND, id=cmd.get("id"), command=kind, args=args, **details)
        if trainer.is_main:
            if cmd.get("origin") == "queue":
                self.db.resolve(cmd["id"], "applied", step)
            how = "re-applied" if cmd.get("origin") == "replay" else "applied"
            self.db.add_event(step, "command", f"{how} {kind} {_brief(args)}", id=cmd.get("id"))

    def apply(self, trainer: Trainer, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        """Apply one command at this boundary; raises Rejected (changing nothing) if invalid."""
        _reject_on(validate, kind, args, None)
        data, samples = trainer.data, trainer.state.samples
        if kind == "set-mixture":
            _reject_on(data.set_weights, samples, args["weights"])
            return {"weights": data.current_weights()}
        if kind == "set-phase":
            index = next((i for i, p in enumerate(self._phases) if p[1] == args["name"]), None)
            if index is None:
                have = ", ".join(p[1] for p in self._phases) or "none (no mixture file)"
                raise Rejected(f"unknown phase {args['name']!r}; phases: {have}")
            _reject_on(data.set_weights, samples, self._phases[index][2], args["name"])
            return {"weights": data.current_weights(), "skip_through": index}
        if kind == "add-source":
            return self._add_source(trainer, args["name"], float(args.get("weight", 0.0)))
        if kind == "set-lr":
            if "scale" in args:
                scale = trainer.scale_lr(float(args["scale"]))
            else:
                scale = trainer.set_lr(float(args["value"]))
            return {"scale": scale, "lr": trainer.schedule(trainer.state.step)}
        if kind == "auto-mixture":
            if not self.has_policy:
                raise Rejected("the run has no mixture policy to switch")
            # The MixingCallback reads this entry from the history at the same boundary.
            return {"on": bool(args["on"])}
        if kind == "pause":
            self.paused = True
        elif kind == "resume":
            self.paused = False
        elif kind == "checkpoint-now":
            trainer.request_checkpoint()
        elif kind == "stop":
            self.paused = False
            trainer.request_stop("stopped by command", checkpoint=True)
        return {}

    def _add_source(self, trainer: Trainer, name: str, weight: float) -> dict[str, Any]:
        data = trainer.data
        if data.current_weights().get(name, 0.0) > 0:
            raise Rejected(f"source {name!r} is already in the mixture")
        weights = {k: v * (1.0 - weight) for k, v in data.current_weights().items()}
        weights[name] = weight
        if name in data.sources:
            _reject_on(data.set_weights, trainer.state.samples, weights)
            return {"weights": data.current_weights()}
        from aquila.data.shards import load_sources

        any_src = next(iter(data.sources.values()))
        new = _reject_on(
            load_sources,
            Path(any_src.dir).parent,
            [name],
            any_src.tokenizer_hash,
            trainer.cfg.model.vocab_size,
        )[name]
        listed = list(trainer.cfg.data.sources)
        _reject_on(trainer.add_source, name, new, weights)
        if trainer.is_main and trainer.cfg.data.sources != listed:
            from aquila.engine.config import CONFIG_FILE

            trainer.cfg.save(self.run_dir / CONFIG_FILE)  # resume must open this source too
        return {"weights": data.current_weights()}

    def _scheduled_phases(self, trainer: Trainer) -> None:
        """Set each mixture-file phase when the next step reaches its first sample."""
        if len(self._phases) < 2:
            return
        start = trainer.state.samples
        end = start + trainer.ramp.size_at(trainer.state.step)
        done = _done_phases(trainer.history)
        for index, (from_g, name, weights) in enumerate(self._phases):
            if index == 0 or index in done or from_g >= end:
                continue
            g = max(from_g, start)
            try:
                trainer.data.set_weights(g, weights, name)
            except (UserError, ValueError) as exc:
                if trainer.is_main:
                    self.db.add_event(
                        trainer.state.step, "command", f"phase {name}: {exc}", "error"
                    )
                continue
            entry = trainer.record(
                Event.COMMAND,
                id=None,
                command="phase",
                phase=name,
                phase_index=index,
                from_g=g,
                weights=trainer.data.current_weights(),
            )
            if trainer.is_main:
                cid = self.db.enqueue("set-phase", name=name, scheduled=True, from_g=g)
                self.db.resolve(cid, "applied", entry["step"])
                self.db.add_event(entry["step"], "command", f"phase {name} from sample {g}")

    def _lost_commands(self, trainer: Trainer) -> list[dict[str, Any]]:
        """Commands applied after the checkpoint this run resumed from (lost with the kill)."""
        if trainer.state.step == 0 and not trainer.history:
            return []
        have = {h.get("id") for h in trainer.history if h.get("id") is not None}
        out = []
        for c in self.db.commands():
            if (
                c["status"] == "applied"
                and c["kind"] in REPLAYED
                and not c["args"].get("scheduled")
                and c["id"] not in have
                and c["applied_step"] is not None
                and c["applied_step"] >= trainer.state.step
            ):
                out.append({**c, "origin": "replay"})
        return out


def _done_phases(history: list[dict[str, Any]]) -> set[int]:
    done: set[int] = set()
    for h in history:
        if "phase_index" in h:
            done.add(int(h["phase_index"]))
        if "skip_through" in h:
            done.update(range(int(h["skip_through"]) + 1))
    return done


def _brief(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True) if args else ""


def broadcast(obj: list[dict[str, Any]], trainer: Trainer) -> list[dict[str, Any]]:
    """Rank 0's decisions on every rank (a no-op in a single process)."""
    if trainer.dist.world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
