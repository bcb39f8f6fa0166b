#!/usr/bin/env bash
# The GPU figures in one call (<= 8 minutes on one H100/H200): gpu-marked tests, the ~1.1B
# preset at sequence 4096 in bf16 (eager, compiled, chunked and fused losses, FP8), the 7B with
# activation checkpointing, the int4 CUDA path and generation tokens/s, into one JSON file.
# Without a CUDA device every part is recorded as skipped (exit 0). See bench/gpu_check.py.
#
#   bash bench/gpu_check.sh [--out FILE] [--budget SECONDS] [--parts NAME ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
