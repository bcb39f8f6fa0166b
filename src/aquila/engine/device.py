"""Device, precision and peak-throughput facts used by the trainer and the benchmark."""

from __future__ import annotations

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


def peak_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return None
