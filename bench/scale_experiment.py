"""EfficientScale on the sample corpus: grow a small model, train it on, then upcycle it to an MoE.

Phase 1 (Scale-Up). A small dense model S is trained for ``--s-steps``. It is grown to the large
shape L with each of ``--methods`` (fpi, aki, aki-pro), and every grown L plus an L from scratch
trains ``--l-steps`` on the same data in the same order (same data seed, batch and sequence
length), each with warm-up + cosine decay over its steps; only the peak LR differs when
``--grown-lr`` is set (the docs advise a lower peak for grown models, whose fresh Adam moments meet
weights that are already trained). The from-scratch L uses ``--scratch-lr``, the best peak of a
small sweep for it, so the baseline is not held back by an LR chosen for another model.

Every ``--eval-every`` steps a held-out set (equally many sequences per source from the corpus'
held-out split, never trained on) is scored. For each grown arm: the tokens it needs to reach the
from-scratch L's final held-out loss (linear between evaluations), the saving
1 - tokens_grown / tokens_scratch, and the same counting S's training in L-equivalent tokens
(S tokens x S FLOPs/token / L FLOPs/token).

Phase 2 (Scale-Out). The grown L with the lowest final held-out loss is upcycled to an MoE
(``--experts``, ``--top-k``) and trained ``--moe-steps``; at equal training FLOPs (MoE FLOPs per
token count the top-k active experts) the same L continues dense for proportionally more steps,
and an MoE of the same shape trains from scratch with the same FLOPs. Phase 2 reads the corpus in
another order (``--data-seed`` + 1) than phase 1, the same for all its arms, and all use warm-up +
cosine with the peak ``--moe-lr`` (default ``--grown-lr`` / 3, AquilaMoE's step per stage;
``--scratch-lr`` for the MoE from scratch). Each ``--top-k`` value gets its own upcycled MoE and
dense arm.

The bar: a grown L reaches the from-scratch L's final held-out loss with at least 30% fewer
tokens, and the upcycled MoE ends below the continued dense L at equal FLOPs.

    python bench/scale_experiment.py --json          # the full experiment (~9 min, 2 cores)
    python bench/scale_experiment.py --smoke --json  # tiny shapes, a few steps (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aquila.engine.callbacks import Callback

# The shared helpers next to this script (also when it is loaded by path, as the tests do).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import first_crossing, heldout_losses, heldout_sequences  # noqa: E402

METHODS = ("fpi", "aki", "aki-pro")
# The from-scratch L's best peak LR of 1.5e-3, 3e-3, 6e-3, 1e-2 and 2e-2 (held-out 5.01, 4.93,
# 4.88, 4.78, 5.10 after 200 steps, default shapes): the baseline gets its own best LR.
SCRATCH_LR = 1e-2
BAR_SAVING = 0.30


class HeldoutEval(Callback):
    """Mean held-out loss over sources (equal weight) at step 0, every ``every`` steps and last."""

    def __init__(self, seqs: dict[str, torch.Tensor], every: int):
        self.seqs, self.every = seqs, every
        self.curve: list[dict] = []

    @torch.no_grad()
    def _eval(self, trainer) -> None:
        per = heldout_losses(trainer.model, self.seqs)
        self.curve.append(
            {
                "step": trainer.state.step,
                "tokens": trainer.state.tokens,
                "loss": statistics.fmean(per.values()),
            }
        )

    def on_start(self, trainer) -> None:
        self._eval(trainer)

    def on_step(self, trainer, metrics) -> None:
        step = trainer.state.step
        if step % self.every == 0 or step == trainer.cfg.train.max_steps:
            self._eval(trainer)


def ffn_for(hidden: int) -> int:
    # SwiGLU's 8/3 x hidden, rounded up to a multiple of 32 (Llama's habit).
    return -(-hidden * 8 // 3 // 32) * 32


def shape(text: str, vocab: int, seq_len: int):
    """``hidden,layers,heads,kv_heads`` -> a dense ModelConfig."""
    from aquila.model.config import get_preset

    hidden, layers, heads, kv = (int(x) for x in text.split(","))
    return get_preset(
        "aquila-test",
        vocab_size=vocab,
        hidden_size=hidden,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv,
        ffn_size=ffn_for(hidden),
        max_seq_len=seq_len,
    )


class Env:
    def __init__(self, args, tok_dir: Path, data_dir: Path, heldout: dict, tmp: Path):
        self.args, self.tok_dir, self.data_dir, self.heldout, self.tmp = (
            args,
            tok_dir,
            data_dir,
            heldout,
            tmp,
        )

    def train(
        self,
        name: str,
        steps: int,
        lr: float,
        data_seed: int,
        model=None,
        init_from: Path | None = None,
    ) -> dict:
        """One run with ``prepare_run``: a model config (from scratch) or a dir (init_from)."""
        from aquila.engine.config import load_config
        from aquila.train.run import prepare_run

        a = self.args
        sets = [
            "model.preset='aquila-test'",
            f"data.dir='{self.data_dir}'",
            f"tokenizer='{self.tok_dir}'",
            f"run_dir='{self.tmp / name}'",
            f"data.seq_len={a.seq_len}",
            f"data.seed={data_seed}",
            f"train.seed={a.seed}",
            f"train.batch_size={a.batch}",
            f"train.max_steps={steps}",
            f"train.log_every={steps}",
            "train.checkpoint_every=0",
            f"train.threads={a.threads}",
            f"optim.lr={lr}",
            f"optim.min_lr={lr * a.min_lr_ratio}",
            f"optim.warmup_steps={min(a.warmup, max(1, steps // 4))}",
            "optim.schedule='cosine'",
            "monitor.eval.enabled=false",
        ]
        if init_from is not None:
            sets.append(f"train.init_from='{init_from}'")
        else:
            sets += [
                f"model.{k}={json.dumps(v)}" for k, v in model.to_dict().items() if k != "extra"
            ]
            if model.extra:
                sets.append(
                    "model.extra={" + ", ".join(f"{k} = {v}" for k, v in model.extra.items()) + "}"
                )
        cfg = load_config(None, sets)
        ev = HeldoutEval(self.heldout, a.eval_every)
        t0 = time.perf_counter()
        run = prepare_run(cfg, callbacks=[ev], quiet=True, monitor=False)
        run.trainer.fit()
        seconds = time.perf_counter() - t0
        from aquila.model.transformer import flops_per_token

        fpt = flops_per_token(run.cfg.model, a.seq_len)
        print(
            f"  {name:16s} {steps:4d} steps  lr {lr:.1e}  held-out {ev.curve[0]['loss']:.3f} -> "
            f"{ev.curve[-1]['loss']:.3f}  ({seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        return {
            "run_dir": str(run.run_dir),
            "steps": steps,
            "lr": lr,
            "flops_per_token": fpt,
            "params": run.trainer.model.num_params(),
            "curve": ev.curve,
            "seconds": round(seconds, 1),
        }


def loss_at_flops(curve: list[dict], fpt: int, offset: float, flops: float) -> float | None:
    """Held-out loss of a run at ``flops`` cumulative FLOPs (linear between evaluations)."""
    xs = [offset + p["tokens"] * fpt for p in curve]
    if flops < xs[0] or flops > xs[-1] * (1 + 1e-9):
        return None
    return float(np.interp(flops, xs, [p["loss"] for p in curve]))


def grow_dirs(env: Env, small_run: str, large_cfg, methods: list[str]) -> dict[str, Path]:
    from aquila.model.io import load_model_dir, resolve_model_dir, save_model_dir
    from aquila.scale import grow
    from aquila.tokenizer import Tokenizer

    small = load_model_dir(resolve_model_dir(small_run))
    tok = Tokenizer.load(env.tok_dir)
    out = {}
    for method in methods:
        # FPI adds layers as identities so the function is kept (docs/scale.md's advice).
        grown = grow(small, large_cfg, method=method, identity_new_layers=method == "fpi", seed=0)
        out[method] = save_model_dir(grown, env.tmp / f"grown-{method}", tok)
    return out


def upcycle_dir(env: Env, dense_run: str, top_k: int) -> Path:
    from aquila.model.io import load_model_dir, resolve_model_dir, save_model_dir
    from aquila.scale import upcycle
    from aquila.tokenizer import Tokenizer

    dense = load_model_dir(resolve_model_dir(dense_run))
    moe = upcycle(dense, n_experts=env.args.experts, top_k=top_k, seed=0)
    return save_model_dir(moe, env.tmp / f"upcycled-top{top_k}", Tokenizer.load(env.tok_dir))


def run_experiment(args) -> dict:
    from aquila.model.transformer import flops_per_token
    from aquila.tokenizer import Tokenizer
    from aquila.tokenizer.train import default_tokenizer
    from aquila.train.run import cache_dir, sample_shards

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    tok_dir = default_tokenizer(cache_dir(), vocab_size=args.vocab - 8)
    tok = Tokenizer.load(tok_dir)
    small_cfg = shape(args.small, args.vocab, args.seq_len)
    large_cfg = shape(args.large, args.vocab, args.seq_len)
    moe_cfgs = {k: large_cfg.replace(n_experts=args.experts, top_k=k) for k in args.top_k}
    f_s, f_l = (flops_per_token(c, args.seq_len) for c in (small_cfg, large_cfg))
    # Active parameters only: top-k experts per token (checked against the dense FFN below).
    f_moe = {k: flops_per_token(c, args.seq_len) for k, c in moe_cfgs.items()}
    grown_lr = args.grown_lr or args.lr
    scratch_lr = args.scratch_lr or args.lr
    # AquilaMoE lowered the peak LR about 3x per stage: S -> grown L -> MoE.
    moe_lr = args.moe_lr or grown_lr / 3
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="aquila-scale-") as tmp:
        env = Env(
            args,
            tok_dir,
            sample_shards(tok, show_progress=False),
            heldout_sequences(tok, args.seq_len, args.heldout_per_source),
            Path(tmp),
        )
        print("phase 1: scale-up", file=sys.stderr, flush=True)
        runs["small"] = env.train("small", args.s_steps, args.lr, args.data_seed, model=small_cfg)
        grown = grow_dirs(env, runs["small"]["run_dir"], large_cfg, args.methods)
        runs["scratch"] = env.train(
            "scratch", args.l_steps, scratch_lr, args.data_seed, model=large_cfg
        )
        for method, path in grown.items():
            runs[method] = env.train(method, args.l_steps, grown_lr, args.data_seed, init_from=path)
        best = min(args.methods, key=lambda m: runs[m]["curve"][-1]["loss"])

        print(f"phase 2: scale-out of {best}", file=sys.stderr, flush=True)
        seed2 = args.data_seed + 1
        dense_dir = Path(runs[best]["run_dir"])
        for k in args.top_k:
            moe_dir = upcycle_dir(env, runs[best]["run_dir"], k)
            # Equal FLOPs: the dense L takes as many more steps as the MoE costs more per token.
            dense_steps = round(args.moe_steps * f_moe[k] / f_l)
            runs[f"moe-upcycled-top{k}"] = env.train(
                f"moe-upcycled-top{k}", args.moe_steps, moe_lr, seed2, init_from=moe_dir
            )
            runs[f"dense-continued-top{k}"] = env.train(
                f"dense-continued-top{k}", dense_steps, moe_lr, seed2, init_from=dense_dir
            )
        k0 = args.top_k[0]
        runs["moe-scratch"] = env.train(
            "moe-scratch", args.moe_steps, scratch_lr, seed2, model=moe_cfgs[k0]
        )
    for r in runs.values():
        r.pop("run_dir")
    report = summarise(runs, args, best, f_s, f_l, f_moe)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def summarise(runs: dict, args, best: str, f_s: int, f_l: int, f_moe: dict[int, int]) -> dict:
    s_tokens = runs["small"]["curve"][-1]["tokens"]
    s_flops = s_tokens * f_s
    l_flops = runs[best]["curve"][-1]["tokens"] * f_l
    # Where each run's curve starts on the cumulative-FLOPs axis: the training it inherits.
    offsets = {"small": 0.0, "scratch": 0.0, "moe-scratch": 0.0}
    offsets.update({m: s_flops for m in args.methods})
    for name, r in runs.items():
        phase2 = name.startswith(("moe-upcycled", "dense-continued"))
        r["flops_offset"] = s_flops + l_flops if phase2 else offsets[name]
    scratch = runs["scratch"]
    target = scratch["curve"][-1]["loss"]
    scratch_tokens = first_crossing(scratch["curve"], target, "tokens", "loss")
    s_equiv = s_tokens * f_s / f_l
    scale_up = {}
    for m in args.methods:
        t = first_crossing(runs[m]["curve"], target, "tokens", "loss")
        scale_up[m] = {
            "start_loss": runs[m]["curve"][0]["loss"],
            "final_loss": runs[m]["curve"][-1]["loss"],
            "tokens_to_scratch_final": t,
            "saving": None if t is None else 1 - t / scratch_tokens,
            "saving_with_small": None if t is None else 1 - (t + s_equiv) / scratch_tokens,
        }
    by_k = {}
    for k in args.top_k:
        up, dense = runs[f"moe-upcycled-top{k}"], runs[f"dense-continued-top{k}"]
        # At the same phase-2 FLOPs, at every evaluation of the upcycled MoE. Only the finals
        # are both at the end of their schedules; earlier pairs compare mid-schedule points.
        paired = []
        for p in up["curve"]:
            spent = p["tokens"] * f_moe[k]
            d = loss_at_flops(dense["curve"], f_l, 0.0, spent)
            if d is not None:
                paired.append({"flops": spent, "moe": p["loss"], "dense": d})
        by_k[f"top{k}"] = {
            "phase2_flops": up["curve"][-1]["tokens"] * f_moe[k],
            "start_loss": up["curve"][0]["loss"],
            "moe_upcycled_final": up["curve"][-1]["loss"],
            "dense_continued_final": dense["curve"][-1]["loss"],
            "moe_steps": up["steps"],
            "dense_steps": dense["steps"],
            "moe_better_at_evals": f"{sum(q['moe'] < q['dense'] for q in paired)}/{len(paired)}",
            "paired": paired,
        }
    k0 = f"top{args.top_k[0]}"
    scale_out = {
        "upcycled_from": best,
        "experts": args.experts,
        "moe_scratch_top_k": args.top_k[0],
        "moe_scratch_final": runs["moe-scratch"]["curve"][-1]["loss"],
        "by_top_k": by_k,
    }
    best_saving = max((v["saving"] or 0.0) for v in scale_up.values())
    beats = {t: v["moe_upcycled_final"] < v["dense_continued_final"] for t, v in by_k.items()}
    bar = {
        "grown_saving_at_least_30pct": best_saving >= BAR_SAVING,
        "best_saving": best_saving,
        "upcycled_beats_dense": beats[k0],
        "upcycled_beats_dense_by_top_k": beats,
    }
    bar["met"] = bar["grown_saving_at_least_30pct"] and bar["upcycled_beats_dense"]
    return {
        "setup": {k: v for k, v in vars(args).items() if k not in ("json", "out", "plot")},
        "flops_per_token": {
            "small": f_s,
            "large": f_l,
            **{f"moe_top{k}": f for k, f in f_moe.items()},
        },
        "params": {
            "small": runs["small"]["params"],
            "large": runs["scratch"]["params"],
            "moe": runs["moe-scratch"]["params"],
        },
        "scratch_final": target,
        "scratch_tokens": scratch_tokens,
        "small_tokens": s_tokens,
        "small_tokens_l_equivalent": s_equiv,
        "scale_up": scale_up,
        "scale_out": scale_out,
        "bar": bar,
        "runs": runs,
    }


def plot(report: dict, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # a CSV instead: run, cumulative FLOPs, held-out loss
        path = path.with_suffix(".csv")
        with path.open("w") as f:
            f.write("run,flops,loss\n")
            for name, r in report["runs"].items():
                for p in r["curve"]:
                    f.write(f"{name},{r['flops_offset'] + p['tokens'] * r['flops_per_token']:.4g},")
                    f.write(f"{p['loss']:.4f}\n")
        return path
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    for name, r in report["runs"].items():
        pts = r["curve"][1:] if r["flops_offset"] == 0 else r["curve"]
        xs = [r["flops_offset"] + p["tokens"] * r["flops_per_token"] for p in pts]
        style = ":" if name == "small" else "--" if "scratch" in name else "-"
        ax.plot(xs, [p["loss"] for p in pts], style, label=name, lw=1.5)
        if name.startswith(("moe-upcycled", "dense-continued")):
            # Phase 2 alone, on a linear axis: the arms of one top-k end at the same FLOPs.
            zoom.plot(
                [p["tokens"] * r["flops_per_token"] for p in r["curve"]],
                [p["loss"] for p in r["curve"]],
                "-" if name.startswith("moe") else "--",
                color=f"C{list(report['scale_out']['by_top_k']).index(name.split('-')[-1])}",
                label=name,
                lw=1.5,
            )
    ax.axhline(report["scratch_final"], color="grey", lw=0.6)
    ax.set_xscale("log")
    lo = min(p["loss"] for r in report["runs"].values() for p in r["curve"])
    ax.set_ylim(lo - 0.05, report["runs"]["small"]["curve"][1]["loss"] + 0.1)
    ax.set_xlabel("cumulative training FLOPs (grown and upcycled runs include what they inherit)")
    ax.set_ylabel("held-out loss (mean over sources)")
    ax.set_title("EfficientScale on the sample corpus")
    ax.legend(fontsize=8)
    zoom.set_xlabel("phase-2 training FLOPs")
    zoom.set_title(f"scale-out from {report['scale_out']['upcycled_from']}, equal FLOPs")
    zoom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def table(report: dict) -> str:
    lines = [
        f"scratch L final held-out loss {report['scratch_final']:.4f} after "
        f"{report['scratch_tokens']:,.0f} tokens; S: {report['small_tokens']:,} tokens "
        f"= {report['small_tokens_l_equivalent']:,.0f} L-equivalent",
        f"{'arm':10s} {'start':>7s} {'final':>7s} {'tokens to scratch final':>24s} "
        f"{'saving':>7s} {'incl. S':>8s}",
    ]
    for m, v in report["scale_up"].items():
        t = v["tokens_to_scratch_final"]
        fmt = lambda x: "   never" if x is None else f"{x:+8.1%}"  # noqa: E731
        lines.append(
            f"{m:10s} {v['start_loss']:7.4f} {v['final_loss']:7.4f} "
            f"{'never' if t is None else f'{t:,.0f}':>24s} {fmt(v['saving'])} "
            f"{fmt(v['saving_with_small'])}"
        )
    o = report["scale_out"]
    lines.append(
        f"scale-out from {o['upcycled_from']}, {o['experts']} experts; MoE from scratch "
        f"(top-{o['moe_scratch_top_k']}) {o['moe_scratch_final']:.4f}"
    )
    for tag, v in o["by_top_k"].items():
        lines.append(
            f"  {tag}: at {v['phase2_flops']:.3g} FLOPs each: upcycled MoE "
            f"{v['moe_upcycled_final']:.4f} ({v['moe_steps']} steps), dense continued "
            f"{v['dense_continued_final']:.4f} ({v['dense_steps']} steps); MoE lower at "
            f"{v['moe_better_at_evals']} equal-FLOPs evaluations"
        )
    lines += [
        f"bar: grown saving >= 30%: {report['bar']['grown_saving_at_least_30pct']} "
        f"(best {report['bar']['best_saving']:+.1%}); upcycled beats dense: "
        f"{report['bar']['upcycled_beats_dense']}",
    ]
    return "\n".join(lines)


SMOKE = {
    "small": "32,2,2,1",
    "large": "64,3,4,2",
    "s_steps": 6,
    "l_steps": 6,
    "moe_steps": 4,
    "batch": 4,
    "seq_len": 64,
    "eval_every": 3,
    "heldout_per_source": 2,
    "warmup": 2,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", default="64,4,4,2", help="S as hidden,layers,heads,kv_heads")
    p.add_argument("--large", default="128,6,8,4", help="L as hidden,layers,heads,kv_heads")
    p.add_argument("--s-steps", type=int, default=150)
    p.add_argument("--l-steps", type=int, default=200)
    p.add_argument("--moe-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=1024, help="model vocab (tokenizer: vocab - 8)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR of S")
    p.add_argument(
        "--scratch-lr",
        type=float,
        default=SCRATCH_LR,
        help="peak LR of the from-scratch L and MoE (0: --lr); the best of a sweep, see docs",
    )
    p.add_argument("--grown-lr", type=float, default=1e-3, help="peak LR of grown L (0: --lr)")
    p.add_argument(
        "--moe-lr", type=float, default=1e-3, help="peak LR of phase 2 (0: --grown-lr / 3)"
    )
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor / peak")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument(
        "--top-k",
        type=int,
        nargs="+",
        default=[1, 2],
        help="phase-2 routing, one upcycled MoE and one dense arm each; the first decides the "
        "bar and is the MoE from scratch's",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--heldout-per-source", type=int, default=8)
    p.add_argument("--data-seed", type=int, default=1234)
    p.add_argument("--seed", type=int, default=0)
    # Use 1 on a machine shared with other jobs: two threads per process were up to 20x slower.
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny shapes and a few steps (< 1 min)")
    p.add_argument("--out", default="bench/results/scale.json")
    p.add_argument("--plot", default="bench/results/scale.png")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    report = run_experiment(args)
    out, plot_path = Path(args.out), Path(args.plot)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(plot(report, plot_path))
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        keys = ("scratch_final", "scale_up", "scale_out", "bar", "seconds", "plot")
        print(json.dumps({k: report[k] for k in keys}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
