"""Bits per byte: a tokenizer-independent measure of how well a model predicts held-out text."""

from __future__ import annotations

import math
from collections import Counter

import torch

from aquila.model.transformer import AquilaModel
from aquila.tokenizer import Tokenizer


@torch.no_grad()
def bits_per_byte(
    model: AquilaModel,
    tokenizer: Tokenizer,
    texts: list[str],
    seq_len: int | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Summed next-token loss over ``texts`` (each ended by EOS) in bits, divided by UTF-8 bytes.

    Documents are concatenated into one stream and cut into windows of ``seq_len``; each window
    predicts its own tokens, so only the first token of each window lacks context (as in training).
    """
    seq_len = seq_len or model.cfg.max_seq_len
    stream: list[int] = []
    for ids in tokenizer.encode_batch(texts):
        stream.extend(ids)
        stream.append(tokenizer.eos_id)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if n_bytes == 0 or len(stream) < 2:
        raise ValueError("bits_per_byte needs non-empty text")
    data = torch.tensor(stream, dtype=torch.long)
    device = model.embed_tokens.weight.device
    was_training = model.training
    model.eval()
    total_nats, total_tokens = 0.0, 0
    starts = list(range(0, len(stream) - 1, seq_len))
    for i in range(0, len(starts), batch_size):
        group = starts[i : i + batch_size]
        width = min(seq_len, max(len(stream) - 1 - s for s in group))
        inp = torch.zeros(len(group), width, dtype=torch.long)
        tgt = torch.full((len(group), width), -100, dtype=torch.long)
        for row, s in enumerate(group):
            n = min(seq_len, len(stream) - 1 - s)
            inp[row, :n] = data[s : s + n]
            tgt[row, :n] = data[s + 1 : s + 1 + n]
        losses = model.token_losses(inp.to(device), tgt.to(device))
        total_nats += losses.sum().item()
        total_tokens += int((tgt >= 0).sum())
    model.train(was_training)
    bits = total_nats / math.log(2)
    return {
        "bpb": bits / n_bytes,
        "bytes": n_bytes,
        "tokens": total_tokens,
        "loss": total_nats / total_tokens,
    }


def unigram_bpb(texts: list[str]) -> float:
    """Entropy of the byte-unigram distribution of ``texts``: the bpb of a context-free model."""
    counts: Counter[int] = Counter()
    for t in texts:
        counts.update(t.encode("utf-8"))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())
