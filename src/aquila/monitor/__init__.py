"""Training State Monitor: metrics to the run database, weight trajectories, anomaly detection
with policies, checkpoint evaluation in a separate process, suggestions and a live dashboard."""

from __future__ import annotations

from typing import Any

from aquila.monitor.config import MonitorOptions


def monitor_callbacks(cfg_or_options: Any = None) -> list:
    """The monitor's callbacks for a run: pass a TrainConfig (its ``monitor`` section, if any),
    a MonitorOptions, a ``[monitor]`` dict, or None for the defaults."""
    from aquila.monitor.evaluator import EvalTrigger
    from aquila.monitor.metrics import MetricsWriter
    from aquila.monitor.policies import AnomalyMonitor
    from aquila.monitor.trajectory import TrajectoryCallback

    opts = MonitorOptions.from_any(cfg_or_options)
    if not opts.enabled:
        return []
    writer = MetricsWriter(opts)
    cbs = [writer, AnomalyMonitor(opts)]
    if opts.trajectory:
        cbs.append(TrajectoryCallback())
    if opts.eval.enabled:
        cbs.append(EvalTrigger(opts.eval))
    return cbs


__all__ = ["MonitorOptions", "monitor_callbacks"]
