"""Runs a ratio sweep: one ordinary run directory per (ratio, seed), each scored on held-out text.

Every run trains the same model for the same steps and batch (so the same tokens) and differs
only in its mixture and seed. A run's score is written next to it (``RUN/sweep-result.json``)
once it is complete, so a sweep started again skips finished runs and resumes an interrupted
one from its latest checkpoint.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aquila.errors import EXIT_INTERRUPTED, ReportedError, UserError
from aquila.sweep.mixtures import Ratio, SourceInfo, sweep_weights

RESULT_FILE = "sweep-result.json"
SPEC_FILE = "sweep-spec.json"

# The base run when no --config is given: a ~9M-parameter model on the bundled bilingual sample
# corpus, a constant-then-decay LR sized for a short budget, no background evaluator (the sweep
# scores each run itself) and one checkpoint at the end.
SWEEP_DEFAULTS = [
    "model.preset='aquila-10m'",
    "data.seq_len=256",
    "train.batch_size=16",
    "train.max_steps=100",
    "train.log_every=10",
    "optim.lr=3e-3",
    "optim.min_lr=3e-4",
    "optim.warmup_steps=10",
    "monitor.eval.enabled=false",
]


class SweepInterrupted(ReportedError):
    exit_code = EXIT_INTERRUPTED


@dataclass
class SweepSpec:
    out: Path
    ratios: list[Ratio]
    seeds: list[int]
    langs: tuple[str, str] = ("zh", "en")
    hold: dict[str, float] = field(default_factory=lambda: {"code": 0.1})
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    heldout_bytes: int = 150_000

    def base_overrides(self) -> list[str]:
        return ([] if self.config else list(SWEEP_DEFAULTS)) + list(self.overrides)


def run_name(langs: tuple[str, str], ratio: Ratio, seed: int) -> str:
    return f"{langs[0]}{ratio.a:g}-{langs[1]}{ratio.b:g}-seed{seed}"


@dataclass
class _Data:
    data_dir: Path
    tokenizer_dir: Path
    heldout: str  # a data.heldout directory, or "" for the sample corpus' held-out split
    sources: list[SourceInfo]


def _resolve_data(cfg) -> _Data:
    """The token shards, tokenizer and held-out text every run of the sweep uses."""
    from aquila.data.shards import load_sources
    from aquila.tokenizer import Tokenizer
    from aquila.train.run import cache_dir, check_heldout, sample_shards

    if cfg.data.dir:
        if not cfg.tokenizer:
            raise UserError("tokenizer is required when data.dir is set: --set tokenizer=DIR")
        if not cfg.data.heldout:
            raise UserError(
                "a sweep scores held-out text: --set data.heldout=DIR (one sub-directory per "
                "language) when data.dir is set"
            )
        check_heldout(cfg.data.heldout)
        tok_dir, data_dir = Path(cfg.tokenizer), Path(cfg.data.dir)
    else:
        from aquila.tokenizer.train import default_tokenizer

        tok_dir = (
            Path(cfg.tokenizer)
            if cfg.tokenizer
            else default_tokenizer(cache_dir(), vocab_size=cfg.model.vocab_size - 8)
        )
        data_dir = sample_shards(Tokenizer.load(tok_dir), show_progress=False)
    tokenizer = Tokenizer.load(tok_dir)
    found = load_sources(data_dir, cfg.data.sources or None, tokenizer_hash=tokenizer.hash)
    sources = [
        SourceInfo(name, str(s.manifest.get("lang", "")), s.num_tokens)
        for name, s in sorted(found.items())
    ]
    return _Data(data_dir, tok_dir, cfg.data.heldout, sources)


def _heldout_sets(data: _Data, max_bytes: int):
    from aquila.eval.heldout import run_heldout

    return run_heldout(data.heldout, None, max_bytes)


def _fingerprint(spec: SweepSpec) -> dict[str, Any]:
    """What makes two sweeps comparable: everything but the list of ratios and seeds."""
    config_text = Path(spec.config).read_text(encoding="utf-8") if spec.config else ""
    return {
        "langs": list(spec.langs),
        "hold": spec.hold,
        "config": spec.config,
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "overrides": spec.base_overrides(),
        "heldout_bytes": spec.heldout_bytes,
    }


def _check_spec(spec: SweepSpec) -> None:
    path = spec.out / SPEC_FILE
    mine = _fingerprint(spec)
    if path.is_file():
        try:
            theirs = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{path}: not valid JSON (a damaged sweep directory)") from None
        if theirs != mine:
            diff = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise UserError(
                f"{spec.out} holds a sweep with other settings ({', '.join(diff)} differ): "
                "give the same options to continue it, or another output directory"
            )
        return
    spec.out.mkdir(parents=True, exist_ok=True)
    _write_json(path, mine)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # a damaged score is scored again


def run_sweep(
    spec: SweepSpec,
    quiet: bool = False,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train and score every (ratio, seed) not already scored; the results of all of them."""
    from aquila.engine.checkpoint import latest_checkpoint
    from aquila.train.config import load_config

    base = load_config(spec.config, spec.base_overrides())
    base.validate()
    _check_spec(spec)
    data = _resolve_data(base)
    jobs = [(r, s) for r in spec.ratios for s in spec.seeds]
    weights = {r.label: sweep_weights(r, spec.langs, spec.hold, data.sources) for r in spec.ratios}
    sets = None
    results = []
    for i, (ratio, seed) in enumerate(jobs, 1):
        run_dir = spec.out / run_name(spec.langs, ratio, seed)
        done = read_result(run_dir)
        if done is not None:
            say(
                f"[{i}/{len(jobs)}] {spec.langs[0]}:{spec.langs[1]} {ratio.label} seed {seed}: done"
            )
            results.append(done)
            continue
        resume = latest_checkpoint(run_dir) is not None
        say(
            f"[{i}/{len(jobs)}] {spec.langs[0]}:{spec.langs[1]} {ratio.label} seed {seed}: "
            f"{'resuming' if resume else 'training'} {run_dir}"
        )
        if sets is None:
            sets = _heldout_sets(data, spec.heldout_bytes)
        result = _train_and_score(spec, base, data, sets, ratio, seed, weights, run_dir, quiet)
        _write_json(run_dir / RESULT_FILE, result)
        results.append(result)
        line = ", ".join(f"{k} {v:.4f}" for k, v in result["bpb"].items())
        say(f"    held-out bits/byte: {line}")
    return results


def _train_and_score(spec, base, data, sets, ratio, seed, weights, run_dir, quiet) -> dict:
    from aquila.engine.checkpoint import latest_checkpoint
    from aquila.eval.heldout import evaluate_heldout
    from aquila.train.config import load_config
    from aquila.train.run import prepare_run

    w = weights[ratio.label]
    if latest_checkpoint(run_dir) is not None:
        prepared = prepare_run(resume=run_dir, quiet=quiet)
    else:
        table = ", ".join(f"{json.dumps(k)} = {v!r}" for k, v in w.items())
        cfg = load_config(
            spec.config,
            spec.base_overrides()
            + [
                f"data.dir={json.dumps(str(data.data_dir))}",
                f"tokenizer={json.dumps(str(data.tokenizer_dir))}",
                f"data.weights={{{table}}}",
                f"train.seed={seed}",
                f"data.seed={seed}",
                f"run_dir={json.dumps(str(run_dir))}",
            ],
        )
        prepared = prepare_run(cfg, quiet=quiet)
    reason = prepared.trainer.fit()
    if reason == "interrupted":
        raise SweepInterrupted(f"interrupted: {run_dir} resumes when the sweep is run again")
    t = prepared.trainer.state
    res = evaluate_heldout(prepared.trainer.model, prepared.tokenizer, sets, base.data.seq_len)
    bpb = {lang: r["bpb"] for lang, r in res["languages"].items()}
    a, b = spec.langs
    out = {
        "run_dir": str(run_dir),
        "ratio": ratio.label,
        "a": ratio.a,
        "b": ratio.b,
        "seed": seed,
        "status": reason,
        "steps": t.step,
        "tokens": t.tokens,
        "weights": w,
        "bpb": bpb,
        "sources_bpb": {n: r["bpb"] for n, r in res["sources"].items()},
        "combined": (bpb[a] + bpb[b]) / 2 if a in bpb and b in bpb else None,
        "train_seconds": round(t.train_seconds, 1),
        "params": prepared.trainer.model.num_params(),
    }
    del prepared, res
    gc.collect()
    return out
