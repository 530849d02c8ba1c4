"""Position encodings: sinusoidal (fixed), learned (a table) and rotary (RoPE).

Sinusoidal and learned encodings are *added* to the token embeddings, so both share one interface:
`forward(seq_len) -> (T, C)`. Rotary is not added at all: it rotates each query/key head vector by
an angle proportional to its position, so that q·k depends only on the offset between the two
positions (Su et al. 2021). `MultiHeadAttention(rotary_base=...)` applies it.

Written by hand because each is a few lines of arithmetic worth seeing; nothing here has parameters
except `LearnedPositionalEmbedding`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(num_positions: int, dim: int) -> Tensor:
    """The fixed table of Vaswani et al. (2017), shape (num_positions, dim).

    PE[pos, 2i] = sin(pos / 10000^(2i/dim)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/dim)).
    """
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (T, 1)
    rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(C/2),)
    angles = position * rates  # (T, ceil(C/2))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])  # an odd dim has one fewer cosine column
    return table


def _check_length(seq_len: int, max_position: int) -> None:
    if seq_len > max_position:
        raise ValueError(f"sequence length {seq_len} exceeds max_position={max_position}; "
                         f"raise max_position or truncate the inputs")


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sin/cos encodings; no parameters (the table is a non-persistent buffer, never saved)."""

    def __init__(self, dim: int, max_position: int):
        super().__init__()
        self.max_position = max_position
        self.register_buffer("table", sinusoidal_table(max_position, dim), persistent=False)

    def forward(self, seq_len: int) -> Tensor:
        """Encodings for positions 0..seq_len-1, shape (T, C)."""
        _check_length(seq_len, self.max_position)
        return self.table[:seq_len]


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position (GPT-2/BERT style), initialised N(0, 1) like nn.Embedding."""

    def __init__(self, dim: int, max_position: int):
        super().__init__()
        self.max_position = max_position
        self.embedding = nn.Embedding(max_position, dim)

    def forward(self, seq_len: int) -> Tensor:
        """Embeddings for positions 0..seq_len-1, shape (T, C)."""
        _check_length(seq_len, self.max_position)
        return self.embedding.weight[:seq_len]


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: a 90° turn of each (x1[i], x2[i]) pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE), in the "rotate half" layout used by GPT-NeoX and Llama.

    Dimension i of the first half and dimension i of the second half form a pair that is rotated by
    the angle pos * base^(-2i/hs). Rotating q at position m and k at position n gives
    q'·k' = Re[sum_i q_i conj(k_i) e^{i(m-n)θ_i}], a function of m - n only.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension; got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Rotate x (..., T, hs) by its positions (T,), default 0..T-1; returns the same shape."""
        if positions is None:
            positions = torch.arange(x.size(-2), device=x.device)
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq  # (T, hs/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, hs): both members of a pair share an angle
        return x * angles.cos().to(x.dtype) + rotate_half(x) * angles.sin().to(x.dtype)
