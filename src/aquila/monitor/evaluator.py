"""Checkpoint evaluation in a separate process, so training never waits for it.

``EvalTrigger.on_checkpoint`` starts ``python -m aquila.monitor.evaluator RUN_DIR CKPT`` and
returns at once; the child loads the checkpoint (a multi-process one from its DCP shards, tensor
by tensor) on the training device, or ``monitor.eval.device``, in the run's dtype, computes
held-out bits-per-byte per source and per language (and any named ``aquila.eval`` tasks) and
writes them to the run database's ``evals`` table. One evaluation runs at a time; when
checkpoints arrive faster, the newest waiting one is evaluated next and older waiting ones are
dropped. A run with nothing to score (no held-out text, no tasks) starts no evaluation at all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aquila.engine.callbacks import Callback
from aquila.monitor.config import EvalOptions

if TYPE_CHECKING:
    from aquila.engine.step import StepMetrics
    from aquila.engine.trainer import Trainer


class EvalTrigger(Callback):
    def __init__(self, opts: EvalOptions | None = None):
        self.opts = opts or EvalOptions()
        self.proc: subprocess.Popen | None = None
        self.waiting: tuple[int, Path] | None = None
        self.count = 0
        self.launched: list[int] = []
        self.run_dir: Path | None = None
        self.idle = False  # nothing to score: never starts a process
        self.device = "cpu"
        self.dtype = "auto"

    def on_start(self, trainer: Trainer) -> None:
        if not trainer.is_main or not self.opts.enabled:
            return
        cfg = trainer.cfg
        self.device = str(trainer.device) if self.opts.device == "auto" else self.opts.device
        self.dtype = cfg.train.dtype
        self.idle = not self.opts.tasks and not has_heldout(cfg)
        if self.idle:
            from aquila.engine.rundb import RunDB

            RunDB(trainer.run_dir).add_event(
                trainer.state.step,
                "eval",
                "checkpoint evaluation is off: nothing to score (set data.heldout to a held-out "
                "text dir, or monitor.eval.tasks)",
            )

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        if not trainer.is_main or not self.opts.enabled or self.idle:
            return
        self.count += 1
        if (self.count - 1) % max(1, self.opts.every):
            return
        self.run_dir = trainer.run_dir
        self.waiting = (trainer.checkpoint_state.step, Path(path))
        self._poll()

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if self.waiting is not None:
            self._poll()

    def on_end(self, trainer: Trainer, reason: str) -> None:
        if not self.opts.wait_on_end:
            return
        while self.proc is not None or self.waiting is not None:
            if self.proc is not None:
                self.proc.wait()
            self._poll()

    def _poll(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = None
        if self.waiting is None or self.run_dir is None:
            return
        step, path = self.waiting
        self.waiting = None
        self.proc = spawn_evaluation(self.run_dir, path, step, self.opts, self.device, self.dtype)
        self.launched.append(step)


def spawn_evaluation(
    run_dir: Path,
    ckpt: Path,
    step: int,
    opts: EvalOptions,
    device: str = "cpu",
    dtype: str = "auto",
) -> subprocess.Popen:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "aquila.monitor.evaluator",
        str(run_dir),
        str(ckpt),
        "--step",
        str(step),
        "--max-bytes",
        str(opts.max_bytes),
        "--threads",
        str(opts.threads),
        "--device",
        device,
        "--dtype",
        dtype,
    ]
    if opts.tasks:
        cmd += ["--tasks", ",".join(opts.tasks), "--task-limit", str(opts.task_limit)]
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads)}
    with open(logs / f"eval-step-{step:08d}.log", "ab") as log:
        # Its own session: a Ctrl-C meant for training does not kill a running evaluation.
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def has_heldout(cfg) -> bool:
    """Whether a run config has held-out text to score (``heldout_sets`` non-empty)."""
    return bool(cfg.data.heldout) or not cfg.data.dir


def heldout_sets(run_dir: Path, max_bytes: int) -> list:
    """The run's held-out text: ``data.heldout`` if set, else the sample corpus' held-out split
    when training on the samples; none for other data without a held-out dir."""
    from aquila.engine.config import load_config
    from aquila.eval.heldout import run_heldout

    cfg = load_config(run_dir / "config.toml")
    return run_heldout(cfg.data.heldout, cfg.data.dir, max_bytes)


def evaluate_checkpoint(
    run_dir: Path,
    ckpt: Path,
    step: int,
    max_bytes: int = 60_000,
    tasks: list[str] | None = None,
    task_limit: int = 50,
    device: str = "cpu",
    dtype: str = "auto",
) -> dict[str, Any]:
    """Evaluate one checkpoint on ``device`` in the run's ``dtype`` (``train.dtype``: "auto"
    is bf16 on CUDA, fp32 on CPU) and write the results into the run database."""
    import torch

    from aquila.engine.config import load_config
    from aquila.engine.device import autocast_dtype
    from aquila.eval.heldout import evaluate_heldout
    from aquila.model.io import load_model_dir
    from aquila.monitor import store
    from aquila.tokenizer import Tokenizer

    sets = heldout_sets(run_dir, max_bytes)
    if not sets and not tasks:
        return {}  # nothing to score: the checkpoint is not even read
    db = store.open_db(run_dir)
    started = time.perf_counter()
    dev = torch.device(device)
    try:
        model = load_model_dir(ckpt, device=dev, dtype=autocast_dtype(dev, dtype))
    except Exception as exc:  # pruned before we got to it, or unreadable
        db.add_event(step, "eval", f"evaluation of {ckpt.name} skipped: {exc}", "warning")
        return {}
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    seq_len = load_config(run_dir / "config.toml").data.seq_len
    out: dict[str, Any] = {}
    if sets:
        res = evaluate_heldout(model, tokenizer, sets, seq_len)
        res["seconds"] = round(time.perf_counter() - started, 2)
        res["checkpoint"] = ckpt.name
        res["device"] = str(dev)
        db.add_eval(step, "heldout-bpb", res)
        out["heldout-bpb"] = res
    if tasks:
        out.update(_run_tasks(run_dir, step, ckpt, model, tokenizer, tasks, task_limit, dev))
    return out


def _run_tasks(
    run_dir: Path, step: int, ckpt: Path, model, tokenizer, specs: list[str], limit: int, dev
) -> dict[str, Any]:
    """``aquila.eval`` tasks on the checkpoint, stored as ``aquila eval RUN`` stores its own."""
    from aquila.eval.lm import ModelLM
    from aquila.eval.results import record_results
    from aquila.eval.runner import evaluate
    from aquila.eval.tasks import parse_tasks

    tasks = parse_tasks(specs, option="monitor.eval.tasks")
    lm = ModelLM(model, tokenizer, 8)
    results = evaluate(lm, tasks, limit=limit, show_progress=False)
    meta = {"checkpoint": ckpt.name, "limit": limit, "num_fewshot": 0, "device": str(dev)}
    record_results(run_dir, step, results, tasks, origin="evaluator", meta=meta)
    return {name: dict(r) for name, r in results.items()}


def check_tasks(specs: list[str], limit: int) -> None:
    """Refuse ``monitor.eval.tasks`` that name no task, collide, or whose files are malformed,
    before a run starts (``aquila.train.run.prepare_run``) rather than at every checkpoint's
    evaluation."""
    from aquila.eval.tasks import parse_tasks

    for task in parse_tasks(specs, option="monitor.eval.tasks"):
        if ":" in task.spec:  # a file: read (and so validate) it now
            task.prepare(limit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aquila.monitor.evaluator")
    p.add_argument("run_dir")
    p.add_argument("checkpoint")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--max-bytes", type=int, default=60_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tasks", default="")
    p.add_argument("--task-limit", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    out = evaluate_checkpoint(
        Path(args.run_dir),
        Path(args.checkpoint),
        args.step,
        args.max_bytes,
        [t for t in args.tasks.split(",") if t],
        args.task_limit,
        args.device,
        args.dtype,
    )
    print(json.dumps({"step": args.step, "tasks": sorted(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
