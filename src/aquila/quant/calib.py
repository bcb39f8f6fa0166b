"""Calibration tokens for GPTQ: an equal share of every sample source, cut into windows.

The train split is used by default: the held-out split is where bits per byte is measured, and
fitting the rounding to the very text it is scored on would flatter GPTQ.
"""

from __future__ import annotations

import torch

from aquila.errors import UserError
from aquila.tokenizer import Tokenizer


def calibration_tokens(
    tokenizer: Tokenizer, n_tokens: int, seq_len: int, split: str = "train", seed: int = 0
) -> torch.Tensor:
    """(B, seq_len) token ids, about ``n_tokens`` in all, mixed evenly over the sample sources."""
    from aquila.data.samples import load_sample_corpus

    if n_tokens < seq_len:
        raise UserError(f"--calib-tokens {n_tokens} is less than one window of {seq_len} tokens")
    sources = [s for s in load_sample_corpus(split) if s.documents]
    share = n_tokens // len(sources) + seq_len
    gen = torch.Generator().manual_seed(seed)
    windows: list[torch.Tensor] = []
    for src in sources:
        order = torch.randperm(len(src.documents), generator=gen).tolist()
        stream: list[int] = []
        for i in order:
            stream += tokenizer.encode(src.documents[i]) + [tokenizer.eos_id]
            if len(stream) >= share:
                break
        ids = torch.tensor(stream[: len(stream) // seq_len * seq_len], dtype=torch.long)
        windows += list(ids.view(-1, seq_len))
    if not windows:
        raise UserError("the sample corpus gave no calibration text")
    # Interleave the sources, then keep the requested number of windows.
    perm = torch.randperm(len(windows), generator=gen)
    keep = max(1, n_tokens // seq_len)
    return torch.stack([windows[i] for i in perm[:keep].tolist()])
