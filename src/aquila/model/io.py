"""Model directories on disk: ``model.json`` + the weights (+ tokenizer files).

The weights of a model dir are one of:

* ``model.safetensors`` (one file, what single-process checkpoints and the tools write);
* ``model-0000K-of-0000N.safetensors`` + ``model.safetensors.index.json`` (Hugging Face's sharded
  layout, what ``aquila import`` writes for large models);
* ``dcp/`` (a multi-process checkpoint: each rank's shards as written by
  torch.distributed.checkpoint, model and optimizer, no consolidated copy).

``open_weights`` reads any of them through one interface: whole tensors one group at a time
(export, statistics, a model loaded on one device) or only the box of each tensor that a rank
holds (``read_into`` with sharded parameters), so no tool needs all the weights in memory at once
unless it builds the whole model. An int4 dir (``aquila quantize``) is a ``model.safetensors``
dir whose ``model.json`` also holds a ``quantization`` entry; ``load_model_dir`` reads every kind.

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
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aquila.errors import UserError
from aquila.model.config import ModelConfig

if TYPE_CHECKING:
    from aquila.model.int4 import QuantConfig
    from aquila.model.transformer import AquilaModel
    from aquila.tokenizer import Tokenizer

FORMAT = "aquila"
FORMAT_VERSION = 1
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DCP_DIR = "dcp"
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


def check_output_dir(out: str | Path) -> Path:
    """``out`` if a model dir may be written there (new, empty or an earlier model dir); else a
    one-line error. Commands call it before their work, :func:`atomic_dir` again when writing."""
    out = Path(out)
    if not _replaceable(out):
        raise UserError(f"{out} exists and is not a model dir; choose an empty or new directory")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary dir beside ``out``; on success fsync it and rename it to ``out``.

    An existing ``out`` is replaced only if it is empty or an earlier model dir; on error the
    temporary dir is removed and ``out`` is left as it was.
    """
    out = check_output_dir(out)
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


def check_names(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source
) -> None:
    """Same tensor names and shapes, or a one-line error naming the first that differs."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing:
        raise UserError(f"{source}: missing tensor(s) {missing[:4]} for this model config")
    if extra:
        raise UserError(f"{source}: unexpected tensor(s) {extra[:4]} for this model config")
    for name, want in expected.items():
        if tuple(found[name]) != tuple(want):
            raise UserError(
                f"{source}: tensor {name} has shape {tuple(found[name])}, the config needs "
                f"{tuple(want)}"
            )


def load_state_into(
    model: AquilaModel, state: Mapping[str, torch.Tensor], source: str | Path
) -> AquilaModel:
    """Check ``state`` against ``model`` (built on meta) and assign it; errors name the tensor."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_names(expected, {k: tuple(v.shape) for k, v in state.items()}, source)
    model.load_state_dict(dict(state), assign=True)
    restore_rope(model)
    return model


def restore_rope(model: AquilaModel) -> None:
    """Recompute the rotary tables (non-persistent buffers, still on meta after ``assign``)."""
    model.reset_rope()


def materialize(
    model: torch.nn.Module,
    device: torch.device | str,
    dtype: Callable[[str], torch.dtype] | torch.dtype | None = None,
) -> torch.nn.Module:
    """Give every meta parameter of ``model`` uninitialised storage on ``device`` (of ``dtype``,
    or ``dtype(name)``, or its own); sharded parameters get their local shards only."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None:
            model.to(dtype=dtype)  # free on meta
        return model.to_empty(device=device)
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        mod._parameters[leaf] = torch.nn.Parameter(
            torch.empty(p.shape, dtype=dtype(name), device=device), requires_grad=p.requires_grad
        )
    return model


# ---------------------------------------------------------------------------------------------
# Weight sources: one interface over single-file, sharded and DCP weights


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def nbytes(self, dtype: torch.dtype | None = None) -> int:
        return self.numel * (dtype or self.dtype).itemsize


_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class WeightSource:
    """Named tensors on disk, read whole (a group at a time) or box by box into shards."""

    label: str

    def infos(self) -> dict[str, TensorInfo]:
        raise NotImplementedError

    def read(
        self, names: list[str], dtype: torch.dtype | None = None, device="cpu"
    ) -> dict[str, torch.Tensor]:
        """Whole tensors (cast to ``dtype`` when given), on ``device``."""
        raise NotImplementedError

    def read_into(self, targets: Mapping[str, torch.Tensor]) -> None:
        """Fill each target (plain or DTensor) with its box of the stored tensor; only that box
        is read."""
        raise NotImplementedError


class SafetensorsWeights(WeightSource):
    def __init__(self, files: Mapping[str, Path], label: str):
        self.files = dict(files)  # tensor name -> file
        self.label = label
        self._infos: dict[str, TensorInfo] | None = None

    def _by_file(self, names) -> dict[Path, list[str]]:
        out: dict[Path, list[str]] = {}
        for n in names:
            if n not in self.files:
                raise UserError(f"{self.label}: no tensor {n!r}")
            out.setdefault(self.files[n], []).append(n)
        return out

    @contextlib.contextmanager
    def _open(self, path: Path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                yield f
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"cannot read {path} (corrupt or truncated?): {exc}") from None

    def infos(self) -> dict[str, TensorInfo]:
        if self._infos is None:
            infos: dict[str, TensorInfo] = {}
            for path, names in self._by_file(self.files).items():
                with self._open(path) as f:
                    present = set(f.keys())
                    for n in names:
                        if n not in present:
                            raise UserError(f"{self.label}: {path.name} has no tensor {n!r}")
                        sl = f.get_slice(n)
                        dt = _ST_DTYPES.get(sl.get_dtype())
                        if dt is None:
                            raise UserError(f"{path}: tensor {n} has unsupported dtype")
                        infos[n] = TensorInfo(tuple(sl.get_shape()), dt)
            self._infos = {n: infos[n] for n in self.files}
        return self._infos

    def read(self, names, dtype=None, device="cpu"):
        out = {}
        for path, group in self._by_file(names).items():
            with self._open(path) as f:
                for n in group:
                    t = f.get_tensor(n)
                    out[n] = t.to(device=device, dtype=dtype or t.dtype)
        return {n: out[n] for n in names}

    @torch.no_grad()
    def read_into(self, targets):
        from aquila.model.sharding import local_view

        for path, group in self._by_file(targets).items():
            with self._open(path) as f:
                for n in group:
                    view = local_view(targets[n])
                    if view.local.numel() == 0:
                        continue
                    t = f.get_tensor(n) if view.is_whole else f.get_slice(n)[view.index()]
                    view.local.copy_(t)


class DcpWeights(WeightSource):
    """The model tensors (keys ``model.*``) of a torch.distributed.checkpoint directory. Every
    read is local to the calling process (no collective): DCP reads the saved chunks that
    overlap each target, whichever layout wrote them."""

    PREFIX = "model."

    def __init__(self, path: Path):
        self.path = Path(path)
        self.label = str(self.path)
        self._infos: dict[str, TensorInfo] | None = None

    def infos(self) -> dict[str, TensorInfo]:
        if self._infos is None:
            from torch.distributed.checkpoint import FileSystemReader
            from torch.distributed.checkpoint.metadata import TensorStorageMetadata

            try:
                meta = FileSystemReader(str(self.path)).read_metadata()
            except Exception as exc:  # unpickling a damaged file raises many kinds
                raise UserError(f"cannot read {self.path / '.metadata'}: {exc}") from None
            self._infos = {
                k[len(self.PREFIX) :]: TensorInfo(tuple(md.size), md.properties.dtype)
                for k, md in meta.state_dict_metadata.items()
                if k.startswith(self.PREFIX) and isinstance(md, TensorStorageMetadata)
            }
        return self._infos

    def _load(self, targets: Mapping[str, torch.Tensor]) -> None:
        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            try:
                dcp.load({"model": dict(targets)}, checkpoint_id=str(self.path), no_dist=True)
            except Exception as exc:  # DCP wraps reader errors in CheckpointException
                raise UserError(f"cannot read {self.path}: {str(exc).splitlines()[0]}") from None

    def read(self, names, dtype=None, device="cpu"):
        infos = self.infos()
        missing = [n for n in names if n not in infos]
        if missing:
            raise UserError(f"{self.label}: no tensor(s) {missing[:4]}")
        out = {
            n: torch.empty(infos[n].shape, dtype=dtype or infos[n].dtype, device=device)
            for n in names
        }
        self._load(out)
        return out

    def read_into(self, targets):
        self._load(targets)


def weight_layout(path: str | Path) -> str:
    """ "single", "sharded" or "dcp": which weights the model dir ``path`` holds."""
    path = Path(path)
    if (path / WEIGHTS_FILE).is_file():
        return "single"
    if (path / INDEX_FILE).is_file():
        return "sharded"
    if (path / DCP_DIR / ".metadata").is_file():
        return "dcp"
    raise UserError(
        f"{path} is not a complete model dir: {WEIGHTS_FILE} is missing (nor {INDEX_FILE} or "
        f"{DCP_DIR}/)"
    )


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor -> file name) of a sharded safetensors index."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {index}: {exc}") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "/" not in v and v not in ("", ".", "..")
        for k, v in weight_map.items()
    ):
        raise UserError(f"{index}: weight_map must map tensor names to file names in the dir")
    return weight_map


def safetensors_files(path: Path) -> dict[str, Path]:
    """Tensor name -> file of a single-file or sharded safetensors dir."""
    from safetensors import SafetensorError, safe_open

    if (path / WEIGHTS_FILE).is_file():
        file = path / WEIGHTS_FILE
        try:
            with safe_open(str(file), framework="pt") as f:
                names = list(f.keys())  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"cannot read {file} (corrupt or truncated?): {exc}") from None
        return dict.fromkeys(names, file)
    files = {k: path / v for k, v in read_index(path / INDEX_FILE).items()}
    for file in set(files.values()):
        if not file.is_file():
            raise UserError(f"weight file {file} is missing")
    return files


def open_weights(path: str | Path) -> WeightSource:
    """The weights of model dir ``path``, whichever layout holds them (see the module doc)."""
    path = Path(path)
    layout = weight_layout(path)
    if layout == "dcp":
        return DcpWeights(path / DCP_DIR)
    label = str(path / (WEIGHTS_FILE if layout == "single" else INDEX_FILE))
    return SafetensorsWeights(safetensors_files(path), label)


def weight_files(path: str | Path) -> list[Path]:
    """The files holding a model dir's weights (for sizes on disk)."""
    path = Path(path)
    layout = weight_layout(path)
    if layout == "single":
        return [path / WEIGHTS_FILE]
    if layout == "sharded":
        return sorted(set(safetensors_files(path).values()))
    return sorted(p for p in (path / DCP_DIR).iterdir() if p.is_file())


def weights_bytes(path: str | Path) -> int:
    """Bytes on disk of a model dir's weights; for DCP shards the model tensors' stored bytes
    (the optimizer state beside them in the same files is not the model's)."""
    if weight_layout(path) == "dcp":
        return sum(i.nbytes() for i in DcpWeights(Path(path) / DCP_DIR).infos().values())
    return sum(p.stat().st_size for p in weight_files(path))


@torch.no_grad()
def load_weights_into(model: torch.nn.Module, source: WeightSource) -> None:
    """Fill ``model``'s parameters (materialised, plain or sharded) from ``source``, each rank
    reading only its boxes; errors name the first tensor that does not fit."""
    state = model.state_dict()
    infos = source.infos()
    check_names(
        {k: tuple(v.shape) for k, v in state.items()},
        {k: i.shape for k, i in infos.items()},
        source.label,
    )
    source.read_into(state)


def parse_size(text: str | int) -> int:
    """Bytes from ``5GB``, ``500MB``, ``2GiB`` or a plain number (Hugging Face's units: KB, MB
    and GB are powers of 1000, KiB, MiB and GiB of 1024)."""
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in units:
        raise UserError(f"size {text!r}: expected a number of bytes or e.g. 5GB, 500MB, 2GiB")
    size = int(float(m.group(1)) * units[m.group(2).upper()])
    if size < 1:
        raise UserError(f"size {text!r} must be at least 1 byte")
    return size


def shard_names(n: int) -> list[str]:
    """File names of ``n`` weight shards: one file is ``model.safetensors``, as Hugging Face."""
    if n == 1:
        return [WEIGHTS_FILE]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Consecutive groups of names whose bytes add up to at most ``max_bytes`` (a tensor larger
    than that gets a file of its own)."""
    groups: list[list[str]] = []
    cur: list[str] = []
    used = 0
    for name, nbytes in sizes:
        if cur and used + nbytes > max_bytes:
            groups.append(cur)
            cur, used = [], 0
        cur.append(name)
        used += nbytes
    if cur:
        groups.append(cur)
    return groups


def write_shards(
    directory: Path,
    groups: list[list[str]],
    produce: Callable[[list[str]], dict[str, torch.Tensor]],
    progress: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """Write one safetensors file per group (``produce(group)`` gives its tensors, held only
    while that file is written) and, for more than one, the index; returns a summary."""
    from safetensors.torch import save_file

    files = shard_names(len(groups))
    weight_map: dict[str, str] = {}
    total = params = 0
    for file, group in zip(files, groups):
        tensors = {k: v.contiguous() for k, v in produce(group).items()}
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = file
            total += v.numel() * v.element_size()
            params += v.numel()
        del tensors
        if progress is not None:
            progress(1)
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return {"files": files, "tensors": len(weight_map), "params": params, "bytes": total}


# ---------------------------------------------------------------------------------------------
# Model dirs


def write_model_config(cfg: ModelConfig, directory: Path) -> None:
    """Write ``model.json`` (the shape) into an existing directory."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def write_model_files(
    model: AquilaModel, directory: Path, tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """Write ``model.json`` and ``model.safetensors`` into an existing directory; the weights
    are ``tensors`` when given (an earlier ``export_state_dict``), else the model's own."""
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)
    write_model_config(model.cfg, directory)
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


def _read_meta(path: Path) -> tuple[dict[str, Any], Path]:
    """A model dir's ``model.json``, checked as far as every reader needs, and its path."""
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
    return meta, file


def _model_config(meta: dict[str, Any], file: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(meta["config"])
    except UserError as exc:
        raise UserError(f"{file}: {exc}") from None
    except TypeError as exc:
        raise UserError(f"{file}: bad config: {exc}") from None


def _quant_config(meta: dict[str, Any], file: Path) -> QuantConfig | None:
    from aquila.model.int4 import QuantConfig

    q = meta.get("quantization")
    if q is None:
        return None
    try:
        cfg = QuantConfig.from_dict(q)
        cfg.validate()
    except (TypeError, UserError) as exc:
        raise UserError(f"{file}: bad quantization entry: {exc}") from None
    return cfg


def read_model_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` stored in a model dir's ``model.json``."""
    return _model_config(*_read_meta(Path(path)))


def read_quant_config(path: str | Path) -> QuantConfig | None:
    """The ``quantization`` entry of a model dir's ``model.json`` (its int4 layout), or None for
    full-precision weights: the one test of whether a model dir is quantized."""
    meta, file = _read_meta(Path(path))
    _model_config(meta, file)  # a quantized dir's model section is checked as well
    return _quant_config(meta, file)


def load_model_dir(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> AquilaModel:
    """Load a model dir (any weight layout, see the module doc; int4 included) onto ``device``;
    ``dtype`` casts floating tensors of a full-precision dir (default: as stored). Tensors are
    read one at a time into the model's own storage: the host never holds a second copy."""
    from aquila.model.transformer import AquilaModel

    path = Path(path)
    meta, file = _read_meta(path)
    cfg = _model_config(meta, file)
    qcfg = _quant_config(meta, file)
    if qcfg is not None:
        return _load_int4(path, cfg, qcfg, device)
    source = open_weights(path)
    infos = source.infos()
    model = AquilaModel(cfg, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_names(expected, {k: i.shape for k, i in infos.items()}, source.label)

    def dtype_of(name: str) -> torch.dtype:
        stored = infos[name].dtype
        return dtype if dtype is not None and stored.is_floating_point else stored

    materialize(model, device, dtype_of)
    with torch.no_grad():
        source.read_into(model.state_dict())  # one tensor (or saved chunk) at a time
    model.reset_rope()
    return model.eval()


def _load_int4(
    path: Path, cfg: ModelConfig, qcfg: QuantConfig, device: torch.device | str
) -> AquilaModel:
    """An int4 dir: its QuantLinears (one per quantized Linear, experts split) packed for
    ``device``'s int4 kernels."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from aquila.model.int4_linear import QuantLinear, prepare_int4
    from aquila.model.layers import replace_module
    from aquila.model.moe_split import split_experts
    from aquila.model.transformer import AquilaModel

    weights = path / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {weights}: {exc}") from None
    model = AquilaModel(cfg, device="meta")
    split_experts(model)  # quantized experts are stored one Linear each
    for name in qcfg.modules:
        lin = model.get_submodule(name)
        replace_module(
            model,
            name,
            QuantLinear(lin.in_features, lin.out_features, qcfg.group_size, device="meta"),
        )
    load_state_into(model, state, weights)
    prepare_int4(model)
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
