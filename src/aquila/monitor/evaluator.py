"""Checkpoint evaluation in a separate process, so training never waits for it.

``EvalTrigger.on_checkpoint`` starts ``python -m aquila.monitor.evaluator RUN_DIR CKPT`` and
returns at once; the child loads the checkpoint's model dir, computes held-out bits-per-byte per
source and per language (and any named ``aquila.eval`` tasks) and writes them to the run
database's ``evals`` table. One evaluation runs at a time; when checkpoints arrive faster, the
newest waiting one is evaluated next and older waiting ones are dropped.
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
    from aquila.engine.trainer import Trainer


class EvalTrigger(Callback):
    def __init__(self, opts: EvalOptions | None = None):
        self.opts = opts or EvalOptions()
        self.proc: subprocess.Popen | None = None
        self.waiting: tuple[int, Path] | None = None
        self.count = 0
        self.launched: list[int] = []
        self.run_dir: Path | None = None

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        if not trainer.is_main or not self.opts.enabled:
            return
        self.count += 1
        if (self.count - 1) % max(1, self.opts.every):
            return
        self.run_dir = trainer.run_dir
        self.waiting = (trainer.checkpoint_state.step, Path(path))
        self._poll()

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
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
        self.proc = spawn_evaluation(self.run_dir, path, step, self.opts)
        self.launched.append(step)


def spawn_evaluation(run_dir: Path, ckpt: Path, step: int, opts: EvalOptions) -> subprocess.Popen:
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
    ]
    if opts.tasks:
        cmd += ["--tasks", ",".join(opts.tasks), "--task-limit", str(opts.task_limit)]
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads)}
    with open(logs / f"eval-step-{step:08d}.log", "ab") as log:
        # Its own session: a Ctrl-C meant for training does not kill a running evaluation.
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def heldout_sets(run_dir: Path, max_bytes: int) -> list:
    """The run's held-out text: ``data.heldout`` if set, else the sample corpus' held-out split
    when training on the samples; none for other data without a held-out dir."""
    from aquila.engine.config import load_config
    from aquila.engine.report import heldout_from_dir, sample_heldout

    cfg = load_config(run_dir / "config.toml")
    if cfg.data.heldout:
        return heldout_from_dir(Path(cfg.data.heldout), max_bytes)
    if not cfg.data.dir:
        return sample_heldout(max_bytes)
    return []


def evaluate_checkpoint(
    run_dir: Path,
    ckpt: Path,
    step: int,
    max_bytes: int = 60_000,
    tasks: list[str] | None = None,
    task_limit: int = 50,
) -> dict[str, Any]:
    """Evaluate one checkpoint and write the results into the run database."""
    from aquila.engine.config import load_config
    from aquila.engine.report import evaluate_heldout
    from aquila.model.io import load_model_dir
    from aquila.monitor import store
    from aquila.tokenizer import Tokenizer

    db = store.open_db(run_dir)
    started = time.perf_counter()
    try:
        model = load_model_dir(ckpt, device="cpu")
    except Exception as exc:  # pruned before we got to it, or unreadable
        db.add_event(step, "eval", f"evaluation of {ckpt.name} skipped: {exc}", "warning")
        return {}
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    seq_len = load_config(run_dir / "config.toml").data.seq_len
    out: dict[str, Any] = {}
    sets = heldout_sets(run_dir, max_bytes)
    if sets:
        res = evaluate_heldout(model, tokenizer, sets, seq_len)
        res["seconds"] = round(time.perf_counter() - started, 2)
        res["checkpoint"] = ckpt.name
        db.add_eval(step, "heldout-bpb", res)
        out["heldout-bpb"] = res
    for name, metrics in _run_tasks(ckpt, run_dir, tasks or [], task_limit).items():
        db.add_eval(step, name, metrics)
        out[name] = metrics
    return out


def _run_tasks(ckpt: Path, run_dir: Path, names: list[str], limit: int) -> dict[str, Any]:
    if not names:
        return {}
    try:
        from aquila.eval.lm import ModelLM
        from aquila.eval.runner import evaluate
        from aquila.eval.tasks import get_task
    except ImportError:
        return {}
    from aquila.model.io import load_model_dir
    from aquila.tokenizer import Tokenizer

    lm = ModelLM(load_model_dir(ckpt, device="cpu"), Tokenizer.load(run_dir / "tokenizer"), 8)
    results = evaluate(lm, [get_task(n) for n in names], limit=limit, show_progress=False)
    return {name: dict(r) for name, r in results.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aquila.monitor.evaluator")
    p.add_argument("run_dir")
    p.add_argument("checkpoint")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--max-bytes", type=int, default=60_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tasks", default="")
    p.add_argument("--task-limit", type=int, default=50)
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
    )
    print(json.dumps({"step": args.step, "tasks": sorted(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
