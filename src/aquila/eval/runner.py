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


def load_lm(path: str | Path, batch_size: int = 8, device: str = "cpu") -> LoadedModel:
    """A run dir's latest checkpoint or a model dir (float or quantized), ready to score."""
    from aquila.model.io import resolve_model_dir, resolve_tokenizer_dir
    from aquila.quant.model import load_any_model, read_quant_config
    from aquila.tokenizer import Tokenizer

    model_dir = resolve_model_dir(path)
    tokenizer = Tokenizer.load(resolve_tokenizer_dir(path))
    model = load_any_model(model_dir, device=device)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        from aquila.errors import UserError

        raise UserError(
            f"{model_dir}: tokenizer has {tokenizer.vocab_size} tokens, the model only {model.cfg.vocab_size}"
        )
    return LoadedModel(
        ModelLM(model, tokenizer, batch_size), model_dir, read_quant_config(model_dir) is not None
    )


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
            data = task.load(limit)
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
