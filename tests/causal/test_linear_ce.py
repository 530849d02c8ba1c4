"""The chunked linear cross-entropy equals the plain `cross_entropy(hidden @ W.T + b)`: loss and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.train import linear_ce
from tunelab.train.linear_ce import linear_cross_entropy


def problem(n=37, hidden=16, vocab=101, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(vocab, generator=g) * 0.1).requires_grad_() if bias else None
    t = torch.randint(0, vocab, (n,), generator=g)
    return h, w, b, t


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, [x for x in tensors if x is not None])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_all_gradients_equal_the_plain_computation(monkeypatch, smoothing, bias):
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", 10 * 101)  # 10 rows per chunk: 4 chunks, the last short
    h, w, b, t = problem(bias=bias)
    plain = F.cross_entropy(F.linear(h, w, b), t, reduction="sum", label_smoothing=smoothing)
    chunked = linear_cross_entropy(h, w, b, t, smoothing)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, atol=1e-4, rtol=1e-6)
    for got, want in zip(grads_of(3.0 * chunked, (h, w, b)), grads_of(3.0 * plain, (h, w, b))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_frozen_weight_gets_no_gradient_and_hidden_still_does():
    h, w, b, t = problem()
    w.requires_grad_(False)
    b.requires_grad_(False)
    loss = linear_cross_entropy(h, w, b, t)
    loss.backward()
    plain_h = h.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(plain_h, w, b), t, reduction="sum").backward()
    assert w.grad is None and b.grad is None
    torch.testing.assert_close(h.grad, plain_h.grad, atol=1e-5, rtol=1e-5)


def test_without_gradients_only_the_loss_is_computed():
    h, w, b, t = problem()
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, b, t)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(h, w, b), t, reduction="sum").detach(),
                               atol=1e-4, rtol=1e-6)


def test_under_bf16_autocast_it_matches_a_bf16_linear():
    h, w, _, t = problem(bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = linear_cross_entropy(h, w, None, t)
        plain = F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")
    torch.testing.assert_close(chunked, plain, atol=1e-2, rtol=1e-3)
    gh, gw = grads_of(chunked, (h, w))
    ph, pw = grads_of(plain, (h, w))
    assert gh.dtype == torch.float32 and gw.dtype == torch.float32
    torch.testing.assert_close(gh, ph, atol=3e-2, rtol=3e-2)  # bf16 products: about 3 significant digits
    torch.testing.assert_close(gw, pw, atol=3e-2, rtol=3e-2)
