"""Recurrent cells (RNN, LSTM, GRU) and multi-layer, optionally bidirectional layers over padded batches.

The gate equations and the parameter layout are torch's, so weights copy across one to one
(`tests/nn/test_parity.py` checks outputs and gradients against torch.nn.RNN/LSTM/GRU and their cells):

    weight_ih (G*H, I), weight_hh (G*H, H), bias_ih (G*H,), bias_hh (G*H,), gates stacked in the order
    RNN:  h' = act(W_ih x + b_ih + W_hh h + b_hh)                                  (G = 1)
    LSTM: i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh)            (G = 4)
          c' = f * c + i * g,  h' = o * tanh(c')
    GRU:  r, z = σ(W_i[r|z] x + b_i[r|z] + W_h[r|z] h + b_h[r|z])                   (G = 3)
          n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h

Padding: the layers take `lengths` (B,) or a `mask` (B, T) of real tokens. A padded step leaves the
state untouched and outputs zeros, so the final state is the one after each sequence's last real token,
and the backward direction (which walks t = T-1 .. 0) starts at each sequence's true end. This is what
torch gets from `pack_padded_sequence`, without packing, and it also works for left padding.

Layers are always batch-first: x (B, T, I) -> output (B, T, D*H), h_n (L*D, B, H) ordered
[layer0 forward, layer0 backward, layer1 forward, ...] like torch. Written by hand so the recurrences
are readable; the Python loop over time makes them slower than cuDNN/oneDNN, which is fine on small models.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, ...]  # (h,) for RNN/GRU, (h, c) for LSTM; each (B, H)


class _Cell(nn.Module):
    """Parameters in torch's layout plus the two projections every cell needs.

    Subclasses set `num_gates` and `state_size` and implement `step(xw, state)`, where xw is the
    already computed input projection W_ih x + b_ih, so a layer can project all time steps at once.
    """

    num_gates: int
    state_size: int

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        gates = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(gates)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/√H, 1/√H) for every weight and bias, as torch does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (..., G*H)

    def hidden_projection(self, h: Tensor) -> Tensor:
        return F.linear(h, self.weight_hh, self.bias_hh)  # (B, G*H)

    def zero_state(self, batch_size: int, like: Tensor) -> State:
        return tuple(like.new_zeros(batch_size, self.hidden_size) for _ in range(self.state_size))

    def step(self, xw: Tensor, state: State) -> State:
        raise NotImplementedError


class RNNCell(_Cell):
    """Elman cell: h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh). forward(x (B, I), h (B, H)) -> h'."""

    num_gates, state_size = 1, 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity '{nonlinearity}'; known: tanh, relu")
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity

    def step(self, xw: Tensor, state: State) -> State:
        pre = xw + self.hidden_projection(state[0])  # (B, H)
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre),)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        state = (h,) if h is not None else self.zero_state(x.size(0), x)
        return self.step(self.input_projection(x), state)[0]


class LSTMCell(_Cell):
    """Long short-term memory cell, gates i, f, g, o. forward(x (B, I), (h, c)) -> (h', c')."""

    num_gates, state_size = 4, 2

    def step(self, xw: Tensor, state: State) -> State:
        h, c = state
        i, f, g, o = (xw + self.hidden_projection(h)).chunk(4, dim=-1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        state = hx if hx is not None else self.zero_state(x.size(0), x)
        h, c = self.step(self.input_projection(x), state)
        return h, c


class GRUCell(_Cell):
    """Gated recurrent unit, gates r, z, n. forward(x (B, I), h (B, H)) -> h'."""

    num_gates, state_size = 3, 1

    def step(self, xw: Tensor, state: State) -> State:
        h = state[0]
        x_r, x_z, x_n = xw.chunk(3, dim=-1)  # 3 x (B, H)
        h_r, h_z, h_n = self.hidden_projection(h).chunk(3, dim=-1)  # 3 x (B, H)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)  # the reset gate scales the *projected* hidden state, as in torch
        return ((1 - z) * n + z * h,)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        state = (h,) if h is not None else self.zero_state(x.size(0), x)
        return self.step(self.input_projection(x), state)[0]


def _run_direction(cell: _Cell, x: Tensor, valid: Tensor, state: State, reverse: bool) -> tuple[Tensor, State]:
    """Run one cell over x (B, T, I), skipping padded steps; returns (outputs (B, T, H), final state)."""
    xw = cell.input_projection(x)  # (B, T, G*H): the input half of every gate, all steps in one matmul
    steps = range(x.size(1) - 1, -1, -1) if reverse else range(x.size(1))
    outputs = []
    for t in steps:
        real = valid[:, t, None]  # (B, 1)
        new = cell.step(xw[:, t], state)
        state = tuple(torch.where(real, n, s) for n, s in zip(new, state))  # padding leaves the state alone
        outputs.append(new[0].masked_fill(~real, 0.0))  # (B, H); zeros at padding, like pad_packed_sequence
    if reverse:
        outputs.reverse()  # back to time order
    return torch.stack(outputs, dim=1), state


def _valid_mask(x: Tensor, lengths: Tensor | None, mask: Tensor | None) -> Tensor:
    """(B, T) bool, True at real steps, from `mask` or `lengths`; all True when neither is given."""
    b, t = x.shape[:2]
    if mask is not None:
        return mask.to(device=x.device, dtype=torch.bool)
    if lengths is None:
        return torch.ones(b, t, dtype=torch.bool, device=x.device)
    lengths = torch.as_tensor(lengths, device=x.device)
    if int(lengths.max()) > t:
        raise ValueError(f"a length of {int(lengths.max())} exceeds the {t} time steps of the input")
    return torch.arange(t, device=x.device)[None, :] < lengths[:, None]


class _RecurrentStack(nn.Module):
    """Layers x directions of one cell type; the shared machinery behind RNN, LSTM and GRU.

    `self.layers[l][d]` is the cell of layer l, direction d (0 forward, 1 backward); its weight_ih is
    torch's `weight_ih_l{l}` (d = 0) or `weight_ih_l{l}_reverse` (d = 1), and likewise for the others.
    """

    def __init__(self, make_cell: Callable[[int], _Cell], input_size: int, hidden_size: int, num_layers: int,
                 dropout: float, bidirectional: bool):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.num_directions, self.dropout = 2 if bidirectional else 1, dropout
        self.layers = nn.ModuleList(
            nn.ModuleList(make_cell(input_size if layer == 0 else hidden_size * self.num_directions)
                          for _ in range(self.num_directions))
            for layer in range(num_layers))

    def _run(self, x: Tensor, hx: State | None, lengths: Tensor | None,
             mask: Tensor | None) -> tuple[Tensor, State]:
        """x (B, T, I); hx: tuple of (L*D, B, H). Returns (output (B, T, D*H), tuple of (L*D, B, H))."""
        valid = _valid_mask(x, lengths, mask)  # (B, T)
        finals: list[State] = []
        for layer, cells in enumerate(self.layers):
            if layer > 0:  # dropout between layers, not after the last one (torch's rule)
                x = F.dropout(x, self.dropout, self.training)
            outputs = []
            for direction, cell in enumerate(cells):
                index = layer * self.num_directions + direction  # torch's h_n order
                state = cell.zero_state(x.size(0), x) if hx is None else tuple(h[index] for h in hx)
                out, final = _run_direction(cell, x, valid, state, reverse=direction == 1)
                outputs.append(out)
                finals.append(final)
            x = torch.cat(outputs, dim=-1)  # (B, T, D*H)
        return x, tuple(torch.stack(parts) for parts in zip(*finals))  # each (L*D, B, H)


class RNN(_RecurrentStack):
    """Multi-layer Elman RNN. forward(x (B, T, I), h0 (L*D, B, H)?) -> (output (B, T, D*H), h_n (L*D, B, H))."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, dropout: float = 0.0, bidirectional: bool = False):
        super().__init__(lambda size: RNNCell(size, hidden_size, bias, nonlinearity),
                         input_size, hidden_size, num_layers, dropout, bidirectional)

    def forward(self, x: Tensor, hx: Tensor | None = None, lengths: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`lengths` (B,) or `mask` (B, T) (True = real token) mark padding; see the module docstring."""
        output, (h_n,) = self._run(x, None if hx is None else (hx,), lengths, mask)
        return output, h_n


class GRU(_RecurrentStack):
    """Multi-layer GRU. forward(x (B, T, I), h0 (L*D, B, H)?) -> (output (B, T, D*H), h_n (L*D, B, H))."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 dropout: float = 0.0, bidirectional: bool = False):
        super().__init__(lambda size: GRUCell(size, hidden_size, bias),
                         input_size, hidden_size, num_layers, dropout, bidirectional)

    def forward(self, x: Tensor, hx: Tensor | None = None, lengths: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`lengths` (B,) or `mask` (B, T) (True = real token) mark padding; see the module docstring."""
        output, (h_n,) = self._run(x, None if hx is None else (hx,), lengths, mask)
        return output, h_n


class LSTM(_RecurrentStack):
    """Multi-layer LSTM. forward(x (B, T, I), (h0, c0)?) -> (output (B, T, D*H), (h_n, c_n) each (L*D, B, H))."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 dropout: float = 0.0, bidirectional: bool = False):
        super().__init__(lambda size: LSTMCell(size, hidden_size, bias),
                         input_size, hidden_size, num_layers, dropout, bidirectional)

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None, lengths: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`lengths` (B,) or `mask` (B, T) (True = real token) mark padding; see the module docstring."""
        output, (h_n, c_n) = self._run(x, hx, lengths, mask)
        return output, (h_n, c_n)
