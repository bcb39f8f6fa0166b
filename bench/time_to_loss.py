"""Time to loss: AdamW against Muon (+ AdamW) on the default run's shape and data.

Every run is the default run (`aquila train` with no arguments: aquila-10m, the bundled bilingual
sample corpus with its mixture, sequences of 256, batches of 16, compiled model, warm-up + cosine
decay to a tenth of the peak) shortened to ``--steps`` steps (the warm-up shortened in proportion),
with ``optim.name`` and the peak LR set per arm. All arms read the same data in the same order.

1. Sweep: each optimizer at each peak LR of its grid (``--adamw-lrs``, ``--muon-lrs``), seed 0.
2. Each optimizer at its best peak LR (lowest final held-out loss) once more with seed 1.

Every ``--eval-every`` steps a fixed held-out set (``--heldout-per-source`` evenly spaced windows
from each source of the corpus' held-out split) is scored. For Muon: the steps and training
seconds (evaluation excluded) it needs to reach AdamW's final held-out loss (the mean of AdamW's
seeds), linear between evaluations; and the time per step, two ways: the median step time of the
runs, and an interleaved measurement in one process (optimizer steps of both kinds on the same
model and gradients, alternated, beside the forward and backward), which a loaded machine
disturbs far less than runs minutes apart.

The bar: Muon reaches AdamW's final held-out loss in at most 75% of the steps (mean of 2 seeds)
at no more than 10% extra time per step.

    python bench/time_to_loss.py --json          # the experiment (~25 min on 2 loaded cores)
    python bench/time_to_loss.py --smoke --json  # a tiny model, a few steps (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from aquila.engine.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import first_crossing, heldout_losses, heldout_sequences  # noqa: E402

BAR_STEPS = 0.75
BAR_OVERHEAD = 0.10
DEFAULT_STEPS = 580  # the default run's, and its warm-up
DEFAULT_WARMUP = 40


class Curve(Callback):
    """Held-out loss at step 0, every ``every`` steps and last; training seconds between
    evaluations (the evaluation's own time left out) and each step's duration."""

    def __init__(self, seqs: dict[str, torch.Tensor], every: int):
        self.seqs, self.every = seqs, every
        self.points: list[dict] = []
        self.step_seconds: list[float] = []
        self._train = 0.0
        self._last = 0.0

    @torch.no_grad()
    def _eval(self, trainer) -> None:
        per = heldout_losses(trainer.model, self.seqs)
        self.points.append(
            {
                "step": trainer.state.step,
                "seconds": round(self._train, 3),
                "loss": statistics.fmean(per.values()),
            }
        )

    def on_start(self, trainer) -> None:
        self._eval(trainer)
        self._last = time.perf_counter()

    def on_step(self, trainer, metrics) -> None:
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._train += now - self._last
        step = trainer.state.step
        if step % self.every == 0 or step == trainer.cfg.train.max_steps:
            self._eval(trainer)
        self._last = time.perf_counter()


def default_run_sets(
    args, name: str, lr: float, seed: int, run_dir: Path, extra: bool = True
) -> list[str]:
    from aquila.train.commands import DEFAULT_RUN

    warmup = max(1, round(DEFAULT_WARMUP * args.steps / DEFAULT_STEPS))
    sets = list(DEFAULT_RUN) + [
        f"run_dir='{run_dir}'",
        f"optim.name='{name}'",
        f"optim.lr={lr}",
        f"optim.min_lr={lr / 10}",
        f"optim.warmup_steps={warmup}",
        f"train.max_steps={args.steps}",
        "train.max_seconds=0",  # the same token budget for every arm, however loaded the machine
        "train.checkpoint_every=0",
        f"train.log_every={args.steps}",
        f"train.seed={seed}",
        f"train.threads={args.threads}",
        f"train.compile={str(args.compile).lower()}",
    ]
    if args.smoke:
        sets += [
            "model.preset='aquila-test'",
            "model.vocab_size=1024",
            "data.seq_len=32",
            "train.batch_size=2",
        ]
    return sets + (list(args.sets) if extra else [])


def train(args, env: dict, name: str, lr: float, seed: int) -> dict:
    from aquila.engine.config import load_config
    from aquila.train.run import prepare_run

    run_dir = env["tmp"] / f"{name}-{lr:g}-s{seed}"
    cfg = load_config(None, default_run_sets(args, name, lr, seed, run_dir))
    curve = Curve(env["heldout"], args.eval_every)
    t0 = time.perf_counter()
    run = prepare_run(cfg, callbacks=[curve], quiet=True, monitor=False)
    run.trainer.fit()
    # The first steps carry the compilation: the median is the steady step.
    steady = sorted(curve.step_seconds[min(3, len(curve.step_seconds) - 1) :])
    out = {
        "optimizer": name,
        "lr": lr,
        "seed": seed,
        "steps": run.trainer.state.step,
        "tokens": run.trainer.state.tokens,
        "curve": curve.points,
        "median_step_s": steady[len(steady) // 2],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(
        f"  {name:5s} lr {lr:.1e} seed {seed}: held-out {curve.points[0]['loss']:.3f} -> "
        f"{curve.points[-1]['loss']:.3f}, {out['median_step_s']:.3f} s/step ({out['wall_s']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return out


def interleaved_step_cost(args, rounds: int) -> dict:
    """Seconds per forward+backward and per optimizer step of each kind, on one model with the
    same gradients, the kinds alternated round by round (medians). Always the default run's
    shape and batch (``--set`` overrides do not apply): the cost of the run users get."""
    from aquila.engine.config import load_config
    from aquila.engine.optim import build_optimizer
    from aquila.model.transformer import AquilaModel

    cfg = load_config(None, default_run_sets(args, "adamw", 3e-3, 0, Path("unused"), False))
    torch.manual_seed(0)
    model = AquilaModel(cfg.model)
    opts = {
        n: build_optimizer(model, cfg.optim.__class__(**{**vars(cfg.optim), "name": n}))
        for n in ("adamw", "muon")
    }
    seq, batch = cfg.data.seq_len, cfg.train.batch_size
    x = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1))
    times: dict[str, list[float]] = {"forward_backward": [], "adamw": [], "muon": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        model.token_losses(x[:, :-1], x[:, 1:]).mean().backward()
        times["forward_backward"].append(time.perf_counter() - t0)
        grads = [p.grad.clone() for p in model.parameters()]
        for n, opt in opts.items():
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            t0 = time.perf_counter()
            with torch.no_grad():
                opt.step()
            times[n].append(time.perf_counter() - t0)
            opt.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["forward_backward"] + med["adamw"]
    return {
        "rounds": rounds,
        "median_s": med,
        "overhead": (med["muon"] - med["adamw"]) / base,
        "note": "eager forward+backward; the default run compiles it (~30% faster), which makes "
        "the optimizer's share larger",
    }


def best_of(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["curve"][-1]["loss"])


def run_experiment(args) -> dict:
    from aquila.engine.config import load_config
    from aquila.tokenizer import Tokenizer
    from aquila.tokenizer.train import default_tokenizer
    from aquila.train.run import cache_dir

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cfg = load_config(None, default_run_sets(args, "adamw", 1e-3, 0, Path("unused")))
    # The tokenizer the runs train with (prepare_run's default for this vocabulary).
    tok = Tokenizer.load(default_tokenizer(cache_dir(), vocab_size=cfg.model.vocab_size - 8))
    seq_len = cfg.data.seq_len
    lrs = {"adamw": args.adamw_lrs, "muon": args.muon_lrs}
    with tempfile.TemporaryDirectory(prefix="aquila-ttl-") as tmp:
        env = {
            "tmp": Path(tmp),
            "heldout": heldout_sequences(tok, seq_len, args.heldout_per_source),
        }
        print("sweep (seed 0)", file=sys.stderr, flush=True)
        sweep = {n: [train(args, env, n, lr, 0) for lr in grid] for n, grid in lrs.items()}
        best = {n: best_of(runs) for n, runs in sweep.items()}
        print("best peak LRs, seed 1", file=sys.stderr, flush=True)
        seeds = {n: [best[n], train(args, env, n, best[n]["lr"], 1)] for n in lrs}
    cost = interleaved_step_cost(args, args.cost_rounds)
    report = summarise(args, sweep, seeds, cost)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def summarise(args, sweep: dict, seeds: dict, cost: dict) -> dict:
    adamw, muon = seeds["adamw"], seeds["muon"]
    target = statistics.fmean(r["curve"][-1]["loss"] for r in adamw)
    per_seed = []
    for a, m in zip(adamw, muon):
        a_steps = first_crossing(a["curve"], target, "step", "loss") or a["steps"]
        a_secs = first_crossing(a["curve"], target, "seconds", "loss") or a["curve"][-1]["seconds"]
        m_steps = first_crossing(m["curve"], target, "step", "loss")
        m_secs = first_crossing(m["curve"], target, "seconds", "loss")
        per_seed.append(
            {
                "seed": a["seed"],
                "adamw_final": a["curve"][-1]["loss"],
                "muon_final": m["curve"][-1]["loss"],
                "adamw_steps": a_steps,
                "muon_steps": m_steps,
                "adamw_seconds": a_secs,
                "muon_seconds": m_secs,
                "step_ratio": None if m_steps is None else m_steps / a_steps,
                "seconds_ratio": None if m_secs is None else m_secs / a_secs,
            }
        )
    ratios = [s["step_ratio"] for s in per_seed]
    step_ratio = None if None in ratios else statistics.fmean(ratios)
    runs_overhead = (
        statistics.fmean(r["median_step_s"] for r in muon)
        / statistics.fmean(r["median_step_s"] for r in adamw)
        - 1
    )
    bar = {
        "steps_ratio": step_ratio,
        "steps_at_most_75pct": step_ratio is not None and step_ratio <= BAR_STEPS,
        "overhead_interleaved": cost["overhead"],
        "overhead_runs": runs_overhead,
        "overhead_at_most_10pct": cost["overhead"] <= BAR_OVERHEAD,
    }
    bar["met"] = bar["steps_at_most_75pct"] and bar["overhead_at_most_10pct"]
    return {
        "setup": {k: v for k, v in vars(args).items() if k not in ("json", "out", "plot")},
        "sweep": {
            n: [{"lr": r["lr"], "final": r["curve"][-1]["loss"]} for r in runs]
            for n, runs in sweep.items()
        },
        "best_lr": {n: runs[0]["lr"] for n, runs in seeds.items()},
        "adamw_final_mean": target,
        "muon_final_mean": statistics.fmean(r["curve"][-1]["loss"] for r in muon),
        "per_seed": per_seed,
        "step_cost": cost,
        "bar": bar,
        "runs": {f"{r['optimizer']}-s{r['seed']}": r for n in seeds for r in seeds[n]},
    }


def plot(report: dict, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # a CSV instead: run, step, seconds, held-out loss
        path = path.with_suffix(".csv")
        with path.open("w") as f:
            f.write("run,step,seconds,loss\n")
            for name, r in report["runs"].items():
                for p in r["curve"]:
                    f.write(f"{name},{p['step']},{p['seconds']},{p['loss']:.4f}\n")
        return path
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in report["runs"].values():
        pts = r["curve"][1:]
        color = "C0" if r["optimizer"] == "adamw" else "C3"
        style = "-" if r["seed"] == 0 else "--"
        label = f"{r['optimizer']} lr {r['lr']:g} seed {r['seed']}"
        for ax, x in zip(axes, ("step", "seconds")):
            ax.plot([p[x] for p in pts], [p["loss"] for p in pts], style, color=color, label=label)
    for ax, x in zip(axes, ("steps", "training seconds (loaded machine)")):
        ax.axhline(report["adamw_final_mean"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel(x)
        ax.set_ylabel("held-out loss (nats/token, mean over sources)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    s = report["setup"]
    shape = ", ".join(s.get("sets") or []) or "default run shape"
    fig.suptitle(
        f"AdamW vs Muon, {shape}, {s['steps']} steps (dotted: AdamW's mean final)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="steps per run (default run: 580)")
    p.add_argument("--adamw-lrs", type=_floats, default=[1.5e-3, 3e-3, 6e-3])
    p.add_argument("--muon-lrs", type=_floats, default=[3e-3, 6e-3, 1.2e-2])
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--heldout-per-source", type=int, default=6)
    p.add_argument("--cost-rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="a config override for every run (e.g. a smaller model on a loaded machine)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model, 3 steps per run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default="bench/results/time_to_loss.json")
    p.add_argument("--plot", default="bench/results/time_to_loss.png")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.heldout_per_source, args.cost_rounds = 3, 2, 1, 2
        args.compile = False
        args.adamw_lrs, args.muon_lrs = args.adamw_lrs[:1], args.muon_lrs[:1]
    report = run_experiment(args)
    report["plot"] = str(plot(report, Path(args.plot)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    bar = report["bar"]
    if args.json:
        print(json.dumps({"bar": bar, "best_lr": report["best_lr"]}))
    else:
        for s in report["per_seed"]:
            print(
                f"seed {s['seed']}: AdamW final {s['adamw_final']:.3f}, Muon {s['muon_final']:.3f}; "
                f"Muon reaches AdamW's mean final at {s['muon_steps']} steps / {s['adamw_steps']}"
            )
        print(f"bar: {bar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
