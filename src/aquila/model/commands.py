"""`aquila model ...`: inspect presets."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model presets", description="Inspect model presets.")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    info = msub.add_parser(
        "info",
        help="shape, parameter count and training FLOPs per token of a preset",
        description=(
            "Print a preset's shape, its parameter count (computed on the meta device, no memory "
            "used) and its training FLOPs per token: 6N + 12 * layers * hidden * seq_len, where N "
            "excludes the input embedding table."
        ),
    )
    info.add_argument("preset", help="preset name (see `aquila model list`)")
    info.add_argument("--seq-len", type=int, default=None, help="sequence length for the attention term (default: the preset's context)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_info)
    lst = msub.add_parser("list", help="list the presets", description="List the model presets.")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_list)


def preset_summary(name: str, seq_len: int | None = None) -> dict:
    from aquila.model import count_params, flops_per_token, get_preset

    cfg = get_preset(name)
    out = {"preset": name, **{k: v for k, v in cfg.to_dict().items() if k != "extra"}}
    out["head_dim"] = cfg.head_dim
    out["params"] = count_params(cfg)
    if cfg.n_experts:
        out["active_params"] = count_params(cfg, active=True)
    out["seq_len"] = seq_len or cfg.max_seq_len
    out["flops_per_token"] = flops_per_token(cfg, seq_len)
    return out


def _info(args: argparse.Namespace) -> int:
    s = preset_summary(args.preset, args.seq_len)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"{s['preset']}")
    print(f"  layers {s['n_layers']}, hidden {s['hidden_size']}, heads {s['n_heads']} / kv {s['n_kv_heads']} "
          f"(head dim {s['head_dim']}), FFN {s['ffn_size']}")
    print(f"  context {s['max_seq_len']}, vocab {s['vocab_size']}, RoPE base {s['rope_base']:g}, init std {s['init_std']}")
    if s.get("n_experts"):
        print(f"  experts {s['n_experts']} (top-{s['top_k']}), active params {s['active_params'] / 1e9:.2f}B")
    print(f"  params {s['params']:,} ({s['params'] / 1e9:.2f}B)")
    print(f"  training FLOPs/token at seq {s['seq_len']}: {s['flops_per_token']:.4g}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from aquila.model import preset_names

    rows = [preset_summary(n) for n in preset_names()]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['preset']:<18} {r['params'] / 1e6:>10.1f}M  {r['n_layers']}L/{r['hidden_size']}/"
              f"{r['n_heads']}-{r['n_kv_heads']}/{r['ffn_size']} ctx {r['max_seq_len']} vocab {r['vocab_size']}")
    return 0
