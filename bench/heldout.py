"""What the bench experiments share: held-out windows per source, and where a curve crosses a loss."""

from __future__ import annotations

import numpy as np
import torch


def heldout_sequences(
    tok, seq_len: int, per_source: int, sources: tuple[str, ...] | None = None
) -> dict[str, torch.Tensor]:
    """Equally many evenly spaced (seq_len + 1)-token windows from each held-out source: the whole
    held-out text is represented, not its first pages."""
    from aquila.data.samples import load_sample_corpus

    out = {}
    for source in load_sample_corpus("heldout"):
        if sources is not None and source.name not in sources:
            continue
        ids: list[int] = []
        for doc in source.documents:
            ids.extend(tok.encode(doc))
            ids.append(tok.eos_id)
        arr = np.asarray(ids, dtype=np.int64)
        n = len(arr) // (seq_len + 1)
        pick = np.linspace(0, n - 1, min(per_source, n)).astype(np.int64)
        out[source.name] = torch.from_numpy(arr[: n * (seq_len + 1)].reshape(n, seq_len + 1)[pick])
    return out


@torch.no_grad()
def heldout_losses(model, seqs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean next-token loss of ``model`` on each source's windows, in eval mode (then back to
    train mode)."""
    model.eval()
    out = {n: float(model.token_losses(x[:, :-1], x[:, 1:]).mean()) for n, x in seqs.items()}
    model.train()
    return out


def first_crossing(curve: list[dict], target: float, x: str, y: str) -> float | None:
    """The first ``x`` at which ``y`` reaches ``target`` (linear between points), or None."""
    prev = None
    for point in curve:
        if point[y] <= target:
            if prev is None:
                return float(point[x])
            frac = (prev[y] - target) / max(prev[y] - point[y], 1e-12)
            return prev[x] + frac * (point[x] - prev[x])
        prev = point
    return None
