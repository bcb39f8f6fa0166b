"""MixingCallback: runs a mixture policy inside the trainer, at step boundaries, under human control.

Each step it adds the step's per-source loss sums and sequence counts to an interval total (on the
device, so non-logging steps never sync). Every ``every`` steps after ``warmup`` it asks the
policy for new weights, bounds them (floors; caps from the repetition limits, so no source passes
its ``max_epochs`` even if the policy kept the cap to the end of the run), applies them from the
next sample with ``data.set_weights`` and records them in the run history as ``auto-mixture``.

The person stays in charge. A mixture change not made by the policy (``set-mixture``,
``set-phase`` or ``add-source`` through the control queue, or any ``set-mixture`` entry) pauses
the policy until control is handed back: a history entry ``auto-mixture`` with ``on = true`` not
made by the policy (the control command), :meth:`MixingCallback.resume_policy`, or the flag file
``RUN_DIR/mixing/resume``. A scheduled phase of the mixture file is planned, not an override: it
becomes the policy's new prior and the policy carries on from it.

Everything the policy decides is a function of the losses, which are a function of the seed and
the history: a resumed run (the policy's state travels in checkpoints) makes the same decisions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aquila.engine.callbacks import Callback
from aquila.engine.history import Command, Event
from aquila.mixing.config import PolicyConfig
from aquila.mixing.policies import MixturePolicy, apply_bounds, build_policy

if TYPE_CHECKING:
    from aquila.engine.step import StepMetrics
    from aquila.engine.trainer import Trainer

STATE_KEY = "mixing"
# Control commands that set the mixture by hand.
MANUAL_COMMANDS = {"set-mixture", "set-phase", "add-source"}
RESUME_FLAG = Path("mixing") / "resume"


class MixingCallback(Callback):
    def __init__(self, config: PolicyConfig):
        self.config = config
        self.policy: MixturePolicy | None = None
        self.paused = False
        self.paused_reason = ""
        self.last_update = 0
        self._seen = 0  # history entries already inspected
        self._loss: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._resume_requested = False
        self.updates: list[dict[str, Any]] = []  # this process' decisions, for reports

    # -- hooks --------------------------------------------------------------------------------
    def on_start(self, trainer: Trainer) -> None:
        names = trainer.data.source_names
        self.policy = build_policy(
            self.config.name, names, trainer.data.current_weights(), self.config.params
        )
        self._zero(trainer, len(names))
        # Registered now so a resumed run's checkpoint restores the policy (load_state_dict).
        trainer.register_state(STATE_KEY, self)

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        self._loss += metrics.source_loss_sum.detach().to(self._loss)
        self._count += metrics.source_count.detach().to(self._count)

    def before_step(self, trainer: Trainer) -> None:
        self._watch_history(trainer)
        if self.paused:  # the flag only matters then (and costs a broadcast on many ranks)
            self._check_flag(trainer)
        step = trainer.state.step
        if step < max(self.config.warmup, 1) or step - self.last_update < self.config.every:
            return
        losses, counts = self._interval(trainer)
        if self.paused or not counts:
            return
        data = trainer.data
        if data.history.segments[-1][0] > trainer.state.samples:
            return  # a phase already starts inside this step: leave the step to it
        weights = self.policy.update(step, losses, counts, data.current_weights())
        weights = apply_bounds(weights, self._floors(data), self._caps(trainer))
        data.set_weights(trainer.state.samples, weights, f"auto ({self.config.name})")
        entry = trainer.record(
            Event.AUTO_MIXTURE,
            weights=data.current_weights(),
            policy=self.config.name,
            losses=losses,
            by="policy",
        )
        self.updates.append(entry)

    # -- human control --------------------------------------------------------------------------
    def resume_policy(self, trainer: Trainer | None = None) -> None:
        """Hand mixture control back to the policy (recorded, so a resumed run does the same).

        Without a trainer at hand the hand-back happens at the next step boundary.
        """
        if trainer is None:
            self._resume_requested = True
            return
        trainer.record(Event.AUTO_MIXTURE, on=True, by="user")
        self._watch_history(trainer)

    def _watch_history(self, trainer: Trainer) -> None:
        if self._resume_requested:
            self._resume_requested = False
            trainer.record(Event.AUTO_MIXTURE, on=True, by="user")
        for entry in trainer.history[self._seen :]:
            self._inspect(trainer, entry)
        self._seen = len(trainer.history)

    def _inspect(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        kind, by = entry.get("kind"), entry.get("by")
        command = entry.get("command") if kind == Event.COMMAND else kind
        args = entry.get("args") or {}
        if command == Command.AUTO_MIXTURE and by != "policy" and "on" in {**args, **entry}:
            on = bool(args.get("on", entry.get("on")))
            if on and self.paused:
                self.paused, self.paused_reason = False, ""
                # The mixture the person left in force is where the policy starts again.
                self.policy.set_prior(trainer.data.current_weights())
                self.last_update = trainer.state.step
                self._zero(trainer, len(trainer.data.source_names))
            elif not on:
                self.paused, self.paused_reason = True, "paused by command"
        elif command == "phase" and kind == Event.COMMAND:  # a mixture file's scheduled phase
            self.policy.set_prior(entry.get("weights") or trainer.data.current_weights())
        elif command in MANUAL_COMMANDS and by != "policy":
            self.paused = True
            self.paused_reason = f"manual {command} at step {entry.get('step')}"

    def _check_flag(self, trainer: Trainer) -> None:
        flag = trainer.run_dir / RESUME_FLAG
        found = trainer.is_main and flag.is_file()
        if trainer.dist.world > 1:
            from aquila.engine.control import broadcast

            found = bool(broadcast([{"found": found}], trainer)[0]["found"])
        if found:
            if trainer.is_main:
                flag.unlink(missing_ok=True)
            self.resume_policy(trainer)

    # -- helpers --------------------------------------------------------------------------------
    def _zero(self, trainer: Trainer, n: int) -> None:
        self._loss = torch.zeros(n, dtype=torch.float32, device=trainer.device)
        self._count = torch.zeros(n, dtype=torch.float32, device=trainer.device)

    def _interval(self, trainer: Trainer) -> tuple[dict[str, float], dict[str, float]]:
        """Mean loss and sequence count per source since the last decision; resets the totals."""
        names = trainer.data.source_names
        loss, count = self._loss.tolist(), self._count.tolist()
        self._zero(trainer, len(names))
        self.last_update = trainer.state.step
        counts = {n: c for n, c in zip(names, count) if c > 0}
        losses = {n: s / c for n, s, c in zip(names, loss, count) if c > 0}
        return losses, counts

    def _floors(self, data: Any) -> dict[str, float]:
        return {n: self.config.floor(n) for n in data.source_names}

    def _caps(self, trainer: Trainer) -> dict[str, float]:
        """The largest share each source can keep for the rest of the run within its limit."""
        t = trainer.cfg.train
        left = sum(trainer.ramp.size_at(s) for s in range(trainer.state.step, t.max_steps))
        if left <= 0:
            return {}
        sampler = trainer.data.sampler
        drawn = sampler.counts_at(trainer.state.samples)
        caps = {}
        for name in trainer.data.source_names:
            limit = self.config.epochs_limit(name)
            if limit != float("inf"):
                allowed = limit * sampler.num_chunks[name] - drawn.get(name, 0)
                caps[name] = max(allowed, 0.0) / left
        return caps

    # -- checkpoint state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy_name": self.config.name,
            "policy": self.policy.state_dict(),
            "paused": self.paused,
            "paused_reason": self.paused_reason,
            "last_update": self.last_update,
            "seen": self._seen,
            "loss": self._loss.tolist(),
            "count": self._count.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seen = int(state["seen"])
        if state.get("policy_name") != self.config.name:
            return  # another policy now: it starts fresh from the restored mixture
        self.policy.load_state_dict(state["policy"])
        self.paused = bool(state["paused"])
        self.paused_reason = str(state.get("paused_reason", ""))
        self.last_update = int(state["last_update"])
        device = self._loss.device
        self._loss = torch.tensor(state["loss"], dtype=torch.float32, device=device)
        self._count = torch.tensor(state["count"], dtype=torch.float32, device=device)
