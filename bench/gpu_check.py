"""The GPU figures in one call: gpu-marked tests, training benchmarks, int4 and generation.

On a machine with one CUDA GPU, within ``--budget`` seconds (default 480), in this order (each
part in its own process, so one failure or out-of-memory leaves the others their figures):

- ``pytest -m gpu``: the tests that need CUDA (flash/cuDNN attention chosen, no host sync in a
  step, Liger and FP8 paths);
- the ~1.1B preset (``aquila2-1b``) at sequence 4096 in bf16 through ``aquila bench``: eager
  with full logits, compiled, compiled with the chunked loss, with Liger's fused loss, with FP8
  linears: tokens/s and MFU against the GPU's dense bf16 peak;
- the largest preset that trains on this one GPU with activation checkpointing (the 7B);
- the int4 CUDA kernel path: a quantized ~1.1B model's forward against the bf16 one;
- generation tokens/s of the ~1.1B preset (bf16, KV cache, batch 1).

Everything lands in one JSON file (``--out``). Without a CUDA device every part is recorded as
skipped and the script exits 0. ``--parts`` runs a subset.

    bash bench/gpu_check.sh                  # writes bench/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

B1 = [
    "--preset", "aquila2-1b", "--seq-len", "4096", "--batch", "4", "--steps", "6",
    "--warmup", "3", "--device", "cuda", "--json",
]  # fmt: skip
BENCHES = {
    "1b_eager_full_loss": [*B1, "--set", "train.loss=full"],
    "1b_compiled_full_loss": [*B1, "--compile", "--set", "train.loss=full"],
    "1b_compiled_chunked_loss": [*B1, "--compile"],
    "1b_compiled_liger_loss": [*B1, "--compile", "--set", "train.loss=liger"],
    "1b_compiled_fp8": [*B1, "--compile", "--set", "train.fp8=true"],
    "7b_activation_checkpointing": [
        "--preset",
        "aquila2-7b",
        "--seq-len",
        "4096",
        "--batch",
        "1",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--device",
        "cuda",
        "--json",
        "--compile",
        "--set",
        "train.activation_checkpointing=true",
    ],  # fmt: skip
}

INT4_AND_GENERATION = r"""
import json, time, torch
from aquila.model import get_preset
from aquila.model.generate import generate
from aquila.model.transformer import AquilaModel
cfg = get_preset("aquila2-1b")
torch.manual_seed(0)
model = AquilaModel(cfg, device="cuda").to(torch.bfloat16).eval()
out = {}
ids = list(range(100, 164))
with torch.no_grad():
    for _ in generate(model, ids, 8, greedy=True):
        pass
    torch.cuda.synchronize(); t0 = time.perf_counter(); n = 0
    for _ in generate(model, ids, 256, greedy=True):
        n += 1
    torch.cuda.synchronize()
    out["generation_bf16_tokens_per_s"] = n / (time.perf_counter() - t0)
    x = torch.randint(0, cfg.vocab_size, (4, 512), device="cuda")
    def timed(m):
        for _ in range(2): m(x)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(5): m(x)
        torch.cuda.synchronize(); return (time.perf_counter() - t0) / 5
    out["forward_bf16_s"] = timed(model)
    from aquila.model.int4 import QuantConfig
    from aquila.model.int4_linear import prepare_int4
    from aquila.quant.model import quantize_model
    quantize_model(model, QuantConfig(method="rtn"))
    prepare_int4(model)
    out["forward_int4_s"] = timed(model)
    out["int4_speedup"] = out["forward_bf16_s"] / out["forward_int4_s"]
print(json.dumps(out))
"""


def cuda_device() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_part(cmd: list[str], timeout: float) -> dict:
    t0 = time.perf_counter()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1)
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": round(time.perf_counter() - t0, 1)}
    out: dict = {"status": "ok" if proc.returncode == 0 else "failed", "rc": proc.returncode}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    lines = proc.stdout.strip().splitlines()
    try:
        out["result"] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        out["tail"] = (proc.stdout + proc.stderr)[-2000:]
    if proc.returncode != 0:
        out["error"] = (proc.stderr.strip().splitlines() or [""])[-1][:500]
    return out


def parts() -> dict[str, list[str]]:
    py = sys.executable
    out = {"gpu_tests": [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]}
    for name, args in BENCHES.items():
        out[name] = [py, "-m", "aquila.cli", "bench", *args]
    out["int4_and_generation"] = [py, "-c", INT4_AND_GENERATION]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all parts")
    ap.add_argument("--parts", nargs="+", help="a subset of: " + ", ".join(parts()))
    args = ap.parse_args(argv)
    names = args.parts or list(parts())
    unknown = set(names) - set(parts())
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; known: {', '.join(parts())}")
    device = cuda_device()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device}
    report["parts"] = {}
    if device is None:
        report["skipped"] = "no CUDA device: every GPU part skipped"
        report["parts"] = {n: {"status": "skipped"} for n in names}
    else:
        deadline = time.monotonic() + args.budget
        for name in names:
            left = deadline - time.monotonic()
            if left < 5:
                report["parts"][name] = {"status": "skipped", "why": "out of the time budget"}
                continue
            report["parts"][name] = run_part(parts()[name], left)
            print(f"{name}: {report['parts'][name]['status']}", file=sys.stderr, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
