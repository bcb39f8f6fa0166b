"""Cross-entropy of the output head, per token, without holding the (tokens x vocabulary) logits.

``linear_cross_entropy(h, weight, targets)`` equals
``F.cross_entropy(h @ weight.T, targets, reduction="none")`` (fp32 logits, ``-100`` ignored),
but computes the logits a chunk of tokens at a time: the forward pass keeps only one
log-sum-exp per token, and the backward pass recomputes each chunk's logits from the hidden
states and the head's weight (one more head matmul) to form that chunk's softmax gradient.
Peak memory for the loss is one chunk of fp32 logits instead of all of them and their gradient.

Plain PyTorch (an ``autograd.Function``), so it runs on CPU and CUDA, under ``torch.compile``
(dynamo traces both passes) and on the full tensors FSDP2 gathers for the root module. Per-token
losses are returned, so per-source losses are unchanged.

``impl="liger"`` uses Liger Kernel's fused linear cross-entropy on CUDA (optional dependency);
its backward scales the gradient it computed in the forward pass by one number, so it is exact
only when every token's loss weighs the same in the objective, as in the trainer's
``losses.sum() / tokens``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
IMPLS = ("chunked", "full", "liger")
# Auto chunk size: at most this many bytes of fp32 logits per chunk.
CHUNK_BYTES = 64 * 2**20


def auto_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk so one chunk of fp32 logits stays within ``CHUNK_BYTES``."""
    return max(64, CHUNK_BYTES // (4 * vocab_size) // 64 * 64)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int):  # type: ignore[override]
        n = h.shape[0]
        lse = torch.empty(n, device=h.device, dtype=torch.float32)
        target_logit = torch.empty(n, device=h.device, dtype=torch.float32)
        valid = targets != IGNORE
        safe = torch.where(valid, targets, 0)
        for s in range(0, n, chunk):
            logits = (h[s : s + chunk] @ weight.t()).float()
            lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
            target_logit[s : s + chunk] = logits.gather(1, safe[s : s + chunk, None]).squeeze(1)
        ctx.save_for_backward(h, weight, safe, valid, lse)
        ctx.chunk = chunk
        return torch.where(valid, lse - target_logit, 0.0)

    @staticmethod
    def backward(ctx, grad_losses):  # type: ignore[override]
        h, weight, safe, valid, lse = ctx.saved_tensors
        chunk = ctx.chunk
        # d loss_i / d logit_ij = softmax_ij - [j == target_i]; ignored tokens get no gradient.
        g = torch.where(valid, grad_losses.float(), 0.0)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        need_w = ctx.needs_input_grad[1]
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        n = h.shape[0]
        rows = torch.arange(min(chunk, n), device=h.device)
        for s in range(0, n, chunk):
            hc = h[s : s + chunk]
            m = hc.shape[0]
            # In place: one chunk of logits is the only (chunk x vocab) buffer alive.
            d = (hc @ weight.t()).float()
            d.sub_(lse[s : s + chunk, None]).exp_()
            d[rows[:m], safe[s : s + chunk]] -= 1.0
            d.mul_(g[s : s + chunk, None])
            d = d.to(h.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = d @ weight
            if need_w:
                grad_w += (d.t() @ hc).float()
        return grad_h, grad_w.to(weight.dtype) if need_w else None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    impl: str = "chunked",
    chunk_tokens: int = 0,
) -> torch.Tensor:
    """Per-token cross-entropy of ``h @ weight.T`` against ``targets`` (shape of ``targets``,
    fp32; ``-100`` ignored: loss 0). ``h``: (..., hidden); ``weight``: (vocab, hidden)."""
    shape = targets.shape
    flat_h = h.reshape(-1, h.shape[-1])
    flat_t = targets.reshape(-1)
    if impl == "full":
        logits = (flat_h @ weight.t()).float()
        return F.cross_entropy(logits, flat_t, reduction="none", ignore_index=IGNORE).view(shape)
    if torch.is_autocast_enabled(h.device.type):
        # The head's matmul in the autocast dtype, as nn.Linear would run it; the softmax in fp32.
        dtype = torch.get_autocast_dtype(h.device.type)
        flat_h, weight = flat_h.to(dtype), weight.to(dtype)
    if impl == "liger":
        return _liger(flat_h, weight, flat_t).view(shape)
    if impl != "chunked":
        raise ValueError(f"loss implementation must be one of {', '.join(IMPLS)}, got {impl!r}")
    chunk = chunk_tokens or auto_chunk_tokens(weight.shape[0])
    with torch.autocast(h.device.type, enabled=False):
        losses = _ChunkedLinearCrossEntropy.apply(flat_h, weight, flat_t, chunk)
    return losses.view(shape)


def liger_available() -> bool:
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except ImportError:
        return False
    return True


def _liger(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from aquila.errors import UserError

    if h.device.type != "cuda":
        raise UserError("train.loss = 'liger' needs a CUDA device (Liger Kernel is Triton)")
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError as exc:
        raise UserError(
            "train.loss = 'liger' needs Liger Kernel: pip install 'aquila[gpu]' "
            "(or train.loss = 'chunked', the same result in plain PyTorch)"
        ) from exc
    out = liger_fused_linear_cross_entropy(
        h, weight, targets, ignore_index=IGNORE, reduction="none"
    )
    return (out[0] if isinstance(out, tuple) else out).float()
