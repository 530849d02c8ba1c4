"""Cross-entropy of a linear projection onto a large vocabulary, computed in chunks of rows.

For a causal LM the last step of the loss is `cross_entropy(hidden @ W.T, targets)` with W the
(vocabulary x hidden) output embedding. Done the plain way it materialises N x V float32 logits (N
trained positions, V = 49,152 for SmolLM2: 300 MB for 1,600 positions), a log-softmax of the same size,
and in the backward pass a zero-filled gradient of that size again, then the log-softmax backward: about a
quarter of a LoRA step on a CPU.

Here the forward pass walks the rows in chunks: logits of one chunk, their log-sum-exp, the loss, and at
once the gradient of the loss with respect to the logits (softmax minus the target distribution), which is
multiplied back to the gradient for the hidden states (and, when W trains, accumulated into W's gradient).
Nothing of size N x V outlives a chunk. The backward pass only scales the stored gradients by the incoming
one. Loss and gradients equal the plain computation up to float rounding (tested).

Under autocast the two matrix products run in the autocast dtype, as a plain `nn.Linear` would; the
log-sum-exp and the loss are always float32.
"""
from __future__ import annotations

import torch

# Rows per chunk: keeps a chunk's float32 logits around 32 MB (167 rows for V = 49,152).
CHUNK_ELEMENTS = 1 << 23


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _chunks(n: int, vocab: int):
    """(start, stop) row ranges of the chunks."""
    rows = max(1, CHUNK_ELEMENTS // max(1, vocab))
    return ((start, min(n, start + rows)) for start in range(0, n, rows))


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float32 logits of one chunk of rows (the product in the rows' dtype)."""
    logits = (h @ w.T).float()
    if bias is not None:
        logits += bias.float()
    return logits


def _chunk_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of a chunk of float32 logits, and the log-sum-exp per row."""
    lse = torch.logsumexp(logits, dim=-1)
    nll = lse - logits.gather(1, targets[:, None]).squeeze(1)
    if smoothing:
        nll = (1.0 - smoothing) * nll + smoothing * (lse - logits.mean(dim=-1))
    return nll.sum(), lse


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, smoothing: float, dtype: torch.dtype):
        n, vocab = hidden.shape[0], weight.shape[0]
        h_all, w = hidden.to(dtype), weight.to(dtype)
        want_w, want_b = ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        grad_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start, stop in _chunks(n, vocab):
            h, t = h_all[start:stop], targets[start:stop]
            logits = _chunk_logits(h, w, bias)
            loss, lse = _chunk_loss(logits, t, smoothing)
            total += loss
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(len(t), device=t.device), t] -= 1.0 - smoothing
            if smoothing:
                grad -= smoothing / vocab
            if grad_bias is not None:
                grad_bias += grad.sum(0)
            grad = grad.to(dtype)
            grad_hidden[start:stop] = grad @ w
            if grad_weight is not None:
                grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if grad_weight is not None else None
        gb = (grad_bias * grad_out).to(ctx.weight_dtype) if grad_bias is not None else None
        return grad_hidden * grad_out.to(grad_hidden.dtype), gw, gb, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """sum over rows of cross_entropy(hidden @ weight.T + bias, targets), without N x V tensors.

    `hidden` (N, H), `weight` (V, H), `targets` (N,) in [0, V). Returns a float32 scalar.
    """
    dtype = _compute_dtype(hidden)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if needs_grad:
        with torch.autocast(hidden.device.type, enabled=False):
            return _LinearCrossEntropy.apply(hidden, weight, bias, targets, label_smoothing, dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    h_all, w = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        for start, stop in _chunks(hidden.shape[0], weight.shape[0]):
            total += _chunk_loss(_chunk_logits(h_all[start:stop], w, bias), targets[start:stop],
                                 label_smoothing)[0]
    return total
