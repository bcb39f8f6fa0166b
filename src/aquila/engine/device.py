"""Device, precision and peak-throughput facts used by the trainer and the benchmark."""

from __future__ import annotations

import resource
import sys

import torch

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets.
_GPU_PEAKS = [
    ("H200", 989e12),
    ("H100", 989e12),  # SXM; the PCIe card is lower and is matched below first
    ("A800", 312e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("4090", 165e12),
]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype for the forward pass, or None for plain fp32."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if dtype in ("float32", "fp32"):
        return None
    if dtype in ("bfloat16", "bf16"):
        return torch.bfloat16
    raise ValueError(f"train.dtype must be auto, float32 or bfloat16, got {dtype!r}")


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known GPU; None where the peak is unknown (CPU: none rather than wrong)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756e12
    for key, value in _GPU_PEAKS:
        if key in name:
            return value
    return None


def max_rss_bytes() -> int:
    """The process's maximum resident set size so far.

    On Linux the high-water mark of its own address space (``VmHWM``): ``getrusage``'s
    ``ru_maxrss`` also keeps the size of the process it was forked from (a launcher, a test
    runner) and would report that parent's size for a small child."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process on ``device``: CUDA ``max_memory_allocated``, else the
    process's maximum RSS (on CPU everything the process holds, Python and torch included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return max_rss_bytes()


def memory_figures(device: torch.device) -> dict[str, int]:
    """The peak so far as users read it: on CUDA allocated and reserved bytes, on CPU max RSS."""
    if device.type == "cuda":
        return {
            "bytes": torch.cuda.max_memory_allocated(device),
            "reserved_bytes": torch.cuda.max_memory_reserved(device),
        }
    return {"bytes": max_rss_bytes()}
