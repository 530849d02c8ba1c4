"""Scaled dot-product and multi-head attention, written out from the equations.

    Attention(Q, K, V) = softmax(Q Kᵀ / √hs + M) V
    MultiHead(x_q, x_kv) = concat_h(Attention(x_q W_q^h, x_kv W_k^h, x_kv W_v^h)) W_o

Written by hand rather than wrapping `torch.nn.MultiheadAttention` so that masking, the rotary hook and
the shapes are in plain sight; `tests/nn/test_parity.py` checks it against torch to 1e-5.

Mask conventions follow `torch.nn.MultiheadAttention` (not `F.scaled_dot_product_attention`):
- a boolean `attn_mask` is True where attention is *blocked*; a float `attn_mask` is *added* to the scores;
- `key_padding_mask` (B, Tk) is True at padding keys;
- `causal=True` blocks every key after the query's own position.
A query that may see no key at all (a left-padding position under a causal mask, say) gets all-zero
weights and a zero output instead of NaN.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunelab.nn.positions import RotaryEmbedding


def _blocked(attn_mask: Tensor | None, key_padding_mask: Tensor | None, causal: bool,
             tq: int, tk: int, device: torch.device) -> Tensor | None:
    """All boolean masks merged into one, broadcastable to (B, nh, Tq, Tk), True = blocked; None if none."""
    masks = []
    if causal:
        # Query i sits at absolute position i + (Tk - Tq): aligned bottom-right, so a query block that is
        # the tail of the keys (Tq < Tk) still sees its whole past. With Tq == Tk this is "j > i".
        masks.append(torch.ones(tq, tk, dtype=torch.bool, device=device).triu(tk - tq + 1))  # (Tq, Tk)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        masks.append(attn_mask)  # (Tq, Tk) or (B|1, nh|1, Tq, Tk)
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be bool (True = padding); got {key_padding_mask.dtype}. "
                            f"From a Hugging Face attention_mask use `attention_mask == 0`")
        masks.append(key_padding_mask[:, None, None, :])  # (B, 1, 1, Tk)
    if not masks:
        return None
    blocked = masks[0]
    for mask in masks[1:]:
        blocked = blocked | mask
    return blocked


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                                 key_padding_mask: Tensor | None = None, causal: bool = False,
                                 dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √hs + mask) v, with dropout on the attention weights.

    q (B, nh, Tq, hs), k (B, nh, Tk, hs), v (B, nh, Tk, hv). attn_mask: (Tq, Tk) or broadcastable to
    (B, nh, Tq, Tk), bool (True = blocked) or float (added). key_padding_mask: (B, Tk) bool, True = pad.
    Returns (output (B, nh, Tq, hv), weights (B, nh, Tq, Tk)); the weights are the ones applied to v.
    """
    tq, tk = q.size(-2), k.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    if attn_mask is not None and attn_mask.is_floating_point():
        scores = scores + attn_mask
    blocked = _blocked(attn_mask, key_padding_mask, causal, tq, tk, q.device)
    if blocked is not None:
        # The dtype's lowest value rather than -inf: exp() of it is exactly 0 next to any visible key,
        # and a row with every key blocked stays finite (uniform) instead of 0/0 = NaN, then is zeroed.
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)  # (B, nh, Tq, Tk)
    if blocked is not None:
        weights = weights.masked_fill(blocked.all(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights  # (B, nh, Tq, hv)


class MultiHeadAttention(nn.Module):
    """Multi-head attention for self attention (`key`/`value` omitted) or cross attention.

    Parameters mirror torch's layout: q_proj, k_proj, v_proj, out_proj (torch's `in_proj_weight` is the
    three stacked). `kdim`/`vdim` give keys and values their own input width (cross attention).
    `rotary_base` turns on rotary position embedding of queries and keys (positions 0..T-1 of each
    sequence; meant for self attention).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, rotary_base: float | None = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.head_dim, self.dropout = num_heads, embed_dim // num_heads, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, rotary_base) if rotary_base is not None else None

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                causal: bool = False, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """query (B, Tq, C); key (B, Tk, kdim) and value (B, Tk, vdim) default to query (self attention).

        Returns (output (B, Tq, C), weights averaged over heads (B, Tq, Tk) if need_weights else None).
        """
        key = query if key is None else key
        value = key if value is None else value
        q = self._split_heads(self.q_proj(query))  # (B, nh, Tq, hs)
        k = self._split_heads(self.k_proj(key))  # (B, nh, Tk, hs)
        v = self._split_heads(self.v_proj(value))  # (B, nh, Tk, hs)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y, weights = scaled_dot_product_attention(q, k, v, attn_mask, key_padding_mask, causal,
                                                  self.dropout if self.training else 0.0)
        b, _, tq, _ = y.shape
        y = y.transpose(1, 2).reshape(b, tq, self.num_heads * self.head_dim)  # (B, Tq, C): heads side by side
        return self.out_proj(y), weights.mean(dim=1) if need_weights else None
