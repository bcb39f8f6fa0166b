"""Training configuration: typed dataclasses, a TOML file, and dotted ``--set`` overrides."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from aquila.checks import Rule, check_fields, coerce, integer, number, one_of, refuse, rule, weights
from aquila.errors import UserError
from aquila.model.config import ModelConfig, get_preset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _names(value: Any) -> bool:
    return all(isinstance(s, str) and s for s in value)


@dataclass
class DataConfig:
    """Where batches come from. An empty ``dir`` means the bundled bilingual sample corpus."""

    dir: str = ""
    # Sources to train on (default: every source in ``dir``).
    sources: list[str] = rule([], Rule(_names, "must be a list of source names"))
    # Mixture weights by source; empty means proportional to each source's tokens.
    weights: dict[str, float] = rule({}, weights())
    # A mixture file with phases (see `aquila data` docs); overrides ``weights`` when set.
    mixture: str = ""
    seq_len: int = rule(256, integer(at_least=1))
    seed: int = rule(1234, integer(at_least=0))
    # Held-out text for the bits-per-byte report: a directory of .txt/.jsonl files per language
    # ("en/", "zh/", ...); empty means the sample corpus' held-out split.
    heldout: str = ""

    def validate(self, section: str = "data") -> None:
        check_fields(self, section)


@dataclass
class OptimConfig:
    """AdamW (or Muon on the hidden matrices) with warmup and cosine decay to a floor
    (Aquila2: AdamW, 1.5e-4 -> 1.5e-5)."""

    # "adamw": AdamW on every parameter. "muon": Muon (orthogonalised momentum) on the blocks'
    # attention and MLP matrices (each expert's on its own), AdamW on embeddings, output head,
    # norms and routers; one ``lr`` and schedule serve both (see ``muon_adjust_lr``).
    name: str = rule("adamw", one_of("adamw", "muon"))
    lr: float = rule(1.5e-4, number(above=0))
    # The floor of the cosine decay; at most ``lr``.
    min_lr: float = rule(1.5e-5, number(at_least=0))
    beta1: float = rule(0.9, number(at_least=0, below=1))
    beta2: float = rule(0.95, number(at_least=0, below=1))
    eps: float = rule(1e-8, number(above=0))
    weight_decay: float = rule(0.1, number(at_least=0))
    # Clip the global gradient norm to this; 0 turns clipping off (the norm is still logged).
    grad_clip: float = rule(1.0, number(at_least=0))
    warmup_steps: int = rule(100, integer(at_least=0))
    # "cosine" or "constant" (after warmup).
    schedule: str = rule("cosine", one_of("cosine", "constant"))
    # Muon's momentum (Nesterov) and Newton-Schulz iterations.
    muon_momentum: float = rule(0.95, number(at_least=0, below=1))
    muon_ns_steps: int = rule(5, integer(at_least=1, at_most=99))
    # How a matrix's step size follows its shape A x B: "match_rms_adamw" (Moonlight:
    # lr * 0.2 * sqrt(max(A, B)), an update of AdamW's typical RMS, so AdamW's lr and weight decay
    # serve the matrices too) or "original" (lr * sqrt(max(1, A / B)); wants a Muon-sized lr,
    # ~0.02, which then also drives the AdamW parameters).
    muon_adjust_lr: str = rule("match_rms_adamw", one_of("match_rms_adamw", "original"))
    # The Newton-Schulz arithmetic: "bfloat16" (torch's; fast) or "float32" (about 2x the cost
    # on CPU; multi-process layouts then agree with one process to float rounding, where
    # bfloat16 turns the reductions' last-bit differences into ~1e-4 weight differences).
    muon_ns_dtype: str = rule("bfloat16", one_of("bfloat16", "float32"))

    def validate(self, section: str = "optim") -> None:
        check_fields(self, section)
        if self.min_lr > self.lr:
            raise refuse(f"{section}.min_lr", self.min_lr, f"must be <= {section}.lr ({self.lr})")


@dataclass
class TrainSection:
    max_steps: int = rule(1000, integer(at_least=1))
    # Sequences per optimizer step across all ranks.
    batch_size: int = rule(32, integer(at_least=1))
    # Sequences per forward/backward on one rank; batch_size / (micro_batch * world) steps are
    # accumulated. 0 means no accumulation.
    micro_batch_size: int = rule(0, integer(at_least=0))
    # Batch-size ramp-up (Aquila2 started at 32 sequences and grew in steps of 32): the batch grows
    # from ``ramp_start`` by ``ramp_increment`` every ``ramp_steps`` steps. 0 disables it.
    ramp_start: int = rule(0, integer(at_least=0))
    ramp_increment: int = rule(0, integer(at_least=0))
    ramp_steps: int = rule(0, integer(at_least=0))
    # Stop after this many seconds of training (0: no limit); the run ends with a checkpoint.
    max_seconds: float = rule(0.0, number(at_least=0))
    # "auto" (CUDA when available), "cpu", "cuda", "cuda:N", ...
    device: str = rule("auto", Rule(lambda v: _is_device(v), "must be 'auto' or a torch device"))
    # "auto": bf16 autocast on CUDA, fp32 on CPU. Or "float32" / "bfloat16".
    dtype: str = rule("auto", one_of("auto", "float32", "fp32", "bfloat16", "bf16"))
    compile: bool = False
    # When torch.compile fails (no C++ toolchain, an unsupported op): train eagerly, saying so,
    # instead of stopping the run with the compiler's error (exit code 8).
    compile_fallback: bool = False
    activation_checkpointing: bool = False
    # With activation_checkpointing: "full" recomputes each block; "selective" keeps the matmul
    # and attention outputs and recomputes only the elementwise work.
    ac_policy: str = rule("full", one_of("full", "selective"))
    # The fused attention kernel SDPA may use; "auto": PyTorch's choice (flash, cudnn: CUDA only).
    sdpa_backend: str = rule("auto", one_of("auto", "flash", "cudnn", "efficient", "math"))
    # Float8 (tensorwise) linear layers in the blocks through torchao (CUDA, `aquila[gpu]`).
    fp8: bool = False
    # The output head's cross-entropy: "chunked" computes the logits a chunk of tokens at a time
    # and again in the backward pass (never the whole tokens x vocab matrix); "full" holds them
    # all; "liger" is Liger Kernel's fused kernel (CUDA, optional dependency `aquila[gpu]`).
    loss: str = rule("chunked", one_of("chunked", "full", "liger"))
    # Tokens per chunk of the chunked loss (0: as many as fit 64 MiB of fp32 logits).
    loss_chunk_tokens: int = rule(0, integer(at_least=0))
    seed: int = rule(0, integer(at_least=0))
    log_every: int = rule(10, integer(at_least=1))
    # A checkpoint every this many steps (0: only at the end of the run).
    checkpoint_every: int = rule(200, integer(at_least=0))
    # Checkpoints kept (the newest); the latest complete one is never removed.
    keep_last: int = rule(2, integer(at_least=1))
    # Also keep every checkpoint whose step is a multiple of this (0: none beyond keep_last).
    keep_every: int = rule(0, integer(at_least=0))
    # When a checkpoint cannot be written (disk full, a writer error): "stop" the run (exit code
    # 4) or "continue" training and try again at the next checkpoint. Either way nothing partial
    # is left and the previous checkpoint stays the latest.
    on_save_error: str = rule("stop", one_of("stop", "continue"))
    # Worker threads for the CPU math (0: torch's default).
    threads: int = rule(0, integer(at_least=0))
    # Under FSDP with gradient accumulation: reduce-scatter gradients after every micro-batch
    # (sharded gradient memory) instead of once after the last (less communication).
    fsdp_sync_each_micro_batch: bool = False
    # Layout of a multi-process run: world = replicate x shard x tp. ``tp`` ranks split every
    # block's matmuls (tensor parallel, same batch); ``replicate`` > 1 shards parameters within
    # groups of world / (replicate x tp) ranks and replicates them across groups (HSDP). The
    # remaining factor is FSDP2 sharding. A resume may change both: checkpoints reshard.
    tp: int = rule(1, integer(at_least=1))
    replicate: int = rule(1, integer(at_least=1))
    # Write checkpoints in the background: training stops only to copy the state to host memory
    # (one more copy of weights and optimizer state there), the files are written while it
    # continues. A checkpoint still appears only once complete; the last one is written in full
    # before the run ends.
    async_checkpoint: bool = False
    # Start a new run from these weights: a model dir, or a run dir (its latest checkpoint), e.g.
    # one written by `aquila grow` / `aquila upcycle`. The model section and the tokenizer come
    # from it; optimizer and schedule start fresh at step 0. A resume ignores it.
    init_from: str = ""

    def validate(self, section: str = "train") -> None:
        check_fields(self, section)
        if self.micro_batch_size > self.batch_size:
            raise refuse(
                f"{section}.micro_batch_size",
                self.micro_batch_size,
                f"must be <= {section}.batch_size ({self.batch_size}); 0: no accumulation",
            )
        ramp = (self.ramp_start, self.ramp_increment, self.ramp_steps)
        if any(ramp) and not all(ramp):
            raise refuse(
                f"{section}.ramp_start/ramp_increment/ramp_steps",
                list(ramp),
                "a batch ramp needs all three > 0 (all 0: no ramp)",
            )
        if self.ramp_start > self.batch_size:
            raise refuse(
                f"{section}.ramp_start",
                self.ramp_start,
                f"must be <= {section}.batch_size ({self.batch_size})",
            )

    def check_world(self, dp_world: int, section: str = "train") -> None:
        """Relations with the number of data-parallel replicas (known when the run starts)."""
        if dp_world <= 1:
            return
        for key in ("batch_size", "ramp_start", "ramp_increment"):
            value = getattr(self, key)
            if value % dp_world:
                raise refuse(
                    f"{section}.{key}",
                    value,
                    f"must be a multiple of the {dp_world} data-parallel replicas "
                    f"(processes / train.tp)",
                )
        local = self.batch_size // dp_world
        if self.micro_batch_size > local:
            raise refuse(
                f"{section}.micro_batch_size",
                self.micro_batch_size,
                f"must be <= the per-replica batch {local} (train.batch_size / {dp_world})",
            )


def _is_device(name: Any) -> bool:
    if name == "auto":
        return True
    import torch

    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


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

    def validate_sections(self) -> None:
        """Every key of every section against its rule, and the relations inside a section."""
        self.model.validate()
        self.data.validate()
        self.optim.validate()
        self.train.validate()

    def validate(self) -> None:
        """Everything a run's config can be checked for without its files: the sections and
        the relations between them."""
        self.validate_sections()
        if self.data.seq_len > self.model.max_seq_len:
            raise refuse(
                "data.seq_len",
                self.data.seq_len,
                f"must be <= model.max_seq_len ({self.model.max_seq_len})",
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = {"preset": self.preset, **{k: v for k, v in out["model"].items() if v != {}}}
        out.pop("preset")
        return out

    def save(self, path: Path) -> None:
        """Write the config atomically: a reader (or a kill) never meets half a file."""
        from aquila.model.io import save_file_atomic

        save_file_atomic(path, tomli_w.dumps(_drop_empty(self.to_dict())).encode("utf-8"))


# The resolved config inside a run directory.
CONFIG_FILE = "config.toml"
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
    value = coerce(value, tp, key)
    if typing.get_origin(tp) is dict and key.endswith("weights"):
        try:
            return {k: float(v) for k, v in value.items()}
        except (TypeError, ValueError):
            raise refuse(key, value, "expected a table of source = number") from None
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
    if not isinstance(raw.get("model", {}), dict):
        raise UserError("config section [model] must be a table")
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
            if not isinstance(values, dict):
                raise UserError("config section [monitor] must be a table")
            # The monitor's own keys are checked by the monitor, when a run is assembled and
            # before its directory is touched (the engine knows nothing above it).
            cfg.monitor = values
        elif section in TOP_LEVEL:
            setattr(cfg, section, _coerce(values, str, section))
        else:
            raise UserError(
                f"unknown config section {section!r}; valid: model, monitor, "
                f"{', '.join(sorted([*SECTIONS, *TOP_LEVEL]))}"
            )
    cfg.validate_sections()
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
