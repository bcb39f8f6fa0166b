"""`aquila train`: train (or resume) a model; with no arguments, the bilingual sample run."""

from __future__ import annotations

import argparse
import json
import time

# The embedded default run: a ~9M-parameter model on the bundled bilingual sample corpus, sized to
# finish in under 10 minutes on 2 CPU cores. The published Aquila2 values (the dataclass defaults)
# are tuned for billions of parameters and trillions of tokens, not for this.
DEFAULT_RUN = [
    "model.preset='aquila-10m'",
    "data.seq_len=256",
    "train.batch_size=16",
    "train.max_steps=580",
    # A safety net on slower machines: the run stops with a checkpoint and still reports.
    "train.max_seconds=500",
    # The ASV repeats the KJV nearly verbatim: half its natural share goes to Chinese news,
    # which has the most left to learn.
    "data.weights={kjv=0.2, asv=0.1, peoples_daily=0.36, reviews=0.12, python_docs=0.04, "
    "python_code=0.18}",
    "train.log_every=10",
    "train.checkpoint_every=250",
    # One compiled graph for the whole step's model math: ~30% more tokens/s on CPU after a
    # ~30 s compile. Where no compiler works the default run goes on eagerly, saying so; a run
    # that asks for train.compile itself stops with the compiler's error instead.
    "train.compile=true",
    "train.compile_fallback=true",
    # A step's logits here are 16 x 256 x 8192 fp32 = 134 MB: holding them is cheaper than the
    # chunked loss's recomputed head matmul (measured 1.08x against 0.87x the compiled
    # transformers peer, docs/performance.md). Large vocabularies and sequences keep "chunked".
    "train.loss='full'",
    "optim.lr=3e-3",
    "optim.min_lr=3e-4",
    "optim.warmup_steps=40",
    # The final report evaluates the held-out text; a background evaluator would only compete
    # for the same two cores here.
    "monitor.eval.enabled=false",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (no arguments: the bilingual sample run)",
        description=(
            "Train an Aquila2-style model. With no arguments, trains the tokenizer (cached) and a "
            "~9M-parameter model on the bundled English/Chinese sample corpus on CPU in under 10 "
            "minutes, then reports held-out bits-per-byte per language and a greedy sample in each. "
            "With --config, trains from a TOML file; --set overrides any key."
        ),
        epilog=(
            "examples:\n"
            "  aquila train\n"
            "  aquila train --config cfg.toml --set optim.lr=3e-4 --set train.max_steps=500\n"
            "  aquila train --resume runs/run-20260101-120000 --set train.max_steps=2000\n"
            "\n"
            "exit codes: 0 completed (or its time limit, or `aquila control RUN_DIR stop`); "
            "2 bad input;\n"
            "  3 stopped by the monitor (non-finite values, divergence); 4 a checkpoint or "
            "metrics.jsonl\n"
            "  could not be written (train.on_save_error); 5 the run directory is in use by "
            "another training;\n"
            "  130 interrupted (a checkpoint was written)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="TOML config file (sections: model, data, optim, train)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. optim.lr=3e-4 (repeatable; values are TOML)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--run-dir", help="where to write the run (default: runs/run-DATE-TIME)")
    p.add_argument(
        "--no-report",
        action="store_true",
        help="skip the held-out evaluation and samples at the end",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON summary object on the last line of stdout",
    )
    p.set_defaults(func=_train)

    b = sub.add_parser(
        "bench",
        help="measure training throughput (tokens/s, MFU) on the training code path",
        description=(
            "Time training steps of a preset on synthetic tokens through the same Trainer as "
            "`aquila train` (warm-up steps excluded): tokens/s, step time, MFU, peak memory, "
            "data-wait fraction. MFU uses 6N + 12 * layers * hidden * seq_len FLOPs per token "
            "against the GPU's dense bf16 peak, or on CPU against a measured fp32 matmul peak. "
            "--data times the data pipeline alone (sampler + reader over real shards)."
        ),
    )
    b.add_argument("--preset", default="aquila-10m", help="model preset (default: aquila-10m)")
    b.add_argument("--seq-len", type=int, default=256, help="sequence length (default: 256)")
    b.add_argument("--batch", type=int, default=16, help="sequences per step (default: 16)")
    b.add_argument(
        "--micro-batch", type=int, default=0, help="sequences per forward (default: all)"
    )
    b.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    b.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default: 2)")
    b.add_argument("--compile", action="store_true", help="torch.compile each block")
    b.add_argument("--device", default="auto", help="cpu, cuda or auto")
    b.add_argument(
        "--peak-seconds",
        type=float,
        default=2.0,
        help="how long the CPU matmul peak is measured (default: 2 s)",
    )
    b.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides, e.g. train.activation_checkpointing=true",
    )
    b.add_argument(
        "--data",
        metavar="DATA_DIR",
        nargs="?",
        const="",
        help="time the data pipeline alone: token shards dir (no value: the samples)",
    )
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=_bench)


def _train(args: argparse.Namespace) -> int:
    from aquila.engine.distributed import shutdown_distributed
    from aquila.errors import ReportedError

    try:
        code = _train_run(args)
    except ReportedError:
        _leave_process_group()
        raise
    # Only after a normal end: a rank that raised must not wait in a barrier for the others.
    shutdown_distributed()
    return code


def _leave_process_group() -> None:
    """A rank ending with a reported error (every rank raises it alike: a refused lock, a bad
    key, a failed save) leaves the group without a barrier; exiting with it alive can abort in
    the communication threads' teardown and turn the exit code into SIGABRT."""
    import contextlib

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _train_run(args: argparse.Namespace) -> int:
    from aquila.train.config import load_config
    from aquila.train.run import prepare_run, print_line

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(args.run_dir)}")
    started = time.perf_counter()
    if args.resume:
        prepared = prepare_run(resume=args.resume, overrides=overrides, quiet=args.quiet)
    else:
        default_run = not args.config and not any(o.startswith("data.dir=") for o in overrides)
        base = DEFAULT_RUN if default_run else []
        cfg = load_config(args.config, base + overrides)
        prepared = prepare_run(cfg, quiet=args.quiet)
    trainer = prepared.trainer
    if not trainer.is_main:  # one voice for a multi-process run: rank 0's

        def print_line(text: str = "", json_mode: bool = False) -> None:
            return None

    if prepared.resumed_from:
        print_line(f"resuming {prepared.run_dir} from {prepared.resumed_from.name}", args.json)
    else:
        print_line(f"run directory: {prepared.run_dir}", args.json)
    t = prepared.cfg.train
    if trainer.dist.world == 1 and (t.tp > 1 or t.replicate > 1):
        print_line(
            f"train.tp={t.tp} train.replicate={t.replicate} apply to a multi-process run "
            f"(torchrun); this one process trains alone",
            args.json,
        )
    n_params = trainer.model.num_params()
    print_line(
        f"model: {prepared.cfg.preset} ({n_params / 1e6:.1f}M params), sources: "
        f"{', '.join(prepared.data.source_names)}",
        args.json,
    )
    if trainer.compiled != "none":
        scope = {"model": "blocks, head and loss in one graph", "blocks": "each block"}
        print_line(f"compile: {scope[trainer.compiled]}", args.json)
    reason = trainer.fit()
    from aquila.engine.memory import memory_summary

    memory = memory_summary(trainer)
    summary = {
        "run_dir": str(prepared.run_dir),
        "status": reason,
        "steps": trainer.state.step,
        "tokens": trainer.state.tokens,
        "seconds": round(time.perf_counter() - started, 2),
        "train_seconds": round(trainer.state.train_seconds, 2),
        "params": n_params,
        "compiled": trainer.compiled,
    }
    if memory is not None:
        summary["memory"] = memory
    print_line(
        f"{reason} at step {trainer.state.step}: {trainer.state.tokens:,} tokens in "
        f"{trainer.state.train_seconds:.0f} s of training",
        args.json,
    )
    if memory is not None:
        where = "per rank, max over ranks" if trainer.dist.world > 1 else "this process"
        print_line(
            f"memory ({where}): {memory['after_setup_bytes'] / 1024**3:.2f} GiB after setup, "
            f"{memory['peak_bytes'] / 1024**3:.2f} GiB peak",
            args.json,
        )
    distributed = trainer.dist.world > 1
    if not args.no_report and reason in ("completed", "time limit") and not distributed:
        summary.update(_final_report(prepared, args.json))
    elif distributed and trainer.is_main and not args.no_report:
        print_line(
            f"held-out report skipped in a distributed run: aquila eval {prepared.run_dir}",
            args.json,
        )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    code = _exit_code(trainer, reason)
    summary["exit_code"] = code
    if args.json and trainer.is_main:
        print(json.dumps(summary, ensure_ascii=False))
    return code


def _exit_code(trainer, reason: str) -> int:
    """0 only for a run that ended as asked: completed, its time limit, a `stop` command."""
    from aquila.errors import EXIT_INTERRUPTED, EXIT_MONITOR_STOP, EXIT_OK

    if trainer.stopped_by_anomaly:
        return EXIT_MONITOR_STOP
    return EXIT_INTERRUPTED if reason == "interrupted" else EXIT_OK


def _final_report(prepared, json_mode: bool) -> dict:
    from aquila.eval.heldout import evaluate_heldout, run_heldout
    from aquila.train.report import NUCLEUS, report_samples
    from aquila.train.run import print_line

    cfg = prepared.cfg
    model = prepared.trainer.model
    sets = run_heldout(cfg.data.heldout, cfg.data.dir)
    out: dict = {}
    if sets:
        res = evaluate_heldout(model, prepared.tokenizer, sets, cfg.data.seq_len)
        langs = res["languages"]
        print_line("held-out bits per byte (model | byte-unigram entropy):", json_mode)
        for lang, r in langs.items():
            print_line(f"  {lang:<5} {r['bpb']:.3f} | {r['unigram_bpb']:.3f}", json_mode)
        out["heldout_bpb"] = {lang: round(r["bpb"], 4) for lang, r in langs.items()}
        out["unigram_bpb"] = {lang: round(r["unigram_bpb"], 4) for lang, r in langs.items()}
        out["heldout_sources"] = {n: round(r["bpb"], 4) for n, r in res["sources"].items()}
    samples = report_samples(model, prepared.tokenizer)
    nucleus = report_samples(model, prepared.tokenizer, nucleus=True)
    how = f"temperature {NUCLEUS['temperature']}, top-p {NUCLEUS['top_p']}, seed {NUCLEUS['seed']}"
    for lang, text in samples.items():
        print_line(f"sample ({lang}, greedy): {text!r}", json_mode)
        print_line(f"sample ({lang}, {how}): {nucleus[lang]!r}", json_mode)
    out["samples"] = samples
    out["nucleus_samples"] = nucleus
    return out


def _bench(args: argparse.Namespace) -> int:
    from aquila.errors import UserError

    if args.steps < 1 or args.batch < 1 or args.seq_len < 2:
        raise UserError("--steps and --batch must be >= 1 and --seq-len >= 2")
    if not args.peak_seconds > 0:
        raise UserError(f"--peak-seconds must be > 0, got {args.peak_seconds}")
    if args.data is not None:
        out = _bench_data(args)
    else:
        from aquila.train.bench import run_benchmark

        out = run_benchmark(
            args.preset,
            args.seq_len,
            args.batch,
            args.steps,
            args.warmup,
            args.compile,
            args.micro_batch,
            args.device,
            args.overrides,
            peak_seconds=args.peak_seconds,
        )
    if args.json:
        print(json.dumps(out))
        return 0
    for key, value in out.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:>20}: {value}")
    return 0


def _bench_data(args: argparse.Namespace) -> dict:
    from aquila.data.stream import open_train_data
    from aquila.tokenizer import Tokenizer
    from aquila.tokenizer.train import default_tokenizer
    from aquila.train.bench import data_pipeline_rate
    from aquila.train.run import cache_dir, sample_shards

    data_dir = args.data
    if not data_dir:
        data_dir = sample_shards(
            Tokenizer.load(default_tokenizer(cache_dir())), show_progress=False
        )
    data = open_train_data(data_dir, [], args.seq_len, 0, {}, None)
    rate = data_pipeline_rate(data, args.seq_len, args.batch)
    return {
        "mode": "data",
        "data_dir": str(data_dir),
        "seq_len": args.seq_len,
        "batch": args.batch,
        **rate,
    }
