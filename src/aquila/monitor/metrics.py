"""The metrics callback: logging-step numbers into the run database (and optional sinks), the
parameter norm, and the mixture in force. It reads only what the trainer already computed."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from aquila.engine.callbacks import Callback
from aquila.monitor import store
from aquila.monitor.config import MonitorOptions

if TYPE_CHECKING:
    from aquila.engine.step import StepMetrics
    from aquila.engine.trainer import Trainer

FIELDS = (
    "step",
    "tokens",
    "samples",
    "loss",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "mfu",
    "peak_memory",
    "data_wait_s",
    "batch_size",
    "eta_s",
    "time",
)


def parameter_norm(model: torch.nn.Module) -> float:
    """L2 norm of all parameters: one fused reduction and one host sync.

    With sharded (DTensor) parameters this is a collective: every rank must call it.
    """
    params = [p.detach() for p in model.parameters()]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from aquila.engine.distributed import global_norm

        return float(global_norm(params))
    return float(torch.nn.utils.get_total_norm(params, 2.0))


def mixture_label(trainer: Trainer) -> str:
    """The name of the mixture in force: a phase's, ``auto (POLICY)`` or ``mixture N``."""
    return trainer.data.label_at(trainer.state.samples, trainer.cfg.train.batch_size)


def current_weights(trainer: Trainer) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in trainer.data.current_weights().items()}


class MetricsWriter(Callback):
    def __init__(self, opts: MonitorOptions | None = None):
        self.opts = opts or MonitorOptions()
        self.db = None
        self._tb = None
        self._wandb = None
        self._weights: dict[str, float] | None = None
        self._label: str | None = None

    def on_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        self.db = store.open_db(trainer.run_dir)
        self.db.add_event(
            trainer.state.step, "start", f"training starts at step {trainer.state.step}"
        )
        self._check_mixture(trainer)
        if self.opts.tensorboard:
            self._tb = _tensorboard(trainer)
        if self.opts.wandb:
            self._wandb = _wandb(trainer)

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if not metrics.logged:
            return
        # Every rank joins the norm's reduction when parameters are sharded; rank 0 writes.
        norm = parameter_norm(trainer.model) if self.opts.param_norm else None
        if self.db is None:
            return
        values = metrics.row()
        row = {k: values[k] for k in FIELDS if values.get(k) is not None}
        row["source_loss"] = dict(metrics.source_loss)
        if metrics.skipped:
            row["skipped"] = str(metrics.skipped)
        if norm is not None:
            row["param_norm"] = norm
        row["lr_scale"] = trainer.schedule.scale
        row["phase"] = self._check_mixture(trainer)
        row = {k: _finite(v) for k, v in row.items()}
        self.db.add_metrics(int(row["step"]), row)
        if self._tb is not None:
            _tb_write(self._tb, row)
        if self._wandb is not None:
            self._wandb.log(_flat(row), step=int(row["step"]))

    def on_end(self, trainer: Trainer, reason: str) -> None:
        if self.db is not None:
            self.db.add_event(trainer.state.step, "end", f"training ended: {reason}", reason=reason)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def _check_mixture(self, trainer: Trainer) -> str:
        weights = current_weights(trainer)
        label = mixture_label(trainer)
        if weights != self._weights or label != self._label:
            self._weights, self._label = weights, label
            store.add_mixture(self.db, trainer.state.step, trainer.state.samples, label, weights)
        return label


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def _flat(row: dict[str, Any]) -> dict[str, float]:
    out = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
    out.update({f"source_loss/{k}": v for k, v in row["source_loss"].items()})
    return out


def _tensorboard(trainer: Trainer):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from aquila.errors import UserError

        raise UserError(
            "monitor.tensorboard is set but the tensorboard package is missing: "
            "pip install 'aquila[monitor]' (or pip install tensorboard)"
        ) from None
    return SummaryWriter(
        log_dir=str(trainer.run_dir / "tensorboard"), purge_step=trainer.state.step + 1
    )


def _tb_write(writer, row: dict[str, Any]) -> None:
    step = int(row["step"])
    for key, value in _flat(row).items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(key, value, step)
    writer.flush()


def _wandb(trainer: Trainer):
    try:
        import wandb
    except ImportError:
        from aquila.errors import UserError

        raise UserError(
            "monitor.wandb is set but wandb is not installed: pip install wandb"
        ) from None
    return wandb.init(
        mode="offline",
        dir=str(trainer.run_dir),
        project="aquila",
        name=trainer.run_dir.name,
        config=trainer.cfg.to_dict(),
        resume="allow",
    )
