"""Static mixtures vs online mixture policies on the bilingual sample corpus, same token budget.

Each run trains the same small model on the six sample sources (Bibles, People's Daily, reviews,
Python docs and code) for the same number of steps and batch, differing only in how the mixture
is chosen: static natural (by size), static uniform, or an online policy starting from natural.
Every ``--eval-every`` steps it scores a held-out set with equally many sequences per source (the
corpus' held-out split: documents never trained on). Reported per run: final held-out loss per
source and on average, and the first step (interpolated between evaluations) at which the average
reaches the best static mixture's final average of the same seed; the saving is against the step
count of that best static mixture. The LR is constant after warmup so that "steps to a loss" is
not decided by where a decay schedule ends.

DoReMi needs a reference: here the per-source held-out losses of the static uniform run of the same
seed at the end (a same-size reference model trained on the uniform mixture, as in DoReMi); that
run's cost is not charged to it.

    python bench/mixing_experiment.py --json                      # the full experiment
    python bench/mixing_experiment.py --steps 60 --seeds 0 --json # a smoke run
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

# The shared helpers next to this script (also when it is loaded by path, as the tests do).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import first_crossing, heldout_losses, heldout_sequences  # noqa: E402

STATIC = ("natural", "uniform")
ONLINE = ("odm", "ado", "doremi")
SOURCES = ("asv", "kjv", "peoples_daily", "python_code", "python_docs", "reviews")


class HeldoutEval(Callback):
    """Mean held-out loss per source every ``every`` steps (and at step 0)."""

    def __init__(self, seqs: dict[str, torch.Tensor], every: int):
        self.seqs, self.every = seqs, every
        self.curve: list[dict] = []

    def _eval(self, trainer) -> None:
        out = heldout_losses(trainer.model, self.seqs)
        out["avg"] = statistics.fmean(out[n] for n in self.seqs)
        self.curve.append({"step": trainer.state.step, **out})

    def on_start(self, trainer) -> None:
        self._eval(trainer)

    def on_step(self, trainer, metrics) -> None:
        if trainer.state.step % self.every == 0:
            self._eval(trainer)


def run_one(kind: str, seed: int, args, env: dict, reference: dict | None) -> dict:
    from aquila.engine.config import load_config
    from aquila.mixing import MixingCallback, PolicyConfig
    from aquila.train.run import prepare_run

    sets = [
        "model.preset='aquila-test'",
        f"model.vocab_size={env['vocab']}",
        f"model.hidden_size={args.hidden}",
        f"model.n_layers={args.layers}",
        f"model.ffn_size={args.hidden * 8 // 3}",
        f"data.dir='{env['data_dir']}'",
        f"tokenizer='{env['tokenizer']}'",
        f"run_dir='{env['tmp'] / f'{kind}-{seed}'}'",
        f"data.seq_len={args.seq_len}",
        f"data.seed={1000 + seed}",
        f"train.seed={seed}",
        f"train.batch_size={args.batch}",
        f"train.max_steps={args.steps}",
        f"train.log_every={args.steps}",
        "train.checkpoint_every=0",
        f"train.threads={args.threads}",
        f"optim.lr={args.lr}",
        "optim.schedule='constant'",
        f"optim.warmup_steps={args.warmup}",
        "monitor.eval.enabled=false",
    ]
    if kind == "uniform" or (kind in ONLINE and args.start == "uniform"):
        sets.append("data.weights={" + ", ".join(f"{s} = 1.0" for s in SOURCES) + "}")
    elif kind in env["mixtures"]:
        weights = env["mixtures"][kind]
        sets.append("data.weights={" + ", ".join(f"{s} = {w}" for s, w in weights.items()) + "}")
    cfg = load_config(None, sets)
    ev = HeldoutEval(env["heldout"], args.eval_every)
    cbs: list[Callback] = [ev]
    mixer = None
    if kind in ONLINE:
        params = dict(POLICY_PARAMS.get(kind, {}))
        for text in args.param:
            name, _, rest = text.partition(".")
            key, _, value = rest.partition("=")
            if name == kind:
                params[key] = json.loads(value) if value[:1] in "-0123456789tf[{" else value
        if kind == "doremi":
            params["reference"] = reference
        mixer = MixingCallback(
            PolicyConfig.from_dict(
                {
                    "name": kind,
                    "every": args.every,
                    "warmup": args.policy_warmup,
                    "min_weight": args.min_weight,
                    "params": params,
                }
            )
        )
        cbs.append(mixer)
    t0 = time.perf_counter()
    run = prepare_run(cfg, callbacks=cbs, quiet=True, monitor=False)
    run.trainer.fit()
    seconds = time.perf_counter() - t0
    trajectory = [{"step": 0, **run.data.history.segments[0][1]}]
    trajectory += [
        {"step": h["step"], **h["weights"]}
        for h in run.trainer.history
        if h.get("kind") == "auto-mixture" and "weights" in h
    ]
    return {"curve": ev.curve, "weights": trajectory, "seconds": seconds}


# Settings of each policy in the experiment (the rest are the policies' defaults).
POLICY_PARAMS: dict[str, dict] = {"ado": {"count": "total"}, "odm": {}, "doremi": {}}


def summarise(results: dict, seeds: list[int], kinds: list[str]) -> dict:
    table: dict[str, dict] = {}
    for kind in kinds:
        finals, reached, savings = [], [], []
        for seed in seeds:
            runs = results[seed]
            static = [k for k in kinds if k not in ONLINE]
            best = min(static, key=lambda k: runs[k]["curve"][-1]["avg"])
            target = runs[best]["curve"][-1]["avg"]
            best_steps = first_crossing(runs[best]["curve"], target, "step", "avg")
            s = first_crossing(runs[kind]["curve"], target, "step", "avg")
            finals.append(runs[kind]["curve"][-1])
            reached.append(s)
            savings.append(None if s is None else 1.0 - s / best_steps)
        per_source = {
            n: statistics.fmean(f[n] for f in finals) for n in (*SOURCES, "avg") if n in finals[0]
        }
        ok = [x for x in savings if x is not None]
        table[kind] = {
            "final_heldout": per_source,
            "final_avg_by_seed": [f["avg"] for f in finals],
            "steps_to_target_by_seed": reached,
            "saving_by_seed": savings,
            # A run that never reaches the target counts as no saving at all (0), not skipped.
            "mean_saving": statistics.fmean([x if x is not None else 0.0 for x in savings]),
            "reached_in": f"{len(ok)}/{len(seeds)}",
        }
    return table


def plot_weights(results: dict, seed: int, kinds: list[str], path: Path) -> Path:
    online = [k for k in kinds if k in ONLINE]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # a CSV instead: step, policy, source weights
        path = path.with_suffix(".csv")
        with path.open("w") as f:
            f.write("policy,step," + ",".join(SOURCES) + "\n")
            for k in online:
                for row in results[seed][k]["weights"]:
                    f.write(f"{k},{row['step']}," + ",".join(f"{row[s]:.4f}" for s in SOURCES))
                    f.write("\n")
        return path
    fig, axes = plt.subplots(1, len(online) + 1, figsize=(5 * (len(online) + 1), 3.6))
    for ax, k in zip(axes, online):
        rows = results[seed][k]["weights"]
        for s in SOURCES:
            ax.plot([r["step"] for r in rows], [r[s] for r in rows], label=s)
        ax.set_title(f"{k} weights (seed {seed})")
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for k in kinds:
        curve = results[seed][k]["curve"]
        ax.plot([p["step"] for p in curve], [p["avg"] for p in curve], label=k)
    ax.set_ylim(top=min(ax.get_ylim()[1], results[seed]["natural"]["curve"][1]["avg"]))
    ax.set_title("avg held-out loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024, help="model vocab (tokenizer: vocab - 8)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--every", type=int, default=10, help="policy update interval (steps)")
    p.add_argument("--policy-warmup", type=int, default=30)
    p.add_argument("--min-weight", type=float, default=0.02)
    p.add_argument(
        "--start", choices=("natural", "uniform"), default="natural", help="online policies' prior"
    )
    p.add_argument(
        "--param", action="append", default=[], help="POLICY.KEY=VALUE, e.g. ado.gamma2=0.2"
    )
    p.add_argument(
        "--mixture",
        action="append",
        default=[],
        metavar="NAME=SOURCE:W,...",
        help="another static mixture to compare (and to count as a static baseline)",
    )
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--heldout-per-source", type=int, default=48)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--policies", nargs="+", default=list(ONLINE), choices=ONLINE)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results/mixing.json")
    p.add_argument("--plot", default="bench/results/mixing_weights.png")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)

    from rich.progress import Progress

    from aquila.tokenizer import Tokenizer
    from aquila.tokenizer.train import default_tokenizer
    from aquila.train.run import cache_dir, sample_shards

    torch.set_num_threads(args.threads)
    tok_dir = default_tokenizer(cache_dir(), vocab_size=args.vocab - 8)
    tok = Tokenizer.load(tok_dir)
    mixtures = {}
    for text in args.mixture:
        name, _, spec = text.partition("=")
        try:
            pairs = [part.split(":") for part in spec.split(",")]
            mixtures[name] = {src: float(w) for src, w in pairs}
        except ValueError:
            p.error(f"--mixture {text!r}: expected NAME=SOURCE:W,...")
        unknown = set(mixtures[name]) - set(SOURCES)
        if not name or name in (*STATIC, *ONLINE) or unknown:
            p.error(f"--mixture {text!r}: a new name and sources among {', '.join(SOURCES)}")
    kinds = [*STATIC, *mixtures, *args.policies]
    with tempfile.TemporaryDirectory(prefix="aquila-mixing-") as tmp:
        env = {
            "vocab": args.vocab,
            "tokenizer": tok_dir,
            "data_dir": sample_shards(tok, show_progress=False),
            "heldout": heldout_sequences(tok, args.seq_len, args.heldout_per_source),
            "tmp": Path(tmp),
            "mixtures": mixtures,
        }
        results: dict = {}
        t0 = time.perf_counter()
        with Progress(transient=True) as bar:
            task = bar.add_task("runs", total=len(args.seeds) * len(kinds))
            for seed in args.seeds:
                results[seed] = {}
                for kind in kinds:
                    ref = None
                    if kind == "doremi":
                        last = results[seed]["uniform"]["curve"][-1]
                        ref = {s: last[s] for s in SOURCES}
                    results[seed][kind] = run_one(kind, seed, args, env, ref)
                    bar.advance(task)
        total = time.perf_counter() - t0
    table = summarise(results, args.seeds, kinds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot = plot_weights(results, args.seeds[0], kinds, Path(args.plot))
    report = {
        "setup": {k: v for k, v in vars(args).items() if k not in ("json", "out", "plot")},
        "sources": list(SOURCES),
        "table": table,
        "seconds": round(total, 1),
        "plot": str(plot),
        "weights_seed0": {k: results[args.seeds[0]][k]["weights"] for k in args.policies},
        "curves_seed0": {k: results[args.seeds[0]][k]["curve"] for k in kinds},
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for kind, row in table.items():
        per = "  ".join(f"{s}={row['final_heldout'][s]:.3f}" for s in SOURCES)
        print(
            f"{kind:8s} avg={row['final_heldout']['avg']:.4f}  saving={row['mean_saving']:+.1%} "
            f"(reached {row['reached_in']})  {per}",
            file=sys.stderr if args.json else sys.stdout,
        )
    if args.json:
        print(json.dumps({"table": table, "seconds": report["seconds"], "plot": str(plot)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
