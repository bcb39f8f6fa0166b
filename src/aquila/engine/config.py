"""Training configuration: typed dataclasses, a TOML file, and dotted ``--set`` overrides."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from aquila.errors import UserError
from aquila.model.config import ModelConfig, get_preset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    """Where batches come from. An empty ``dir`` means the bundled bilingual sample corpus."""

    dir: str = ""
    # Sources to train on (default: every source in ``dir``).
    sources: list[str] = field(default_factory=list)
    # Mixture weights by source; empty means proportional to each source's tokens.
    weights: dict[str, float] = field(default_factory=dict)
    # A mixture file with phases (see `aquila data` docs); overrides ``weights`` when set.
    mixture: str = ""
    seq_len: int = 256
    seed: int = 1234
    # Held-out text for the bits-per-byte report: a directory of .txt/.jsonl files per language
    # ("en/", "zh/", ...); empty means the sample corpus' held-out split.
    heldout: str = ""


@dataclass
class OptimConfig:
    """AdamW with warmup and cosine decay to a floor (Aquila2: 1.5e-4 -> 1.5e-5)."""

    lr: float = 1.5e-4
    min_lr: float = 1.5e-5
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 100
    # "cosine" or "constant" (after warmup).
    schedule: str = "cosine"


@dataclass
class TrainSection:
    max_steps: int = 1000
    # Sequences per optimizer step across all ranks.
    batch_size: int = 32
    # Sequences per forward/backward on one rank; batch_size / (micro_batch * world) steps are
    # accumulated. 0 means no accumulation.
    micro_batch_size: int = 0
    # Batch-size ramp-up (Aquila2 started at 32 sequences and grew in steps of 32): the batch grows
    # from ``ramp_start`` by ``ramp_increment`` every ``ramp_steps`` steps. 0 disables it.
    ramp_start: int = 0
    ramp_increment: int = 0
    ramp_steps: int = 0
    # Stop after this many seconds of training (0: no limit); the run ends with a checkpoint.
    max_seconds: float = 0.0
    device: str = "auto"
    # "auto": bf16 autocast on CUDA, fp32 on CPU. Or "float32" / "bfloat16".
    dtype: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_last: int = 2
    # Also keep every checkpoint whose step is a multiple of this (0: none beyond keep_last).
    keep_every: int = 0
    # Worker threads for the CPU math (0: torch's default).
    threads: int = 0
    # Under FSDP with gradient accumulation: reduce-scatter gradients after every micro-batch
    # (sharded gradient memory) instead of once after the last (less communication).
    fsdp_sync_each_micro_batch: bool = False
    # Layout of a multi-process run: world = replicate x shard x tp. ``tp`` ranks split every
    # block's matmuls (tensor parallel, same batch); ``replicate`` > 1 shards parameters within
    # groups of world / (replicate x tp) ranks and replicates them across groups (HSDP). The
    # remaining factor is FSDP2 sharding. A resume may change both: checkpoints reshard.
    tp: int = 1
    replicate: int = 1
    # Write checkpoints in the background: training stops only to copy the state to host memory
    # (one more copy of weights and optimizer state there), the files are written while it
    # continues. A checkpoint still appears only once complete; the last one is written in full
    # before the run ends.
    async_checkpoint: bool = False
    # Start a new run from these weights: a model dir, or a run dir (its latest checkpoint), e.g.
    # one written by `aquila grow` / `aquila upcycle`. The model section and the tokenizer come
    # from it; optimizer and schedule start fresh at step 0. A resume ignores it.
    init_from: str = ""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: get_preset("aquila-10m"))
    # The preset the model section started from, kept for reference in the saved config.
    preset: str = "aquila-10m"
    tokenizer: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    # The Training State Monitor's detectors, policies and evaluation (see docs/monitor.md);
    # validated by ``aquila.monitor.config.MonitorOptions``.
    monitor: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = {"preset": self.preset, **{k: v for k, v in out["model"].items() if v != {}}}
        out.pop("preset")
        return out

    def save(self, path: Path) -> None:
        path.write_text(tomli_w.dumps(_drop_empty(self.to_dict())))


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "train": TrainSection}
TOP_LEVEL = {"tokenizer", "run_dir"}


def _drop_empty(d: dict[str, Any]) -> dict[str, Any]:
    # TOML has no null; empty strings/lists/dicts simply mean "default" when read back.
    return {
        k: _drop_empty(v) if isinstance(v, dict) and k != "weights" else v
        for k, v in d.items()
        if v is not None
    }


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise UserError(f"config key {key}: expected {tp.__name__}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key}: expected a table, got {value!r}")
        return {k: float(v) for k, v in value.items()} if key.endswith("weights") else value
    return value


def _apply_section(obj: Any, values: dict[str, Any], section: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        if key not in hints:
            raise UserError(
                f"unknown config key {section}.{key}; valid keys in [{section}]: "
                f"{', '.join(sorted(hints))}"
            )
        setattr(obj, key, _coerce(value, hints[key], f"{section}.{key}"))


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig()
    raw = dict(raw)
    model_raw = dict(raw.pop("model", {}))
    preset = model_raw.pop("preset", cfg.preset)
    base = get_preset(preset).to_dict()
    model_hints = typing.get_type_hints(ModelConfig)
    for key, value in model_raw.items():
        if key not in base:
            raise UserError(
                f"unknown config key model.{key}; valid keys in [model]: preset, "
                f"{', '.join(sorted(base))}"
            )
        base[key] = _coerce(value, model_hints[key], f"model.{key}")
    cfg.model = ModelConfig.from_dict(base)
    cfg.preset = preset
    for section, values in raw.items():
        if section in SECTIONS:
            if not isinstance(values, dict):
                raise UserError(f"config section [{section}] must be a table")
            _apply_section(getattr(cfg, section), values, section)
        elif section == "monitor":
            from aquila.monitor.config import MonitorOptions

            if not isinstance(values, dict):
                raise UserError("config section [monitor] must be a table")
            MonitorOptions.from_any(values)  # unknown keys fail now, not mid-run
            cfg.monitor = values
        elif section in TOP_LEVEL:
            setattr(cfg, section, _coerce(values, str, section))
        else:
            raise UserError(
                f"unknown config section {section!r}; valid: model, monitor, "
                f"{', '.join(sorted([*SECTIONS, *TOP_LEVEL]))}"
            )
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value); the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot parse config {p}: {exc}") from None
    for text in overrides or []:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return config_from_dict(raw)
