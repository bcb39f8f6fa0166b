"""Assemble a training run from a config: run directory, tokenizer, data, model, callbacks."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aquila.data.stream import TrainData, open_train_data
from aquila.engine.callbacks import (
    Callback,
    GracefulInterrupt,
    MetricsLog,
    ProgressReporter,
    TimeLimit,
)
from aquila.engine.checkpoint import latest_checkpoint, list_checkpoints
from aquila.engine.config import CONFIG_FILE, TrainConfig
from aquila.engine.device import pick_device
from aquila.engine.distributed import DistInfo
from aquila.engine.trainer import Trainer
from aquila.errors import UserError
from aquila.tokenizer import Tokenizer
from aquila.train.config import load_config

if TYPE_CHECKING:
    from aquila.engine.distributed import ParallelPlan
    from aquila.mixing.config import PolicyConfig


def cache_dir() -> Path:
    """Where trained default tokenizers and sample shards are kept between runs."""
    root = os.environ.get("AQUILA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aquila"
    )
    return Path(root)


def new_run_dir(base: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"run-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"run-{stamp}-{n}"
    return path


@dataclass
class PreparedRun:
    cfg: TrainConfig
    run_dir: Path
    tokenizer: Tokenizer
    data: TrainData
    trainer: Trainer
    resumed_from: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class InitSource:
    """Where a new run's weights come from (``train.init_from``), resolved."""

    model_dir: Path
    tokenizer_dir: Path | None


# Model keys that fix some tensor's shape: with train.init_from they are the weights' own.
SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "ffn_size",
    "n_experts",
)


def resolve_init_from(cfg: TrainConfig) -> InitSource:
    """Take the model section (and the tokenizer, unless set) from ``cfg.train.init_from``.

    Model keys the config sets away from its preset must agree with the weights when they fix a
    shape (an error names the key); others (max_seq_len, rope_scaling, MoE coefficients in
    ``extra``) override the stored values.
    """
    from aquila.model import io as model_io
    from aquila.model.config import ModelConfig, get_preset

    given = cfg.train.init_from
    try:
        model_dir = model_io.resolve_model_dir(given)
        theirs = model_io.read_model_config(model_dir).to_dict()
    except UserError as exc:
        raise UserError(f"train.init_from: {exc}") from None
    if model_io.read_quant_config(model_dir) is not None:
        raise UserError(
            f"train.init_from: {model_dir} holds int4 weights; start from a full-precision model dir"
        )
    preset = get_preset(cfg.preset).to_dict()
    merged = dict(theirs)
    for key, value in cfg.model.to_dict().items():
        if value == preset[key] or value == theirs[key]:
            continue  # not set by the config, or set to the weights' own value
        if key in SHAPE_KEYS:
            raise UserError(
                f"train.init_from: model.{key}={value} but {model_dir} has {key}={theirs[key]}; "
                f"drop the model.{key} setting (the model section comes from the weights)"
            )
        merged[key] = {**theirs[key], **value} if key == "extra" else value
    cfg.model = ModelConfig.from_dict(merged)
    try:
        tok_dir: Path | None = model_io.resolve_tokenizer_dir(given)
    except UserError:
        tok_dir = None
    if not cfg.tokenizer and tok_dir is not None:
        cfg.tokenizer = str(tok_dir)
    return InitSource(model_dir.resolve(), tok_dir)


def _check_init_tokenizer(init: InitSource, tokenizer: Tokenizer, cfg: TrainConfig) -> None:
    if init.tokenizer_dir is not None:
        theirs = Tokenizer.load(init.tokenizer_dir)
        if theirs.hash != tokenizer.hash:
            raise UserError(
                f"train.init_from: the run's tokenizer ({cfg.tokenizer}) is not the one of "
                f"{init.model_dir} ({init.tokenizer_dir}); leave `tokenizer` unset to use the "
                "model's own"
            )
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise UserError(
            f"train.init_from: {init.model_dir} has vocab_size {cfg.model.vocab_size}, smaller "
            f"than the tokenizer's {tokenizer.vocab_size} ({cfg.tokenizer})"
        )


def _run_tokenizer(cfg: TrainConfig, run_dir: Path) -> tuple[Tokenizer, bool]:
    """The run's tokenizer, and whether it still has to be copied into the run dir."""
    run_tok = run_dir / "tokenizer"
    if (run_tok / "tokenizer.json").is_file():
        return Tokenizer.load(run_tok), False
    if cfg.tokenizer:
        src = Path(cfg.tokenizer)
    elif not cfg.data.dir:
        from aquila.tokenizer.train import default_tokenizer

        src = default_tokenizer(cache_dir(), vocab_size=cfg.model.vocab_size - 8)
    else:
        raise UserError("tokenizer is required when data.dir is set: --set tokenizer=DIR")
    return Tokenizer.load(src), True


def check_checkpoint_model(path: Path, cfg: TrainConfig) -> None:
    """A resume's model section must be the checkpoint's own (every key, not just shapes), and
    its ``train.max_steps`` at least the checkpoint's step."""
    from aquila.checks import refuse
    from aquila.model.io import read_model_config

    step = int(path.name.split("-")[-1])
    if cfg.train.max_steps < step:
        raise refuse(
            "train.max_steps",
            cfg.train.max_steps,
            f"must be >= {step}, the step of {path.name} this run resumes from",
        )

    saved = read_model_config(path).to_dict()
    want = cfg.model.to_dict()
    diff = [f"{k}={v} (config says {want.get(k)})" for k, v in saved.items() if want.get(k) != v]
    if diff:
        raise UserError(
            f"checkpoint {path} is for another model shape: {', '.join(diff)}; a resume keeps "
            "the run's model section"
        )


def check_device(name: str) -> None:
    """``train.device`` names a device this machine has."""
    from aquila.checks import refuse

    device = pick_device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is not None and device.index >= count or count == 0:
            raise refuse("train.device", name, f"this machine has {count} CUDA device(s)")


def check_eval_tasks(cfg: TrainConfig) -> None:
    """``monitor.eval.tasks``: their files are read (and so validated) before the run directory
    is touched, not at the first checkpoint's evaluation."""
    from aquila.monitor.config import MonitorOptions

    opts = MonitorOptions.from_any(cfg.monitor).eval
    if opts.enabled and opts.tasks:
        from aquila.monitor.evaluator import check_tasks

        check_tasks(opts.tasks, opts.task_limit)


def check_heldout(path: str) -> None:
    """``data.heldout``: a directory of ``<lang>/`` sub-directories holding documents, found
    now rather than when the run has trained."""
    from aquila.checks import refuse
    from aquila.data.readers import iter_documents

    allowed = "must be a directory of <lang>/ sub-directories of .txt/.jsonl files"
    root = Path(path)
    if not root.is_dir():
        raise refuse("data.heldout", path, allowed + " (no such directory)")
    subs = sorted(p for p in root.iterdir() if p.is_dir())
    if not subs:
        raise refuse("data.heldout", path, allowed + " (it has no sub-directory)")
    for sub in subs:
        if next(iter_documents(sub), None) is None:
            raise refuse("data.heldout", path, allowed + f" ({sub.name}/ holds no document)")


def sample_shards(tokenizer: Tokenizer, show_progress: bool = True) -> Path:
    """Tokenize the bundled sample corpus' train split once per tokenizer (cached)."""
    from aquila.data.samples import CORPUS_VERSION, load_sample_corpus
    from aquila.data.shards import tokenize_source

    out = cache_dir() / f"shards-{CORPUS_VERSION}-{tokenizer.hash}"
    if (out / "COMPLETE").is_file():
        return out
    raw = cache_dir() / f"samples-{CORPUS_VERSION}" / "train"
    raw.mkdir(parents=True, exist_ok=True)
    for source in load_sample_corpus("train"):
        path = raw / f"{source.name}.jsonl"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as f:
                for i, text in enumerate(source.documents):
                    f.write(
                        json.dumps({"id": f"{source.name}-{i}", "text": text}, ensure_ascii=False)
                        + "\n"
                    )
            os.replace(tmp, path)
        tokenize_source(
            source.name,
            [path],
            tokenizer,
            out,
            lang=source.lang,
            kind=source.kind,
            show_progress=show_progress,
        )
    (out / "COMPLETE").write_text("ok\n")
    return out


def parallel_plan(cfg: TrainConfig, dist: DistInfo) -> ParallelPlan:
    """The run's layout from ``train.tp`` / ``train.replicate``; sets ``dist.tp``. One process
    ignores both, so a run saved with a layout resumes on a single process as it is."""
    from aquila.engine.distributed import ParallelPlan

    t = cfg.train
    if t.tp < 1 or t.replicate < 1:
        raise UserError(f"train.tp ({t.tp}) and train.replicate ({t.replicate}) must be >= 1")
    if dist.world <= 1:
        return ParallelPlan(1)
    if dist.world % (t.tp * t.replicate):
        raise UserError(
            f"train.tp {t.tp} x train.replicate {t.replicate} does not divide the {dist.world} "
            f"processes: --set train.tp=N train.replicate=M with N x M dividing {dist.world}"
        )
    dist.tp = t.tp
    return ParallelPlan(dist.world, t.tp, t.replicate)


def prepare_run(
    cfg: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overrides: list[str] | None = None,
    callbacks: list[Callback] | None = None,
    dist: DistInfo | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    monitor: bool = True,
) -> PreparedRun:
    if dist is None:
        from aquila.engine.distributed import init_distributed

        dist = init_distributed()  # torchrun's RANK/WORLD_SIZE, or one process
    from aquila.engine.lock import RunOwner, acquire_run_lock, refuse_if_running

    # 1. The config, checked completely (keys, relations, world, checkpoint, files it names)
    #    before anything in the run directory changes.
    resumed_from = None
    init: InitSource | None = None
    if resume:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"--resume {run_dir}: not a run directory (no {CONFIG_FILE})")
        refuse_if_running(run_dir)
        cfg = load_config(run_dir / CONFIG_FILE, overrides)
        resumed_from = latest_checkpoint(run_dir)
        if resumed_from is None:
            raise UserError(
                f"--resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'}"
            )
        from aquila.engine.rundb import check_run_db

        check_run_db(run_dir)
    else:
        cfg = cfg or load_config(None, overrides)
        run_dir = Path(cfg.run_dir) if cfg.run_dir else new_run_dir()
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"run_dir {run_dir} exists and is not a directory")
        refuse_if_running(run_dir)
        if latest_checkpoint(run_dir) is not None:
            raise UserError(
                f"run directory {run_dir} already has checkpoints: continue it with "
                f"`aquila train --resume {run_dir}` or choose another run_dir"
            )
        if cfg.train.init_from:
            init = resolve_init_from(cfg)
            # The saved config names the exact weights (a run dir resolves to one step dir).
            cfg.train.init_from = str(init.model_dir)
    cfg.run_dir = str(run_dir)
    cfg.validate()
    plan = parallel_plan(cfg, dist)
    cfg.train.check_world(dist.dp_world)
    check_device(cfg.train.device)
    if resumed_from is not None:
        check_checkpoint_model(resumed_from, cfg)
    if cfg.data.heldout:
        check_heldout(cfg.data.heldout)
    check_eval_tasks(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if dist.world > 1 and dist.rank != 0:
        from aquila.engine.distributed import barrier

        barrier()  # rank 0 writes any cached tokenizer and sample shards first
    tokenizer, copy_tokenizer_in = _run_tokenizer(cfg, run_dir)
    if init is not None:
        _check_init_tokenizer(init, tokenizer, cfg)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise UserError(
            f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}: --set model.vocab_size={tokenizer.vocab_size}"
        )
    data_dir = cfg.data.dir or sample_shards(tokenizer, show_progress=not quiet)
    if dist.world > 1 and dist.rank == 0:
        from aquila.engine.distributed import barrier

        barrier()
    data = open_train_data(
        data_dir,
        cfg.data.sources,
        cfg.data.seq_len,
        cfg.data.seed,
        cfg.data.weights,
        tokenizer.hash,
        cfg.model.vocab_size,
        cfg.data.mixture,
    )
    policy = None
    if data.plan is not None and not any(_is_mixer(cb) for cb in callbacks or []):
        from aquila.mixing.config import policy_config

        policy = policy_config(data.plan, cfg.data.mixture)

    # 2. Take the run directory: its lock (rank 0, for the whole job), then clear what an
    #    interrupted save or prune left. The config is written when training starts.
    started = time.time()  # commands for a running training queued before this are stale
    lock = acquire_run_lock(run_dir, dist)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if dist.rank == 0:
            from aquila.engine.checkpoint import remove_stale_temps

            remove_stale_temps(run_dir)
            if copy_tokenizer_in:
                tokenizer.save(run_dir / "tokenizer")
        if resume:
            latest = latest_checkpoint(run_dir)
            if latest != resumed_from and latest is not None:
                check_checkpoint_model(latest, cfg)  # written while this run waited
                resumed_from = latest
        prepared = _assemble(
            cfg,
            run_dir,
            tokenizer,
            data,
            plan,
            dist,
            init,
            resumed_from,
            policy,
            callbacks,
            progress,
            quiet,
            monitor,
            started,
        )
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    prepared.trainer.callbacks.append(RunOwner(lock, lambda: cfg.save(run_dir / CONFIG_FILE)))
    return prepared


def _assemble(
    cfg: TrainConfig,
    run_dir: Path,
    tokenizer: Tokenizer,
    data: TrainData,
    plan: ParallelPlan,
    dist: DistInfo,
    init: InitSource | None,
    resumed_from: Path | None,
    policy: PolicyConfig | None,
    callbacks: list[Callback] | None,
    progress: bool | None,
    quiet: bool,
    monitor: bool,
    started: float,
) -> PreparedRun:
    """The model, its callbacks and the trainer, resumed or initialised."""
    device = pick_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    from aquila.engine.build import build_model

    # Meta, layout, then each rank's shards: from init_from's weights, the seed, or (resume)
    # left for the checkpoint to fill.
    model = build_model(
        cfg,
        plan,
        device,
        init_from=init.model_dir if init is not None else None,
        initialise=resumed_from is None,
    )
    from aquila.engine.memory import MemoryReport

    # First: its on_start measures memory right after setup, before any callback allocates.
    cbs: list[Callback] = [
        MemoryReport(device, run_dir),
        MetricsLog(run_dir / "metrics.jsonl"),
        GracefulInterrupt(),
    ]
    if cfg.train.max_seconds:
        cbs.append(TimeLimit(cfg.train.max_seconds))
    from aquila.engine.control import ControlCallback

    cbs.append(ControlCallback(run_dir, since=started, has_policy=policy is not None))
    if not quiet:
        cbs.append(ProgressReporter(cfg.train.max_steps, use_bar=progress))
    if monitor:
        from aquila.monitor import monitor_callbacks

        # The monitor's writer runs first so the caller's callbacks see the stored metrics.
        cbs.extend(monitor_callbacks(cfg.monitor))
    if policy is not None:
        from aquila.mixing.callback import MixingCallback

        # After ControlCallback: a manual mixture command pauses the policy at the same boundary.
        cbs.append(MixingCallback(policy))
    cbs.extend(callbacks or [])
    trainer = Trainer(cfg, model, data, run_dir, cbs, device=device, dist=dist)
    trainer.register_state("data", data)
    extra: dict[str, Any] = {}
    if resumed_from is not None:
        try:
            trainer.resume_from(resumed_from)
        except UserError as exc:
            earlier = [p for _, p in list_checkpoints(run_dir) if p != resumed_from]
            if not earlier:
                raise
            raise UserError(
                f"{exc}; to resume from {earlier[-1].name} instead, move {resumed_from} aside"
            ) from None
    elif init is not None:
        extra["init_from"] = str(init.model_dir)
        if dist.rank == 0:
            from aquila.engine.rundb import RunDB

            RunDB(run_dir).add_event(
                0,
                "init-from",
                f"weights from {init.model_dir}",
                model_dir=str(init.model_dir),
                tokenizer=str(init.tokenizer_dir or cfg.tokenizer),
            )
    return PreparedRun(cfg, run_dir, tokenizer, data, trainer, resumed_from, extra)


def _is_mixer(cb: Callback) -> bool:
    from aquila.mixing.callback import MixingCallback

    return isinstance(cb, MixingCallback)


def print_line(text: str = "", json_mode: bool = False) -> None:
    # With --json, stdout carries only the final object; human-readable lines go to stderr.
    print(text, file=sys.stderr if json_mode else sys.stdout, flush=True)
