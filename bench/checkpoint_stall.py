"""How long a checkpoint stops training: synchronous vs ``train.async_checkpoint``.

Trains the same run twice in one process (a preset on the sample corpus, fp32), once with
synchronous checkpoints and once with background ones, and times every ``Trainer.save`` call:
what the training loop waits for. The final checkpoint of a run is written in full either way and
is not counted. Reports numbers; asserts nothing.

    python bench/checkpoint_stall.py --preset aquila-50m --steps 24 --every 6 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def run_once(args, run_dir: Path, background: bool) -> dict:
    from aquila.engine.config import load_config
    from aquila.train.run import prepare_run

    cfg = load_config(
        None,
        [
            f"model.preset='{args.preset}'",
            f"run_dir='{run_dir}'",
            f"data.seq_len={args.seq_len}",
            f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}",
            f"train.checkpoint_every={args.every}",
            "train.keep_last=2",
            f"train.log_every={args.steps}",
            f"train.threads={args.threads}",
            f"train.async_checkpoint={str(background).lower()}",
            "monitor.eval.enabled=false",
        ],
    )
    run = prepare_run(cfg, quiet=True, monitor=False)
    trainer = run.trainer
    stalls: list[float] = []
    save = trainer.save

    def timed(wait: bool = False):
        t0 = time.perf_counter()
        out = save(wait=wait)
        if not wait:  # the run's last checkpoint is written in full either way
            stalls.append(time.perf_counter() - t0)
        return out

    trainer.save = timed
    t0 = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - t0
    ckpt = max((run_dir / "checkpoints").glob("step-*"))
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    return {
        "saves": len(stalls),
        "stall_s_mean": statistics.fmean(stalls) if stalls else 0.0,
        "stall_s_max": max(stalls, default=0.0),
        "fit_s": total,
        "checkpoint_mb": size / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="aquila-50m")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--every", type=int, default=6, help="checkpoint interval (steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    out: dict = {"setup": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, background in (("sync", False), ("async", True)):
            out[name] = run_once(args, Path(tmp) / name, background)
            r = out[name]
            print(
                f"{name:5s}: {r['saves']} saves, stall mean {r['stall_s_mean']:.3f} s, "
                f"max {r['stall_s_max']:.3f} s; run {r['fit_s']:.1f} s; "
                f"checkpoint {r['checkpoint_mb']:.0f} MiB"
            )
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
