"""The anomaly callback: feeds the detectors and applies each detector's policy.

Per-step losses stay on the device and are read once per logging step (one host sync per log
interval), unless a detector's policy is "skip": deciding to drop an optimizer step needs that
step's numbers before the update, which costs one sync per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from aquila.engine.callbacks import Callback
from aquila.engine.history import Event
from aquila.monitor.config import DetectorOptions, MonitorOptions
from aquila.monitor.detectors import (
    DivergenceDetector,
    Finding,
    NonFiniteDetector,
    PlateauDetector,
    SpikeDetector,
)

if TYPE_CHECKING:
    from aquila.engine.step import StepMetrics
    from aquila.engine.trainer import Trainer

# Only these detectors judge a single batch, so only they may skip its update.
PER_BATCH = ("nonfinite", "spike")
MAX_DOCUMENTS = 16


@dataclass
class StepRecord:
    step: int
    start: int  # first global sample index of the step
    end: int
    source_ids: list[int]
    global_indices: list[int]
    loss: Any = None  # device tensor until the logging step, then a float
    grad_norm: Any = None
    src_loss: Any = None
    src_count: Any = None
    checked: bool = False  # already judged per step (skip policy)


@dataclass
class SkipRanges:
    """Global sample ranges ``[start, end)`` a rewind decided never to train on."""

    ranges: list[tuple[int, int]] = field(default_factory=list)

    def jump(self, g: int) -> int | None:
        for start, end in self.ranges:
            if start <= g < end:
                return end
        return None


class AnomalyMonitor(Callback):
    def __init__(self, opts: MonitorOptions, db=None):
        self.opts = opts
        self.db = db
        self.detect = {
            "nonfinite": NonFiniteDetector() if opts.nonfinite.enabled else None,
            "spike": SpikeDetector(opts.spike) if opts.spike.enabled else None,
            "plateau": PlateauDetector(opts.plateau) if opts.plateau.enabled else None,
            "divergence": DivergenceDetector(opts.divergence) if opts.divergence.enabled else None,
        }
        self.per_step = any(
            self.detect[k] is not None and getattr(opts, k).policy == "skip" for k in PER_BATCH
        )
        self.buffer: list[StepRecord] = []
        self.skips = SkipRanges()
        self.last_action: dict[str, int] = {}
        self.rewinds = 0
        self.source_ema: dict[str, float] = {}
        self.findings: list[dict[str, Any]] = []  # what was decided, also for tests
        # Findings of the per-step check whose policy waits for the logging step.
        self._defer: list[tuple[Finding, StepRecord]] = []

    # -- callback hooks ---------------------------------------------------------------------
    def on_start(self, trainer: Trainer) -> None:
        # The ranges live in the run history (saved with every checkpoint), so a resumed run
        # keeps skipping them.
        self.skips.ranges = sorted(
            {
                tuple(e["skip"])
                for e in trainer.history
                if e.get("kind") == Event.REWIND and e.get("skip")
            }
        )
        if self.db is None and trainer.is_main:
            from aquila.monitor import store

            self.db = store.open_db(trainer.run_dir)

    def before_step(self, trainer: Trainer) -> None:
        end = self.skips.jump(trainer.state.samples)
        if end is not None:
            trainer.skip_samples(end)

    def before_optimizer(self, trainer: Trainer, info: dict[str, Any]) -> None:
        size = trainer.ramp.size_at(trainer.state.step)
        rec = StepRecord(
            step=trainer.state.step + 1,
            start=trainer.state.samples,
            end=trainer.state.samples + size,
            source_ids=info["source_ids"].tolist(),
            global_indices=[int(x) for x in info["global_indices"]],
            loss=info["loss"].detach(),
            grad_norm=info["grad_norm"].detach(),
        )
        if self.per_step:
            rec.loss, rec.grad_norm = float(rec.loss), float(rec.grad_norm)
            rec.checked = True
            for kind in PER_BATCH:
                finding = self._run(kind, rec)
                if finding and getattr(self.opts, kind).policy == "skip":
                    self._act(trainer, finding, rec)
                elif finding:
                    self._defer.append((finding, rec))
        self.buffer.append(rec)

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if not self.buffer or self.buffer[-1].step != metrics.step:
            return
        rec = self.buffer[-1]
        if metrics.logged:
            rec.src_loss = dict(metrics.source_loss)
            for name, v in rec.src_loss.items():
                old = self.source_ema.get(name, v)
                self.source_ema[name] = 0.9 * old + 0.1 * v
            self._flush(trainer)
        else:
            rec.src_loss, rec.src_count = metrics.source_loss_sum, metrics.source_count

    # -- detection --------------------------------------------------------------------------
    def _flush(self, trainer: Trainer) -> None:
        pending = [r for r in self.buffer if not r.checked]
        if pending:
            # One transfer for the whole log interval.
            values = torch.stack(
                [torch.stack([r.loss.float(), r.grad_norm.float()]) for r in pending]
            ).tolist()
            for r, (loss, gn) in zip(pending, values):
                r.loss, r.grad_norm = loss, gn
        deferred, self._defer = self._defer, []
        buffer, self.buffer = self.buffer, []
        for finding, rec in deferred:
            if self._act(trainer, finding, rec) == "rewind":
                return
        for rec in buffer:
            kinds = ["plateau", "divergence"] if rec.checked else list(self.detect)
            for kind in kinds:
                finding = self._run(kind, rec)
                if finding and self._act(trainer, finding, rec) == "rewind":
                    return

    def _run(self, kind: str, rec: StepRecord) -> Finding | None:
        det = self.detect[kind]
        if det is None:
            return None
        if kind in PER_BATCH:
            return det.update(rec.step, rec.loss, rec.grad_norm)
        return det.update(rec.step, rec.loss)

    # -- policies ---------------------------------------------------------------------------
    def _act(self, trainer: Trainer, finding: Finding, rec: StepRecord) -> str:
        opts: DetectorOptions = getattr(self.opts, finding.kind)
        policy = opts.policy
        last = self.last_action.get(finding.kind)
        if policy != "log" and last is not None and rec.step - last < opts.cooldown:
            policy = "log"
            finding.evidence["cooldown"] = f"acted at step {last}"
        if policy == "skip" and finding.kind not in PER_BATCH:
            policy = "log"
        if policy == "rewind" and self.rewinds >= self.opts.max_rewinds:
            policy = "stop"
            finding.evidence["rewinds"] = self.rewinds
        action = self._apply(trainer, policy, finding, rec)
        if action != "log":
            self.last_action[finding.kind] = rec.step
        self._report(trainer, finding, rec, action)
        return action

    def _apply(self, trainer: Trainer, policy: str, finding: Finding, rec: StepRecord) -> str:
        reason = f"monitor: {finding.kind} at step {rec.step}"
        if policy == "skip":
            trainer.skip_update(reason)
            return "skip"
        if policy == "lower-lr":
            factor = getattr(self.opts, finding.kind).lr_factor
            scale = trainer.scale_lr(factor)
            trainer.record(Event.LOWER_LR, factor=factor, scale=scale, reason=reason)
            return "lower-lr"
        if policy == "stop":
            # Weights after a non-finite update are not worth saving.
            trainer.request_stop(reason, checkpoint=finding.kind != "nonfinite", anomaly=True)
            return "stop"
        if policy == "rewind":
            done = self._rewind(trainer, rec, reason)
            if done:
                finding.evidence["rewound_to"] = done
                return "rewind"
            trainer.request_stop(
                reason + " (no checkpoint to rewind to)", checkpoint=False, anomaly=True
            )
            return "stop"
        return "log"

    def _rewind(self, trainer: Trainer, rec: StepRecord, reason: str) -> int | None:
        """Reload the newest checkpoint older than the bad step and never train on its batch.

        The sampler is a pure function of the global index, so skipping a batch only means
        jumping ``state.samples`` past its range when training reaches it again. Commands applied
        since the checkpoint (mixture segments, LR scale, history) are kept: they name data
        positions, which stay valid.
        """
        from aquila.engine.checkpoint import list_checkpoints

        older = [(s, p) for s, p in list_checkpoints(trainer.run_dir) if s < rec.step]
        if not older:
            return None
        step, path = older[-1]
        ranges = list(self.skips.ranges)
        # Every rank decides alike (loss and gradient norm are global) and reloads together.
        trainer.rewind(path)
        self.skips.ranges = sorted(set(ranges) | {(rec.start, rec.end)})
        self.rewinds += 1
        self.buffer.clear()
        trainer.record(
            Event.REWIND,
            to_step=step,
            checkpoint=str(path),
            skip=[rec.start, rec.end],
            reason=reason,
        )
        return step

    def _report(self, trainer: Trainer, finding: Finding, rec: StepRecord, action: str) -> None:
        names = list(trainer.data.source_names)
        data: dict[str, Any] = {
            "evidence": finding.evidence,
            "action": action,
            "policy": getattr(self.opts, finding.kind).policy,
            "samples": [rec.start, rec.end],
        }
        if finding.kind in PER_BATCH:
            counts: dict[str, int] = {}
            for s in rec.source_ids:
                name = names[s] if s < len(names) else str(s)
                counts[name] = counts.get(name, 0) + 1
            data.update(
                sources=counts,
                source_ids=rec.source_ids,
                global_indices=rec.global_indices,
                suspect_source=self._suspect(rec, names),
                documents=_documents(trainer, rec.global_indices),
            )
        entry = {"step": finding.step, "kind": finding.kind, "message": finding.message, **data}
        self.findings.append(entry)
        if self.db is not None and trainer.is_main:
            self.db.add_event(
                finding.step,
                finding.kind,
                f"{finding.message}; action: {action}",
                finding.severity,
                **_jsonable(data),
            )

    def _suspect(self, rec: StepRecord, names: list[str]) -> str | None:
        """The source whose loss in this batch stands furthest above its running mean."""
        losses = rec.src_loss
        if isinstance(losses, torch.Tensor) and isinstance(rec.src_count, torch.Tensor):
            counts = rec.src_count.tolist()
            losses = {
                names[i]: v / c for i, (v, c) in enumerate(zip(losses.tolist(), counts)) if c > 0
            }
        if not losses:
            present = {names[s] for s in rec.source_ids if s < len(names)}
            return next(iter(present)) if len(present) == 1 else None
        gaps = {n: v - self.source_ema.get(n, v) for n, v in losses.items() if math.isfinite(v)}
        return max(gaps, key=gaps.get) if gaps else None


def _documents(trainer: Trainer, indices: list[int]) -> list[list[Any]]:
    """``(source, document)`` pairs behind each sequence of the batch (when the data can tell)."""
    import numpy as np

    data = trainer.data
    try:
        batch = data.read(np.asarray(indices[:MAX_DOCUMENTS], dtype=np.int64))
        return [[list(d) for d in docs] for docs in data.documents(batch)]
    except Exception:  # tracing is best effort: never let it stop training
        return []


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return x
