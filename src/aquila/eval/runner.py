"""Load a model (float or int4) with its tokenizer and run a list of tasks with a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from aquila.eval.lm import ModelLM
from aquila.eval.results import Results
from aquila.eval.tasks import RunOptions, Task


@dataclass
class LoadedModel:
    lm: ModelLM
    model_dir: Path
    quantized: bool


def load_lm(
    path: str | Path, batch_size: int = 8, device: str = "cpu", dtype: str = "auto"
) -> LoadedModel:
    """A run dir's latest checkpoint or a model dir (float or quantized, any weight layout:
    a multi-process checkpoint is read from its shards), ready to score on ``device``.

    ``dtype`` "auto" is a run's training dtype (``train.dtype``) on that device: bf16 on CUDA
    and fp32 on CPU unless the run set one."""
    from aquila.engine.device import autocast_dtype, pick_device
    from aquila.errors import UserError
    from aquila.model.io import (
        load_model_dir,
        read_quant_config,
        resolve_model_dir,
        resolve_tokenizer_dir,
    )
    from aquila.tokenizer import Tokenizer

    dev = pick_device(device)
    if dev.type == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available")
    model_dir = resolve_model_dir(path)
    tokenizer = Tokenizer.load(resolve_tokenizer_dir(path))
    model = load_model_dir(
        model_dir, device=dev, dtype=autocast_dtype(dev, _run_dtype(path, dtype))
    )
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"{model_dir}: tokenizer has {tokenizer.vocab_size} tokens, the model only {model.cfg.vocab_size}"
        )
    return LoadedModel(
        ModelLM(model, tokenizer, batch_size), model_dir, read_quant_config(model_dir) is not None
    )


def _run_dtype(path: str | Path, dtype: str) -> str:
    """``dtype``, or for "auto" the training dtype of the run ``path`` belongs to."""
    if dtype != "auto":
        return dtype
    from aquila.engine.config import load_config

    p = Path(path)
    for run_dir in (p, p.parent.parent):  # a run dir, or one of its checkpoint dirs
        if (run_dir / "config.toml").is_file() and (run_dir / "checkpoints").is_dir():
            try:
                return load_config(run_dir / "config.toml").train.dtype
            except Exception:  # an unreadable run config leaves the device's default
                return "auto"
    return "auto"


def prepare_tasks(tasks: list[Task], limit: int | None = None) -> None:
    """Load every task's examples before any model is: a malformed file is refused (one line
    naming the file, row and field) with nothing scored or written."""
    for task in tasks:
        task.prepare(limit)


def evaluate(
    lm: ModelLM,
    tasks: list[Task],
    limit: int | None = None,
    num_fewshot: int = 0,
    show_progress: bool = True,
    unsafe_exec: bool = False,
) -> Results:
    """Run ``tasks``; each result holds the task's metrics, its chance level and seconds taken."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: Results = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=True,
    ) as progress:
        for task in tasks:
            data = task.prepare(limit)
            bar = progress.add_task(task.name, total=len(data))
            opts = RunOptions(
                num_fewshot=num_fewshot,
                advance=lambda n, b=bar: progress.advance(b, n),
                unsafe_exec=unsafe_exec,
            )
            t0 = time.perf_counter()
            metrics = task.run(lm, data, opts)
            if "chance" not in metrics:
                metrics["chance"] = task.chance
            metrics["seconds"] = round(time.perf_counter() - t0, 2)
            results[task.name] = metrics
    return results
