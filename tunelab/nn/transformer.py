"""Transformer encoder and decoder layers and stacks (Vaswani et al. 2017), batch-first (B, T, C).

Post-norm (`norm_first=False`, the original):  x = LN(x + Sublayer(x))
Pre-norm  (`norm_first=True`, GPT-2 onwards):   x = x + Sublayer(LN(x)), plus one final LN after the stack.

Sub-layers are self attention, cross attention (decoder only) and the feed-forward block
linear2(dropout(act(linear1(x)))). Module names follow `torch.nn.TransformerEncoderLayer` /
`TransformerDecoderLayer` (self_attn, multihead_attn, norm1..3, dropout1..3; torch's linear1/linear2 live
in `ff`) so weights map across one to one; `tests/nn/test_parity.py` checks outputs and gradients.
Masks follow `tunelab.nn.attention` (bool True = blocked; key_padding_mask True = pad).
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from tunelab.nn.attention import MultiHeadAttention

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class _FeedForward(nn.Module):
    """The position-wise block shared by both layers: linear2(dropout(act(linear1(x))))."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, activation: str, bias: bool):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.activation = _activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))  # (B, T, C)


class TransformerEncoderLayer(nn.Module):
    """Self attention + feed-forward, each wrapped in a residual connection and a LayerNorm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 bias: bool = True, rotary_base: float | None = None):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout, bias, rotary_base=rotary_base)
        self.ff = _FeedForward(d_model, dim_feedforward, dropout, activation, bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _sa_block(self, x: Tensor, key_padding_mask: Tensor | None, attn_mask: Tensor | None,
                  causal: bool) -> Tensor:
        y, _ = self.self_attn(x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, causal=causal)
        return self.dropout1(y)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        """x (B, T, C); key_padding_mask (B, T) True = pad; returns (B, T, C)."""
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), key_padding_mask, attn_mask, causal)
            return x + self.dropout2(self.ff(self.norm2(x)))
        x = self.norm1(x + self._sa_block(x, key_padding_mask, attn_mask, causal))
        return self.norm2(x + self.dropout2(self.ff(x)))


class TransformerDecoderLayer(nn.Module):
    """Self attention over the target, cross attention to the encoder memory, then feed-forward."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 bias: bool = True, rotary_base: float | None = None):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout, bias, rotary_base=rotary_base)
        self.multihead_attn = MultiHeadAttention(d_model, nhead, dropout, bias)  # no rotary across sequences
        self.ff = _FeedForward(d_model, dim_feedforward, dropout, activation, bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def _sa_block(self, x: Tensor, key_padding_mask: Tensor | None, attn_mask: Tensor | None,
                  causal: bool) -> Tensor:
        y, _ = self.self_attn(x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, causal=causal)
        return self.dropout1(y)

    def _mha_block(self, x: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None,
                   memory_mask: Tensor | None) -> Tensor:
        y, _ = self.multihead_attn(x, memory, memory, key_padding_mask=memory_key_padding_mask,
                                   attn_mask=memory_mask)
        return self.dropout2(y)

    def forward(self, x: Tensor, memory: Tensor, key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, T, C) target; memory (B, S, C) encoder output; masks True = pad/blocked; returns (B, T, C).

        `key_padding_mask`/`attn_mask`/`causal` apply to self attention, `memory_*` to cross attention.
        """
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), key_padding_mask, attn_mask, causal)
            x = x + self._mha_block(self.norm2(x), memory, memory_key_padding_mask, memory_mask)
            return x + self.dropout3(self.ff(self.norm3(x)))
        x = self.norm1(x + self._sa_block(x, key_padding_mask, attn_mask, causal))
        x = self.norm2(x + self._mha_block(x, memory, memory_key_padding_mask, memory_mask))
        return self.norm3(x + self.dropout3(self.ff(x)))


class TransformerEncoder(nn.Module):
    """`num_layers` encoder layers; with norm_first a final LayerNorm (`norm`) closes the residual stream."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", norm_first: bool = False,
                 layer_norm_eps: float = 1e-5, bias: bool = True, rotary_base: float | None = None):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, norm_first,
                                    layer_norm_eps, bias, rotary_base) for _ in range(num_layers))
        # Pre-norm layers leave the residual stream un-normalised; post-norm layers already end in a LN.
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias) if norm_first else nn.Identity()

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        for layer in self.layers:
            x = layer(x, key_padding_mask, attn_mask, causal)
        return self.norm(x)


class TransformerDecoder(nn.Module):
    """`num_layers` decoder layers; with norm_first a final LayerNorm (`norm`) closes the residual stream."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", norm_first: bool = False,
                 layer_norm_eps: float = 1e-5, bias: bool = True, rotary_base: float | None = None):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, norm_first,
                                    layer_norm_eps, bias, rotary_base) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias) if norm_first else nn.Identity()

    def forward(self, x: Tensor, memory: Tensor, key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, T, C), memory (B, S, C) -> (B, T, C); masks as in TransformerDecoderLayer."""
        for layer in self.layers:
            x = layer(x, memory, key_padding_mask, memory_key_padding_mask, attn_mask, memory_mask, causal)
        return self.norm(x)
