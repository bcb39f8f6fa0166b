"""Model directories on disk: ``model.json`` + ``model.safetensors`` (+ tokenizer files).

A model dir is written into a temporary sibling, fsynced and renamed into place, so a reader never
sees a half-written one. Run dirs hold model dirs under ``checkpoints/step-NNNNNNNN/``; the
resolvers below turn either kind of path into the model dir (and tokenizer dir) a tool needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from aquila.errors import UserError
from aquila.model.config import ModelConfig

if TYPE_CHECKING:
    from aquila.model.transformer import AquilaModel
    from aquila.tokenizer import Tokenizer

FORMAT = "aquila"
FORMAT_VERSION = 1
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_JSON = "tokenizer.json"
# Files a tokenizer may consist of; copied verbatim between model dirs and Hugging Face dirs.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ---------------------------------------------------------------------------------------------
# Durable writes


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (the latter makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_file_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def _replaceable(out: Path) -> bool:
    # Only an earlier output (or an empty dir) may be replaced: never a directory of other files.
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    return not names or CONFIG_FILE in names or "config.json" in names


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary dir beside ``out``; on success fsync it and rename it to ``out``.

    An existing ``out`` is replaced only if it is empty or an earlier model dir; on error the
    temporary dir is removed and ``out`` is left as it was.
    """
    out = Path(out)
    if not _replaceable(out):
        raise UserError(f"{out} exists and is not a model dir; choose an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.with_name(f".tmp-{out.name}-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        for p in tmp.iterdir():
            if p.is_file():
                fsync_path(p)
        fsync_path(tmp)
        old = out.with_name(f".old-{out.name}-{tag}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_path(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# State dicts


def export_state_dict(model: torch.nn.Module, copy: bool = False) -> dict[str, torch.Tensor]:
    """The model's persistent tensors as contiguous, full, CPU tensors (what safetensors needs);
    with ``copy``, never the parameters' own storage (safe to write while training goes on)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    out = {}
    for name, t in model.state_dict().items():
        if hasattr(t, "full_tensor"):  # a sharded DTensor (FSDP2 / tensor parallel)
            t = t.full_tensor()
        out[name] = t.detach().to("cpu", copy=copy).contiguous()
    return out


def load_state_into(
    model: AquilaModel, state: Mapping[str, torch.Tensor], source: str | Path
) -> AquilaModel:
    """Check ``state`` against ``model`` (built on meta) and assign it; errors name the tensor."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        raise UserError(f"{source}: missing tensor(s) {missing[:4]} for this model config")
    if extra:
        raise UserError(f"{source}: unexpected tensor(s) {extra[:4]} for this model config")
    for name, want in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(want.shape):
            raise UserError(
                f"{source}: tensor {name} has shape {tuple(got.shape)}, the config needs "
                f"{tuple(want.shape)}"
            )
    model.load_state_dict(dict(state), assign=True)
    restore_rope(model)
    return model


def restore_rope(model: AquilaModel) -> None:
    """Recompute the rotary tables (non-persistent buffers, still on meta after ``assign``)."""
    from aquila.model.layers import rope_tables

    cfg = model.cfg
    device = model.embed_tokens.weight.device
    cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_base, cfg.rope_scaling, device)
    model.rope_cos, model.rope_sin = cos, sin


# ---------------------------------------------------------------------------------------------
# Model dirs


def write_model_files(
    model: AquilaModel, directory: Path, tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """Write ``model.json`` and ``model.safetensors`` into an existing directory; the weights
    are ``tensors`` when given (an earlier ``export_state_dict``), else the model's own."""
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if tensors is None:
        tensors = export_state_dict(model)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


def save_model_dir(model: AquilaModel, out: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write a loadable model dir atomically; returns ``out``."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_model_files(model, tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out


def read_model_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` stored in a model dir's ``model.json``."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model dir {path} does not exist")
    file = path / CONFIG_FILE
    if not file.is_file():
        raise UserError(f"{path} is not a model dir: {CONFIG_FILE} is missing")
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f'{file} is not an aquila model config (expected "format": "{FORMAT}")')
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{file} has format_version {version!r}; this version of aquila reads {FORMAT_VERSION}"
        )
    if not isinstance(meta.get("config"), dict):
        raise UserError(f'{file}: "config" must be an object')
    try:
        return ModelConfig.from_dict(meta["config"])
    except UserError as exc:
        raise UserError(f"{file}: {exc}") from None
    except TypeError as exc:
        raise UserError(f"{file}: bad config: {exc}") from None


def load_model_dir(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> AquilaModel:
    """Load a model dir; ``dtype`` casts floating tensors (default: as stored)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from aquila.model.transformer import AquilaModel

    path = Path(path)
    cfg = read_model_config(path)
    if "quantization" in json.loads((path / CONFIG_FILE).read_text()):
        # Int4 dirs hold packed weights: the quantized loader builds QuantLinear layers for them.
        from aquila.quant.model import load_quantized_model_dir

        return load_quantized_model_dir(path, device)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{path} is not a complete model dir: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {weights} (corrupt or truncated?): {exc}") from None
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model = AquilaModel(cfg, device="meta")
    load_state_into(model, state, weights)
    return model.eval()


def step_dirs(run_dir: Path, marker: str = CONFIG_FILE) -> list[tuple[int, Path]]:
    """``(step, dir)`` of a run's ``checkpoints/step-N`` dirs holding ``marker``, by step."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / marker).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_model_dir(path: str | Path) -> Path:
    """A model dir itself, or a run dir's latest ``checkpoints/step-*`` by step number."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist")
    if (p / CONFIG_FILE).is_file():
        return p
    found = step_dirs(p)
    if found:
        return found[-1][1]
    if (p / "checkpoints").is_dir():
        raise UserError(f"run dir {p} has no checkpoints yet (checkpoints/step-* is empty)")
    raise UserError(
        f"{p} is neither a model dir ({CONFIG_FILE}) nor a run dir with checkpoints/step-*"
    )


def resolve_tokenizer_dir(path: str | Path) -> Path:
    """The tokenizer for a model or run dir: the model dir's own, else the run's ``tokenizer/``."""
    p = Path(path)
    if (p / TOKENIZER_JSON).is_file():
        return p
    model_dir = resolve_model_dir(p)
    # A run dir, or a checkpoint dir two levels below its run dir.
    candidates = [model_dir, p / "tokenizer", model_dir.parent.parent / "tokenizer"]
    for c in candidates:
        if (c / TOKENIZER_JSON).is_file():
            return c
    raise UserError(
        f"no tokenizer for {p}: looked for {TOKENIZER_JSON} in "
        + ", ".join(str(c) for c in dict.fromkeys(candidates))
    )


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy whichever tokenizer files ``src`` has into ``dst``; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
