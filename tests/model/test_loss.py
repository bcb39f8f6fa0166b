"""The chunked cross-entropy equals the full-logits one: losses and gradients, fp32."""

from __future__ import annotations

import pytest
import torch

from aquila.model import get_preset
from aquila.model.loss import auto_chunk_tokens, linear_cross_entropy
from aquila.model.transformer import AquilaModel


def _grads(impl: str, h, w, t, chunk=0):
    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    losses = linear_cross_entropy(h, w, t, impl, chunk)
    # Non-uniform weights per token: the per-token gradient path, not only a sum.
    weights = torch.linspace(0.5, 1.5, losses.numel()).view(losses.shape)
    (losses * weights).sum().backward()
    return losses.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_equals_full(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 41, 32, generator=g)
    w = torch.randn(301, 32, generator=g) * 0.3
    t = torch.randint(0, 301, (3, 41), generator=g)
    t[0, :5] = -100  # ignored positions: loss 0, no gradient
    full = _grads("full", h, w, t)
    chunked = _grads("chunked", h, w, t, chunk)
    assert chunked[0].shape == (3, 41)
    assert (chunked[0][0, :5] == 0).all()
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_model_losses_and_gradients_match():
    cfg = get_preset("aquila-test")
    torch.manual_seed(0)
    model = AquilaModel(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 17))
    out = {}
    for impl in ("full", "chunked"):
        model.zero_grad()
        losses = model.token_losses(tokens[:, :-1], tokens[:, 1:], impl=impl, chunk_tokens=5)
        losses.sum().backward()
        out[impl] = (losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(out["chunked"][0], out["full"][0], rtol=1e-5, atol=1e-5)
    for name, grad in out["full"][1].items():
        torch.testing.assert_close(out["chunked"][1][name], grad, rtol=1e-5, atol=1e-5)


def test_chunked_under_compile():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 24, 16, generator=g)
    w = torch.randn(97, 16, generator=g)
    t = torch.randint(0, 97, (2, 24), generator=g)
    full = _grads("full", h, w, t)

    def step(h, w, t):
        return linear_cross_entropy(h, w, t, "chunked", 10)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    losses = compiled(hh, ww, t)
    (losses * torch.linspace(0.5, 1.5, losses.numel()).view(losses.shape)).sum().backward()
    for a, b in zip(full, (losses.detach(), hh.grad, ww.grad)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_chunked_never_holds_all_logits():
    """The autograd graph keeps per-token numbers, not a (tokens x vocab) tensor."""
    h = torch.randn(256, 8, requires_grad=True)
    w = torch.randn(1000, 8, requires_grad=True)
    t = torch.randint(0, 1000, (256,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda x: saved.append(x.numel()) or x, lambda x: x
    ):
        linear_cross_entropy(h, w, t, "chunked", 32).sum().backward()
    assert max(saved) <= w.numel() and sum(saved) < 256 * 1000 / 4


def test_auto_chunk_bounds_the_logits():
    assert auto_chunk_tokens(100_008) * 100_008 * 4 <= 64 * 2**20
    assert auto_chunk_tokens(8192) >= 1024


def test_unknown_impl_and_liger_off_cuda_refused():
    from aquila.errors import UserError

    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="chunked, full, liger"):
        linear_cross_entropy(h, w, t, "nope")
    with pytest.raises(UserError, match="CUDA"):
        linear_cross_entropy(h, w, t, "liger")


@pytest.mark.gpu
def test_liger_matches_chunked_on_cuda():
    pytest.importorskip("liger_kernel")
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 64, 128, generator=g).cuda()
    w = (torch.randn(5000, 128, generator=g) * 0.05).cuda()
    t = torch.randint(0, 5000, (4, 64), generator=g).cuda()

    def run(impl):
        hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        losses = linear_cross_entropy(hh, ww, t, impl)
        (losses.sum() / losses.numel()).backward()  # uniform weights, as the trainer's
        return losses.detach(), hh.grad, ww.grad

    for a, b in zip(run("chunked"), run("liger")):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
