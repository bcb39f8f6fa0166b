"""Hugging Face interop: export to and import from ``LlamaForCausalLM`` checkpoints.

The Aquila2 decoder is the Llama architecture, so the parameter names already match Hugging Face's
(``model.`` prefix added, ``lm_head.weight`` as is) and the conversion is a rename plus a config
translation. ``transformers`` is not needed: configs are plain JSON and weights are safetensors.
Mixture-of-experts models go through ``aquila.model.hf_mixtral`` (Mixtral layout).

Both directions stream: export reads the source (one file, sharded, or a multi-process
checkpoint's DCP shards) one output shard at a time and writes Hugging Face's sharded layout
(``model-0000K-of-0000N.safetensors`` + ``model.safetensors.index.json``, 5 GB per file by
default); import reads a sharded dir the same way and writes a native dir in the same layout. The
host holds about one output shard at a time, whatever the model's size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from aquila.errors import UserError
from aquila.model.hf_llama import (
    DEFAULT_MAX_SHARD_SIZE,
    DTYPES,
    LLAMA_ARCHS,
    LLAMA_TYPES,
    build_native,
    config_from_hf_llama,
    hf_llama_config,
    llama_outputs,
    llama_recipes,
)
from aquila.model.io import (
    INDEX_FILE,
    WEIGHTS_FILE,
    TensorInfo,
    WeightSource,
    atomic_dir,
    check_names,
    copy_tokenizer_files,
    open_weights,
    parse_size,
    plan_shards,
    read_index,
    read_model_config,
    read_quant_config,
    resolve_model_dir,
    resolve_tokenizer_dir,
    safetensors_files,
    write_model_config,
    write_shards,
)
from aquila.model.transformer import AquilaModel

# ---------------------------------------------------------------------------------------------
# Mixture of experts: delegated to the Mixtral converter


def _mixtral():
    try:
        from aquila.model import hf_mixtral
    except ModuleNotFoundError as exc:
        if exc.name != "aquila.model.hf_mixtral":
            raise
        raise UserError(
            "mixture-of-experts models convert through aquila.model.hf_mixtral, which this "
            "installation lacks"
        ) from None
    return hf_mixtral


def _is_mixtral(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return str(config.get("model_type", "")).lower() == "mixtral" or any(
        "mixtral" in str(a).lower() for a in archs
    )


# ---------------------------------------------------------------------------------------------
# Directories


def _check_distinct(src: Path, out: Path) -> None:
    src, dst = src.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise UserError(f"--out {out} would overwrite the source {src}; choose another directory")


def _token_ids(tokenizer_dir: Path | None) -> dict[str, int | None]:
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None}
    if tokenizer_dir is None:
        return ids
    from aquila.tokenizer import Tokenizer

    try:
        tok = Tokenizer.load(tokenizer_dir)
    except UserError:  # a foreign tokenizer without Aquila's specials: ids stay unknown
        return ids
    # A document starts after </s>, so that is the BOS transformers' generate should use.
    return {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id}


# Every training document follows this token, and `aquila generate` puts it before the prompt:
# the exported tokenizer adds it too, so transformers' default `tok(prompt)` gives the same ids.
DOC_START = "</s>"


def write_hf_tokenizer(tok_dir: Path, out: Path) -> list[str]:
    """Copy the tokenizer files of ``tok_dir`` into ``out``, set to add ``</s>`` first.

    Both ways transformers builds a fast tokenizer are set: ``tokenizer.json``'s post-processor
    (used as is by transformers 4) and ``bos_token`` / ``add_bos_token`` in
    ``tokenizer_config.json`` (from which transformers 5 rebuilds the post-processor). A foreign
    tokenizer (no Aquila specials) is copied unchanged.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.processors import TemplateProcessing

    copied = copy_tokenizer_files(tok_dir, out)
    if "tokenizer.json" not in copied:
        return copied
    hf = HFTokenizer.from_file(str(out / "tokenizer.json"))
    start = hf.token_to_id(DOC_START)
    if start is None:
        return copied
    hf.post_processor = TemplateProcessing(
        single=f"{DOC_START}:0 $A:0",
        pair=f"{DOC_START}:0 $A:0 {DOC_START}:1 $B:1",
        special_tokens=[(DOC_START, start)],
    )
    hf.save(str(out / "tokenizer.json"))
    for name, changes in (
        ("tokenizer_config.json", {"bos_token": DOC_START, "add_bos_token": True}),
        ("special_tokens_map.json", {"bos_token": DOC_START}),
    ):
        path = out / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**data, **changes}, indent=2) + "\n")
        if name not in copied:
            copied.append(name)
    return copied


def hf_start_token(src: Path) -> tuple[str | None, str]:
    """The token a Hugging Face tokenizer puts before every text by default, and where that
    was read: ``add_bos_token`` + ``bos_token`` in ``tokenizer_config.json`` (Llama 2, Mixtral),
    else the leading special token of ``tokenizer.json``'s template post-processor (Llama 3)."""
    config_file, tok_file = src / "tokenizer_config.json", src / "tokenizer.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if config.get("add_bos_token") is True and config.get("bos_token"):
        bos = config["bos_token"]
        return (bos.get("content") if isinstance(bos, dict) else str(bos)), config_file.name
    if tok_file.is_file():
        post = json.loads(tok_file.read_text()).get("post_processor") or {}
        for proc in post.get("processors", [post]):
            single = proc.get("single") if proc.get("type") == "TemplateProcessing" else None
            if single and "SpecialToken" in single[0]:
                return single[0]["SpecialToken"]["id"], f"{tok_file.name} post_processor"
    if config.get("add_bos_token") is False:
        return None, f"{config_file.name} (add_bos_token false)"
    return None, "no tokenizer setting adds one"


def _shard_bytes(max_shard_size: str | int) -> int:
    try:
        return parse_size(max_shard_size)
    except UserError as exc:
        raise UserError(f"--max-shard-size: {exc}") from None


def export_hf(
    src: str | Path,
    out: str | Path,
    dtype: str = "float32",
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Export a model or run dir to a Hugging Face dir loadable by ``from_pretrained``.

    The weights are read one output shard at a time (``max_shard_size`` bytes per file; one file
    is ``model.safetensors``, several get ``model.safetensors.index.json``), from any weight
    layout of the source, a multi-process checkpoint's DCP shards included. ``progress(done,
    total)`` is called after each file."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    limit = _shard_bytes(max_shard_size)
    model_dir = resolve_model_dir(src)
    _check_distinct(Path(src), Path(out))
    _check_distinct(model_dir, Path(out))
    cfg = read_model_config(model_dir)
    if read_quant_config(model_dir) is not None:
        raise UserError(f"{model_dir} holds int4 weights; export the full-precision model dir")
    source = open_weights(model_dir)
    infos = source.infos()
    expected = {k: tuple(v.shape) for k, v in AquilaModel(cfg, device="meta").state_dict().items()}
    check_names(expected, {k: i.shape for k, i in infos.items()}, source.label)
    try:
        tok_dir: Path | None = resolve_tokenizer_dir(src)
    except UserError:
        tok_dir = None
    if cfg.n_experts > 0:
        mixtral = _mixtral()
        config = mixtral.hf_mixtral_config(cfg)

        def outputs(name: str, t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
            return mixtral.mixtral_outputs(name, t, cfg.n_experts)
    else:
        config, outputs = hf_llama_config(cfg), llama_outputs
    out_dtype = DTYPES[dtype]
    groups = plan_shards([(n, infos[n].nbytes(out_dtype)) for n in expected], limit)

    def produce(names: list[str]) -> dict[str, torch.Tensor]:
        tensors = source.read(names, dtype=out_dtype)  # this file's tensors, nothing more
        shard: dict[str, torch.Tensor] = {}
        for n in names:
            shard.update(outputs(n, tensors.pop(n)))
        return shard

    ids = _token_ids(tok_dir)
    # Explicit nulls: transformers' defaults (bos 1, eos 2) would otherwise be silently wrong.
    config.update(ids)
    config["torch_dtype"] = dtype
    generation = {**ids, "pad_token_id": ids["eos_token_id"]}
    out = Path(out)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], len(groups))

    with atomic_dir(out) as tmp:
        written = write_shards(tmp, groups, produce, advance)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        copied = write_hf_tokenizer(tok_dir, tmp) if tok_dir else []
    return {
        "source": str(model_dir),
        "out": str(out),
        "format": "hf",
        "architecture": config["architectures"][0],
        "dtype": dtype,
        "tensors": written["tensors"],
        "params": written["params"],
        "bytes": sum((out / f).stat().st_size for f in written["files"]),
        "files": written["files"],
        "tokenizer_files": copied,
    }


def read_hf_config(src: Path) -> dict[str, Any]:
    file = src / "config.json"
    if not file.is_file():
        raise UserError(f"{src} is not a Hugging Face model dir: config.json is missing")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{file}: expected a JSON object")
    return config


class TorchBinWeights(WeightSource):
    """``pytorch_model.bin`` files (one or sharded), each mapped from disk when read, one file
    at a time."""

    def __init__(self, files: Mapping[str, Path], label: str):
        self.files = dict(files)
        self.label = label
        self._cache: tuple[Path, dict[str, torch.Tensor]] | None = None
        self._infos: dict[str, TensorInfo] | None = None

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        if self._cache is not None and self._cache[0] == path:
            return self._cache[1]
        self._cache = None
        if not path.is_file():
            raise UserError(f"weight file {path} is missing")
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle raises several unrelated types
            raise UserError(f"cannot read {path} (corrupt or truncated?): {exc}") from None
        if not isinstance(state, dict):
            raise UserError(f"{path} does not hold a state dict")
        self._cache = (path, state)
        return state

    def infos(self) -> dict[str, TensorInfo]:
        if self._infos is None:
            infos: dict[str, TensorInfo] = {}
            for path in dict.fromkeys(self.files.values()):
                state = self._load(path)
                for name, file in self.files.items():
                    if file != path:
                        continue
                    t = state.get(name)
                    if not isinstance(t, torch.Tensor):
                        raise UserError(f"{self.label}: {path.name} has no tensor {name!r}")
                    infos[name] = TensorInfo(tuple(t.shape), t.dtype)
            self._infos = {n: infos[n] for n in self.files}
        return self._infos

    def read(self, names, dtype=None, device="cpu"):
        out = {}
        for name in sorted(names, key=lambda n: str(self.files[n])):
            t = self._load(self.files[name])[name]
            out[name] = t.to(device=device, dtype=dtype or t.dtype, copy=True)
        return {n: out[n] for n in names}


def hf_weights(src: Path) -> WeightSource:
    """Weights of a Hugging Face dir: safetensors (single or sharded) or ``pytorch_model.bin``
    (single or sharded), read lazily."""
    if (src / WEIGHTS_FILE).is_file() or (src / INDEX_FILE).is_file():
        label = str(src / (WEIGHTS_FILE if (src / WEIGHTS_FILE).is_file() else INDEX_FILE))
        from aquila.model.io import SafetensorsWeights

        return SafetensorsWeights(safetensors_files(src), label)
    index = src / "pytorch_model.bin.index.json"
    if index.is_file():
        files = {k: src / v for k, v in read_index(index).items()}
        return TorchBinWeights(files, str(index))
    if (src / "pytorch_model.bin").is_file():
        path = src / "pytorch_model.bin"
        names = [k for k, v in TorchBinWeights({}, str(path))._load(path).items()]
        return TorchBinWeights(dict.fromkeys(names, path), str(path))
    raise UserError(
        f"{src} has no weights: expected model.safetensors, a sharded "
        "model.safetensors.index.json, or pytorch_model.bin"
    )


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """All weights of a Hugging Face dir in memory (small models; import streams instead)."""
    source = hf_weights(src)
    return source.read(list(source.infos()))


def import_hf(
    src: str | Path,
    out: str | Path,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Convert a Hugging Face Llama/Aquila/Mixtral dir into a native model dir, one output
    shard at a time (``max_shard_size`` bytes per file, tensors in their stored dtype)."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src} does not exist or is not a directory")
    _check_distinct(src, Path(out))
    limit = _shard_bytes(max_shard_size)
    config = read_hf_config(src)
    source = str(src / "config.json")
    if _is_mixtral(config):
        mixtral = _mixtral()
        cfg = mixtral.config_from_hf_mixtral(config, source)
        weights = hf_weights(src)
        recipes = mixtral.mixtral_recipes(cfg, weights.infos(), source)
    else:
        archs = set(config.get("architectures") or [])
        mtype = str(config.get("model_type", "")).lower()
        if not (archs & LLAMA_ARCHS or mtype in LLAMA_TYPES):
            raise UserError(
                f"{source}: unsupported architectures {sorted(archs)} / model_type {mtype!r}; "
                "supported: LlamaForCausalLM, AquilaForCausalLM, MixtralForCausalLM"
            )
        # Translate the config first: an unsupported key fails before reading gigabytes.
        cfg = config_from_hf_llama(config, source)
        weights = hf_weights(src)
        recipes = llama_recipes(config, weights.infos(), source)
    # The token the checkpoint's documents start with becomes aquila's start-of-document token
    # (what generate and eval put before a prompt); aquila's own is </s>, the default.
    start, start_from = hf_start_token(src)
    if start is not None and start != DOC_START:
        cfg = cfg.replace(extra={**cfg.extra, "doc_start_token": start})
    expected = {k: tuple(v.shape) for k, v in AquilaModel(cfg, device="meta").state_dict().items()}
    check_names(expected, {k: r.shape for k, r in recipes.items()}, "the checkpoint weights")
    sizes = [(n, TensorInfo(recipes[n].shape, recipes[n].dtype).nbytes()) for n in expected]
    groups = plan_shards(sizes, limit)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], len(groups))

    out = Path(out)
    with atomic_dir(out) as tmp:
        write_model_config(cfg, tmp)
        written = write_shards(
            tmp, groups, lambda names: build_native(recipes, names, weights.read), advance
        )
        copied = copy_tokenizer_files(src, tmp)
    return {
        "source": str(src),
        "out": str(out),
        "config": cfg.to_dict(),
        "params": written["params"],
        "files": written["files"],
        "tokenizer_files": copied,
        "doc_start": {"token": start or DOC_START, "from": start_from},
    }
