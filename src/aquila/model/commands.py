"""`aquila model ...`, `aquila export`, `aquila import`, `aquila generate`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model presets", description="Inspect model presets.")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    info = msub.add_parser(
        "info",
        help="shape, parameter count and training FLOPs per token of a preset or model dir",
        description=(
            "Print the shape of a preset or of a saved model (a model dir or a run dir's latest "
            "checkpoint), its parameter count (computed on the meta device, no memory used) and "
            "its training FLOPs per token: 6N + 12 * layers * hidden * seq_len, where N excludes "
            "the input embedding table."
        ),
    )
    info.add_argument(
        "preset",
        metavar="PRESET_OR_DIR",
        help="preset name (see `aquila model list`), model dir or run dir",
    )
    info.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="sequence length for the attention term (default: the preset's context)",
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_info)
    lst = msub.add_parser("list", help="list the presets", description="List the model presets.")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_list)
    _register_interop(sub)
    _register_generate(sub)


def preset_summary(name: str, seq_len: int | None = None) -> dict:
    from aquila.model import get_preset

    return config_summary(get_preset(name), name, seq_len)


def config_summary(cfg, name: str, seq_len: int | None = None) -> dict:
    from aquila.model import count_params, flops_per_token

    out = {"preset": name, **{k: v for k, v in cfg.to_dict().items() if k != "extra"}}
    out["head_dim"] = cfg.head_dim
    out["params"] = count_params(cfg)
    if cfg.n_experts:
        out["active_params"] = count_params(cfg, active=True)
    out["seq_len"] = seq_len or cfg.max_seq_len
    out["flops_per_token"] = flops_per_token(cfg, seq_len)
    return out


def _info(args: argparse.Namespace) -> int:
    path = Path(args.preset)
    if path.exists():
        from aquila.model.io import read_model_config, resolve_model_dir

        model_dir = resolve_model_dir(path)
        s = config_summary(read_model_config(model_dir), str(model_dir), args.seq_len)
    else:
        s = preset_summary(args.preset, args.seq_len)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"{s['preset']}")
    print(
        f"  layers {s['n_layers']}, hidden {s['hidden_size']}, heads {s['n_heads']} / kv {s['n_kv_heads']} "
        f"(head dim {s['head_dim']}), FFN {s['ffn_size']}"
    )
    print(
        f"  context {s['max_seq_len']}, vocab {s['vocab_size']}, RoPE base {s['rope_base']:g}, init std {s['init_std']}"
    )
    if s.get("n_experts"):
        print(
            f"  experts {s['n_experts']} (top-{s['top_k']}), active params {s['active_params'] / 1e9:.2f}B"
        )
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
        print(
            f"{r['preset']:<18} {r['params'] / 1e6:>10.1f}M  {r['n_layers']}L/{r['hidden_size']}/"
            f"{r['n_heads']}-{r['n_kv_heads']}/{r['ffn_size']} ctx {r['max_seq_len']} vocab {r['vocab_size']}"
        )
    return 0


# ---------------------------------------------------------------------------------------------
# aquila export / aquila import


def _register_interop(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "export",
        help="export a model or run dir to a Hugging Face (LlamaForCausalLM) dir",
        description=(
            "Write config.json (LlamaForCausalLM, or MixtralForCausalLM for mixture-of-experts "
            "models), model.safetensors, generation_config.json and the tokenizer files, loadable "
            "with transformers' from_pretrained without trust_remote_code. A run dir exports its "
            "latest checkpoint, a multi-process one straight from its DCP shards. Weights are "
            "written in Hugging Face's sharded layout (model-0000K-of-0000N.safetensors + "
            "model.safetensors.index.json; one file is model.safetensors), one file at a time: "
            "the host holds about one --max-shard-size of weights, whatever the model's size."
        ),
    )
    ex.add_argument(
        "src",
        metavar="RUN_OR_MODEL_DIR",
        help="a model dir or a run dir (one- or multi-process checkpoints alike)",
    )
    ex.add_argument("--format", choices=["hf"], default="hf", help="output format (default: hf)")
    ex.add_argument("--out", required=True, type=Path, help="output directory (created atomically)")
    ex.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="weight dtype in the export (default: float32)",
    )
    ex.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="largest weight file, e.g. 5GB, 500MB, 2GiB or bytes (default: 5GB)",
    )
    ex.add_argument("--json", action="store_true", help="print one JSON object")
    ex.set_defaults(func=_export)

    im = sub.add_parser(
        "import",
        help="import a Hugging Face Llama/Aquila/Mixtral dir as a native model dir",
        description=(
            "Read config.json and the weights (model.safetensors, sharded safetensors with "
            "model.safetensors.index.json, or pytorch_model.bin) of a LlamaForCausalLM, "
            "AquilaForCausalLM or MixtralForCausalLM checkpoint and write a native model dir "
            "(model.json + model.safetensors, or shards of --max-shard-size with an index) "
            "with the tokenizer files copied. Tensors are copied bit for bit in their stored "
            "dtype, one output file at a time."
        ),
    )
    im.add_argument("src", metavar="HF_DIR", help="a Hugging Face model directory")
    im.add_argument("--out", required=True, type=Path, help="output model dir (created atomically)")
    im.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="largest weight file, e.g. 5GB, 500MB, 2GiB or bytes (default: 5GB)",
    )
    im.add_argument("--json", action="store_true", help="print one JSON object")
    im.set_defaults(func=_import)


def _files_progress(description: str):
    """A rich progress bar over output files on stderr, and its ``(done, total)`` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def _export(args: argparse.Namespace) -> int:
    from aquila.model.hf import export_hf

    bar, advance = _files_progress(f"exporting {args.src}")
    with bar:
        s = export_hf(
            args.src,
            args.out,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            progress=advance,
        )
    if args.json:
        print(json.dumps(s))
        return 0
    print(
        f"exported {s['source']} -> {s['out']} ({s['architecture']}, {s['dtype']}, "
        f"{s['params']:,} params, {s['bytes'] / 1e6:.1f} MB in {len(s['files'])} file(s))"
    )
    if not s["tokenizer_files"]:
        print("  note: no tokenizer found; the export has no tokenizer files")
    return 0


def _import(args: argparse.Namespace) -> int:
    from aquila.model.hf import import_hf

    bar, advance = _files_progress(f"importing {args.src}")
    with bar:
        s = import_hf(args.src, args.out, max_shard_size=args.max_shard_size, progress=advance)
    if args.json:
        print(json.dumps(s))
        return 0
    c = s["config"]
    print(
        f"imported {s['source']} -> {s['out']} ({c['n_layers']}L/{c['hidden_size']}/"
        f"{c['n_heads']}-{c['n_kv_heads']}/{c['ffn_size']}, {s['params']:,} params)"
    )
    if not s["tokenizer_files"]:
        print("  note: the source has no tokenizer files")
    start = s["doc_start"]
    print(f"  start of document: {start['token']} (from {start['from']})")
    return 0


# ---------------------------------------------------------------------------------------------
# aquila generate


def _register_generate(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "generate",
        help="generate text from a model or run dir",
        description=(
            "Continue --prompt with a saved model, streaming the text as it is decoded. The prompt "
            "is preceded by the end-of-document token, as every document is in training, so an "
            "empty prompt samples a document from scratch. Sampling uses --temperature, --top-k "
            "and --top-p; --greedy takes the most likely token instead. Generation stops at the "
            "end-of-document token, after --max-new-tokens, or when the context is full."
        ),
    )
    g.add_argument("src", metavar="RUN_OR_MODEL_DIR", help="a model dir or a run dir")
    g.add_argument("--prompt", required=True, help="text to continue (may be empty)")
    g.add_argument(
        "--max-new-tokens", type=int, default=64, help="at most this many new tokens (default: 64)"
    )
    g.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: 1.0)"
    )
    g.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens")
    g.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample from the smallest set of tokens with mass >= P",
    )
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="divide the logits of tokens already in the context by this (>1 repeats less; "
        "CTRL / transformers convention; default 1.0: off)",
    )
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    g.set_defaults(func=_generate)


def _device(name: str) -> str:
    import torch

    from aquila.errors import UserError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available")
    return name


def _generate(args: argparse.Namespace) -> int:
    from aquila.errors import UserError
    from aquila.model.generate import decode_stream, document_start_id, generate
    from aquila.model.io import load_model_dir, resolve_model_dir, resolve_tokenizer_dir
    from aquila.tokenizer import Tokenizer

    sampling = {"--temperature": args.temperature, "--top-k": args.top_k, "--top-p": args.top_p}
    if args.greedy and any(v is not None for v in sampling.values()):
        given = [k for k, v in sampling.items() if v is not None]
        raise UserError(f"--greedy cannot be combined with {', '.join(given)}")
    tokenizer = Tokenizer.load(resolve_tokenizer_dir(args.src))
    model = load_model_dir(resolve_model_dir(args.src), device=_device(args.device))
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"the tokenizer of {args.src} has {tokenizer.vocab_size} tokens but the model only "
            f"{model.cfg.vocab_size}"
        )
    prompt_ids = [document_start_id(model.cfg, tokenizer), *tokenizer.encode(args.prompt)]
    ids: list[int] = []
    stream = generate(
        model,
        prompt_ids,
        args.max_new_tokens,
        greedy=args.greedy,
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=tokenizer.eos_id,
        seed=args.seed,
        repetition_penalty=args.repetition_penalty,
    )

    def collect():
        for token in stream:
            ids.append(token)
            if token != tokenizer.eos_id:  # the end-of-document marker is not part of the text
                yield token

    if not args.json:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    start = time.perf_counter()
    pieces = []
    for piece in decode_stream(tokenizer.decode, collect()):
        pieces.append(piece)
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    elapsed = time.perf_counter() - start
    text = "".join(pieces)
    if args.json:
        print(
            json.dumps(
                {
                    "prompt": args.prompt,
                    "text": text,
                    "tokens": len(ids),
                    "token_ids": ids,
                    "stopped_at_eos": bool(ids) and ids[-1] == tokenizer.eos_id,
                    "tokens_per_s": len(ids) / elapsed if elapsed > 0 else None,
                },
                ensure_ascii=False,
            )
        )
    else:
        sys.stdout.write("\n")
    return 0
