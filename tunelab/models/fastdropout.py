"""Dropout whose random mask costs a fifth of torch's on a CPU.

On a CPU, `nn.Dropout` draws one Bernoulli sample per element from the default generator: for MiniLM
at batch 16 x 256 tokens that is about a fifth of a training step, most of it in the attention-probability
dropout (batch x heads x length x length elements per layer). The mask here is drawn from the same seeded
torch generator, but as full-range 64-bit integers read as four 16-bit words each, and an element is kept
when its word is at least a threshold. The drop probability is rounded to a multiple of 1/65536 (off by
at most 7.7e-6 from the configured one) and kept elements are scaled by 1 / (1 - that probability), so
the expected output equals the input exactly, as with `nn.Dropout`. The backward pass reuses the stored
boolean mask.

`use_fast_dropout(model)` swaps a model's `nn.Dropout` modules for `FastDropout` and, for transformers
models, routes attention through `attention_forward`, which uses torch's fused SDPA kernel when there is
no dropout (evaluation, or `attention_dropout: 0`) and otherwise the same arithmetic as the SDPA math
path with the fast mask. Nothing is renamed and no weight changes, so saved models are untouched.
"""
from __future__ import annotations

import math

import torch
from torch import nn

IMPLEMENTATION = "tunelab_sdpa"
_WORD = 1 << 16


def _quantised(p: float) -> tuple[int, float]:
    """The drop threshold over 16-bit words and the matching scale for kept elements."""
    k = round(p * _WORD)
    return -(_WORD // 2) + k, _WORD / (_WORD - k)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean mask, True with probability 1 - p (p rounded to a multiple of 1/65536)."""
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    threshold, _ = _quantised(p)
    return words.view(torch.int16)[:numel].view(shape) >= threshold


class _DropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        _, scale = _quantised(p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    return _DropoutFn.apply(x, p)


class FastDropout(nn.Dropout):
    """`nn.Dropout` with the cheaper mask; same `p`, same behaviour in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs):
    """A transformers attention function: SDPA without dropout, the SDPA math path with `fast_dropout`."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if dropout == 0.0 or not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query * scale, key.transpose(-1, -2))  # scaling q costs L/d times less than scores
    q_len, k_len = scores.shape[-2:]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if attention_mask is None and is_causal and q_len > 1:
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # as an additive bias: its backward is a plain pass-through
            attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype,
                                         device=scores.device).masked_fill_(~attention_mask, float("-inf"))
        scores.add_(attention_mask)  # in place: matmul's backward does not read its output
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    # Dropout on the B x H x L x L probabilities, with the 1 / (1 - p) scale moved to the B x H x L x d output.
    keep = keep_mask(probs.shape, dropout, probs.device)
    _, keep_scale = _quantised(dropout)
    out = torch.matmul(torch.where(keep, probs, 0), value).mul_(keep_scale)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def use_fast_dropout(model: nn.Module) -> int:
    """Swap `nn.Dropout` modules for `FastDropout` and route sdpa attention through `attention_forward`.

    Returns the number of dropout modules swapped.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            swapped += 1
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa":
            _register()
            config._attn_implementation = IMPLEMENTATION
    return swapped


def undo_fast_dropout(model: nn.Module) -> None:
    """Restore plain `nn.Dropout` and sdpa (before saving or handing the model to a user)."""
    for module in model.modules():
        if type(module) is FastDropout:
            module.__class__ = nn.Dropout
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) == IMPLEMENTATION:
            config._attn_implementation = "sdpa"
