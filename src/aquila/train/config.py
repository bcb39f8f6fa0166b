"""A run's whole config: the engine's sections (``[model]``, ``[data]``, ``[optim]``,
``[train]``) plus the monitor's (``[monitor]``), every key checked when the file is read."""

from __future__ import annotations

from pathlib import Path

from aquila.engine.config import TrainConfig
from aquila.engine.config import load_config as load_engine_config
from aquila.monitor.config import MonitorOptions


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """:func:`aquila.engine.config.load_config`, with the ``[monitor]`` section checked too:
    an unknown or invalid monitor key fails now, not mid-run."""
    cfg = load_engine_config(path, overrides)
    MonitorOptions.from_any(cfg.monitor)
    return cfg
