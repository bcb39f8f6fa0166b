"""`aquila grow` (Scale-Up) and `aquila upcycle` (Scale-Out)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aquila.errors import UserError

SHAPE_KEYS = {
    "hidden": "hidden_size",
    "layers": "n_layers",
    "heads": "n_heads",
    "kv_heads": "n_kv_heads",
    "ffn": "ffn_size",
}


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "grow",
        help="initialise a wider/deeper dense model from a trained one (Scale-Up)",
        description=(
            "Grow a dense model's width (hidden size, FFN size, query/key-value heads) and depth. "
            "fpi keeps the function (with --identity-layers when layers are added); aki and "
            "aki-pro copy new units from the next layer to break symmetry; random is the "
            "from-scratch baseline. Train the result with a fresh optimizer and a lower peak LR."
        ),
        epilog=(
            "examples:\n"
            "  aquila grow runs/7b --to aquila-moe-16b-dense --method aki-pro --out models/16b\n"
            "  aquila grow models/small --to hidden=80,heads=10,layers=5 --method fpi "
            "--identity-layers --out models/grown --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("src", help="model dir, or run dir (its latest checkpoint)")
    g.add_argument(
        "--to",
        required=True,
        metavar="PRESET_OR_SHAPE",
        help="a preset name, or hidden=..,layers=..,heads=..,kv_heads=..,ffn=.. "
        "(keys left out keep the source's value)",
    )
    g.add_argument("--method", default="fpi", choices=["fpi", "aki", "aki-pro", "random"])
    g.add_argument("--out", required=True, help="output model dir")
    g.add_argument(
        "--depth-mode",
        choices=["stack", "interpolate"],
        help="where new layers go: stack copies on top; interpolate puts each copy beside its "
        "source (default: interpolate for aki-pro, stack otherwise)",
    )
    g.add_argument(
        "--identity-layers",
        action="store_true",
        help="new layers start as identity (zero o_proj/down_proj): fpi stays exact",
    )
    g.add_argument(
        "--norm-mode",
        choices=["tile", "rescale"],
        default="tile",
        help="new hidden dims: tile duplicates dims (split fan-in); rescale zero-pads them and "
        "rescales RMSNorm gains by sqrt(d/D) (default tile)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the unit choices (default 0)")
    g.add_argument(
        "--verify",
        action="store_true",
        help="also report the max |logit difference| to the source on random tokens",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=_grow)

    u = sub.add_parser(
        "upcycle",
        help="turn a dense model into a mixture of experts (Scale-Out)",
        description=(
            "Every expert copies the dense FFN and the router is N(0, router-std), so the "
            "upcycled model computes the dense model's function. --noise perturbs the copies "
            "(not function preserving)."
        ),
        epilog="example:\n  aquila upcycle models/16b --experts 8 --top-k 2 --out models/8x16b",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    u.add_argument("src", help="dense model dir, or run dir (its latest checkpoint)")
    u.add_argument("--experts", type=int, default=8, help="number of experts (default 8)")
    u.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")
    u.add_argument("--out", required=True, help="output model dir")
    u.add_argument("--router-std", type=float, default=0.02, help="router init std (0.02)")
    u.add_argument(
        "--noise", type=float, default=0.0, help="relative std of noise added to experts (0)"
    )
    u.add_argument("--aux-loss-coef", type=float, default=0.001, help="load balancing (0.001)")
    u.add_argument("--z-loss-coef", type=float, default=0.01, help="router z-loss (0.01)")
    u.add_argument("--seed", type=int, default=0, help="seed of router and noise (default 0)")
    u.add_argument("--verify", action="store_true", help="report the max |logit difference|")
    u.add_argument("--json", action="store_true", help="print one JSON object")
    u.set_defaults(func=_upcycle)


def parse_target(spec: str, src):
    """A preset name, or a comma-separated shape whose missing keys keep the source's values."""
    from aquila.model.config import get_preset, preset_names

    spec = spec.strip()
    if "=" not in spec:
        if spec not in preset_names():
            raise UserError(
                f"--to: unknown preset {spec!r}; known presets: {', '.join(preset_names())}"
            )
        return get_preset(spec)
    changes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in SHAPE_KEYS:
            raise UserError(f"--to: unknown key {key!r}; use {', '.join(SHAPE_KEYS)}")
        try:
            changes[SHAPE_KEYS[key]] = int(value)
        except ValueError:
            raise UserError(f"--to: {key}={value!r} is not an integer") from None
    try:
        return src.replace(**changes)
    except UserError as exc:
        raise UserError(f"--to {spec}: {exc}") from None


def _load(src: str):
    from aquila.model.io import load_model_dir, resolve_model_dir, resolve_tokenizer_dir

    model_dir = resolve_model_dir(src)
    model = load_model_dir(model_dir)
    tokenizer = None
    try:
        from aquila.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(resolve_tokenizer_dir(src))
    except UserError:
        pass  # a model without a tokenizer grows all the same
    return model_dir, model, tokenizer


def _check_out(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or o in s.parents:
        raise UserError(f"--out {out} would overwrite the source {src}; choose another directory")


def _max_logit_diff(a, b) -> float:
    import torch

    n = min(64, a.cfg.max_seq_len, b.cfg.max_seq_len)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, a.cfg.vocab_size, (1, n), generator=gen)
    with torch.no_grad():
        return (a.eval()(tokens).float() - b.eval()(tokens).float()).abs().max().item()


def _finish(args, src_model, model, model_dir: Path, tokenizer, info: dict[str, Any]) -> int:
    from aquila.model import count_params
    from aquila.model.io import save_model_dir

    if args.verify:
        info["max_abs_logit_diff"] = _max_logit_diff(src_model, model)
    out = save_model_dir(model, Path(args.out), tokenizer=tokenizer)
    info.update(
        source=str(model_dir),
        out=str(out),
        source_params=count_params(src_model.cfg),
        params=count_params(model.cfg),
        config=model.cfg.to_dict(),
    )
    if model.cfg.n_experts:
        info["active_params"] = count_params(model.cfg, active=True)
    if args.json:
        print(json.dumps(info))
        return 0
    c = model.cfg
    print(
        f"wrote {out}: {info['params'] / 1e6:,.1f}M params ({info['source_params'] / 1e6:,.1f}M before)"
    )
    print(
        f"  layers {c.n_layers}, hidden {c.hidden_size}, heads {c.n_heads}/{c.n_kv_heads}, "
        f"FFN {c.ffn_size}" + (f", {c.n_experts} experts top-{c.top_k}" if c.n_experts else "")
    )
    if "max_abs_logit_diff" in info:
        print(f"  max |logit difference| to the source: {info['max_abs_logit_diff']:.3g}")
    return 0


def _grow(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from aquila.scale.grow import check_target, grow, resolve_depth_mode

    depth_mode = resolve_depth_mode(args.method, args.depth_mode)
    _check_out(Path(args.src), Path(args.out))
    model_dir, model, tokenizer = _load(args.src)
    _check_out(model_dir, Path(args.out))
    target = parse_target(args.to, model.cfg)
    check_target(model.cfg, target)
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task(f"growing ({args.method})", total=model.cfg.n_layers + 1)
        grown = grow(
            model,
            target,
            method=args.method,
            depth_mode=depth_mode,
            identity_new_layers=args.identity_layers,
            norm_mode=args.norm_mode,
            seed=args.seed,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    info = {
        "command": "grow",
        "method": args.method,
        "depth_mode": depth_mode,
        "norm_mode": args.norm_mode,
        "identity_layers": args.identity_layers,
        "seed": args.seed,
    }
    return _finish(args, model, grown, model_dir, tokenizer, info)


def _upcycle(args: argparse.Namespace) -> int:
    from aquila.scale.upcycle import upcycle

    _check_out(Path(args.src), Path(args.out))
    model_dir, model, tokenizer = _load(args.src)
    _check_out(model_dir, Path(args.out))
    moe = upcycle(
        model,
        n_experts=args.experts,
        top_k=args.top_k,
        router_std=args.router_std,
        noise=args.noise,
        seed=args.seed,
        aux_loss_coef=args.aux_loss_coef,
        z_loss_coef=args.z_loss_coef,
    )
    info = {
        "command": "upcycle",
        "experts": args.experts,
        "top_k": args.top_k,
        "router_std": args.router_std,
        "noise": args.noise,
        "seed": args.seed,
    }
    return _finish(args, model, moe, model_dir, tokenizer, info)
