"""Parity with torch: our blocks, given torch's weights, match torch's outputs and gradients to 1e-5.

Each test builds the torch module, copies its weights into ours through an explicit name mapping that
must cover every one of our parameters, runs both on the same float32 inputs, backpropagates the same
random projection of the outputs, and compares outputs, input gradients and parameter gradients.
Torch modules run in training mode with dropout 0: that keeps them off their inference fast paths
(nested tensors, fused kernels) so both sides compute the textbook function.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tunelab.nn import (
    GRU, LSTM, RNN, GRUCell, LSTMCell, MultiHeadAttention, RNNCell, TransformerDecoderLayer,
    TransformerEncoderLayer,
)

TOL = dict(atol=1e-5, rtol=1e-5)

# (our parameter name, torch parameter name, which third of torch's packed q|k|v tensor or None)
Mapping = list[tuple[str, str, "int | None"]]


# ------------------------------------------------------------------------------------------ helpers

def _theirs(module: nn.Module, name: str, chunk: int | None, grad: bool = False) -> Tensor:
    tensor = module.get_parameter(name)
    tensor = tensor.grad if grad else tensor
    return tensor if chunk is None else tensor.chunk(3)[chunk]


def copy_weights(ours: nn.Module, theirs: nn.Module, mapping: Mapping) -> None:
    """Copy torch's weights into ours; the mapping must name every one of our parameters."""
    assert {name for name, _, _ in mapping} == {name for name, _ in ours.named_parameters()}
    with torch.no_grad():
        for our_name, their_name, chunk in mapping:
            ours.get_parameter(our_name).copy_(_theirs(theirs, their_name, chunk))


def assert_grads_match(ours: nn.Module, theirs: nn.Module, mapping: Mapping) -> None:
    for our_name, their_name, chunk in mapping:
        torch.testing.assert_close(ours.get_parameter(our_name).grad,
                                   _theirs(theirs, their_name, chunk, grad=True), **TOL, msg=our_name)


def backward_projection(*outputs: Tensor) -> None:
    """Backpropagate a fixed random linear function of the outputs (same seed on both sides)."""
    generator = torch.Generator().manual_seed(123)
    loss = sum((out * torch.randn(out.shape, generator=generator)).sum() for out in outputs)
    loss.backward()


def leaf_pair(*shape: int) -> tuple[Tensor, Tensor]:
    """The same random input twice, as two leaves, so each side gets its own .grad."""
    x = torch.randn(*shape)
    return x.clone().requires_grad_(), x.clone().requires_grad_()


def mha_mapping(ours: str, theirs: str, packed: bool) -> Mapping:
    """Our q/k/v/out projections <- torch's in_proj (packed) or q/k/v_proj_weight (kdim != embed_dim)."""
    rows: Mapping = []
    for i, name in enumerate("qkv"):
        weight = ("in_proj_weight", i) if packed else (f"{name}_proj_weight", None)
        rows.append((f"{ours}{name}_proj.weight", f"{theirs}{weight[0]}", weight[1]))
        rows.append((f"{ours}{name}_proj.bias", f"{theirs}in_proj_bias", i))
    rows += [(f"{ours}out_proj.weight", f"{theirs}out_proj.weight", None),
             (f"{ours}out_proj.bias", f"{theirs}out_proj.bias", None)]
    return rows


def same_name(*names: str) -> Mapping:
    return [(name, name, None) for name in names]


def causal_bool_mask(t: int) -> Tensor:
    return torch.ones(t, t, dtype=torch.bool).triu(1)  # True = blocked (torch's convention)


def right_padding(lengths: list[int], t: int) -> Tensor:
    return torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T) True = pad


# -------------------------------------------------------------------------------------------- attention

@pytest.mark.parametrize("mask_style", ["bool", "float", "causal_flag"])
def test_self_attention_matches_torch(mask_style: str) -> None:
    torch.manual_seed(0)
    b, t, e, h = 3, 6, 16, 4
    theirs = nn.MultiheadAttention(e, h, batch_first=True)
    ours = MultiHeadAttention(e, h)
    mapping = mha_mapping("", "", packed=True)
    copy_weights(ours, theirs, mapping)
    x_ours, x_theirs = leaf_pair(b, t, e)
    padding = right_padding([6, 4, 2], t)
    causal = causal_bool_mask(t)
    their_out, their_w = theirs(x_theirs, x_theirs, x_theirs, key_padding_mask=padding, attn_mask=causal)
    our_mask = {"bool": dict(attn_mask=causal),
                "float": dict(attn_mask=torch.zeros(t, t).masked_fill(causal, float("-inf"))),
                "causal_flag": dict(causal=True)}[mask_style]
    our_out, our_w = ours(x_ours, key_padding_mask=padding, need_weights=True, **our_mask)
    torch.testing.assert_close(our_out, their_out, **TOL)
    torch.testing.assert_close(our_w, their_w, **TOL)
    backward_projection(our_out)
    backward_projection(their_out)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    assert_grads_match(ours, theirs, mapping)


@pytest.mark.parametrize("kv_dim", [16, 12])
def test_cross_attention_matches_torch(kv_dim: int) -> None:
    torch.manual_seed(0)
    b, tq, tk, e, h = 2, 5, 7, 16, 2
    theirs = nn.MultiheadAttention(e, h, batch_first=True, kdim=kv_dim, vdim=kv_dim)
    ours = MultiHeadAttention(e, h, kdim=kv_dim, vdim=kv_dim)
    mapping = mha_mapping("", "", packed=kv_dim == e)
    copy_weights(ours, theirs, mapping)
    q_ours, q_theirs = leaf_pair(b, tq, e)
    kv_ours, kv_theirs = leaf_pair(b, tk, kv_dim)
    padding = right_padding([7, 3], tk)
    their_out, _ = theirs(q_theirs, kv_theirs, kv_theirs, key_padding_mask=padding)
    our_out, _ = ours(q_ours, kv_ours, kv_ours, key_padding_mask=padding)
    torch.testing.assert_close(our_out, their_out, **TOL)
    backward_projection(our_out)
    backward_projection(their_out)
    torch.testing.assert_close(q_ours.grad, q_theirs.grad, **TOL)
    torch.testing.assert_close(kv_ours.grad, kv_theirs.grad, **TOL)
    assert_grads_match(ours, theirs, mapping)


# ------------------------------------------------------------------------------------------ transformer

def encoder_layer_mapping() -> Mapping:
    return mha_mapping("self_attn.", "self_attn.", packed=True) + [
        ("ff.linear1.weight", "linear1.weight", None), ("ff.linear1.bias", "linear1.bias", None),
        ("ff.linear2.weight", "linear2.weight", None), ("ff.linear2.bias", "linear2.bias", None),
    ] + same_name("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("causal", [False, True])
def test_encoder_layer_matches_torch(norm_first: bool, activation: str, causal: bool) -> None:
    torch.manual_seed(0)
    b, t, e, h, ff = 3, 6, 16, 4, 32
    theirs = nn.TransformerEncoderLayer(e, h, ff, dropout=0.0, activation=activation, batch_first=True,
                                        norm_first=norm_first).train()
    ours = TransformerEncoderLayer(e, h, ff, dropout=0.0, activation=activation, norm_first=norm_first)
    mapping = encoder_layer_mapping()
    copy_weights(ours, theirs, mapping)
    x_ours, x_theirs = leaf_pair(b, t, e)
    padding = right_padding([6, 4, 1], t)
    real = ~padding[..., None]  # (B, T, 1): compare and backpropagate at real tokens only
    their_out = theirs(x_theirs, src_mask=causal_bool_mask(t) if causal else None, src_key_padding_mask=padding)
    our_out = ours(x_ours, key_padding_mask=padding, causal=causal)
    torch.testing.assert_close(our_out * real, their_out * real, **TOL)
    backward_projection(our_out * real)
    backward_projection(their_out * real)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    assert_grads_match(ours, theirs, mapping)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_matches_torch(norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    b, t, s, e, h, ff = 3, 5, 7, 16, 4, 32
    theirs = nn.TransformerDecoderLayer(e, h, ff, dropout=0.0, activation=activation, batch_first=True,
                                        norm_first=norm_first).train()
    ours = TransformerDecoderLayer(e, h, ff, dropout=0.0, activation=activation, norm_first=norm_first)
    mapping = (encoder_layer_mapping() + mha_mapping("multihead_attn.", "multihead_attn.", packed=True)
               + same_name("norm3.weight", "norm3.bias"))
    copy_weights(ours, theirs, mapping)
    x_ours, x_theirs = leaf_pair(b, t, e)
    mem_ours, mem_theirs = leaf_pair(b, s, e)
    padding, memory_padding = right_padding([5, 3, 2], t), right_padding([7, 7, 4], s)
    real = ~padding[..., None]  # (B, T, 1)
    their_out = theirs(x_theirs, mem_theirs, tgt_mask=causal_bool_mask(t), tgt_key_padding_mask=padding,
                       memory_key_padding_mask=memory_padding)
    our_out = ours(x_ours, mem_ours, key_padding_mask=padding, memory_key_padding_mask=memory_padding,
                   causal=True)
    torch.testing.assert_close(our_out * real, their_out * real, **TOL)
    backward_projection(our_out * real)
    backward_projection(their_out * real)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    torch.testing.assert_close(mem_ours.grad, mem_theirs.grad, **TOL)
    assert_grads_match(ours, theirs, mapping)


# ------------------------------------------------------------------------------------------ recurrent

CELL_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def rnn_mapping(num_layers: int, bidirectional: bool) -> Mapping:
    """layers.{l}.{d}.weight_ih <- weight_ih_l{l}[_reverse], and likewise for the other three."""
    return [(f"layers.{layer}.{d}.{p}", f"{p}_l{layer}{'_reverse' if d else ''}", None)
            for layer in range(num_layers) for d in range(2 if bidirectional else 1) for p in CELL_PARAMS]


def make_rnn_pair(kind: str, size_in: int, hidden: int, layers: int) -> tuple[nn.Module, nn.Module]:
    """(ours, torch's) bidirectional, batch-first recurrent stacks of one kind."""
    if kind.startswith("rnn"):
        nonlinearity = kind.split("_")[1]
        return (RNN(size_in, hidden, layers, nonlinearity=nonlinearity, bidirectional=True),
                nn.RNN(size_in, hidden, layers, nonlinearity=nonlinearity, batch_first=True, bidirectional=True))
    ours_cls, theirs_cls = {"lstm": (LSTM, nn.LSTM), "gru": (GRU, nn.GRU)}[kind]
    return (ours_cls(size_in, hidden, layers, bidirectional=True),
            theirs_cls(size_in, hidden, layers, batch_first=True, bidirectional=True))


def flat_state(state: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("padded", [False, True])
def test_recurrent_stack_matches_torch(kind: str, padded: bool) -> None:
    torch.manual_seed(0)
    b, t, size_in, hidden, layers = 4, 6, 5, 8, 2
    ours, theirs = make_rnn_pair(kind, size_in, hidden, layers)
    mapping = rnn_mapping(layers, bidirectional=True)
    copy_weights(ours, theirs, mapping)
    x_ours, x_theirs = leaf_pair(b, t, size_in)
    lengths = torch.tensor([6, 2, 5, 1]) if padded else torch.full((b,), t)
    h0 = torch.randn(layers * 2, b, hidden)  # a non-zero initial state exercises hx handling
    hx = (h0, torch.randn_like(h0)) if kind == "lstm" else h0

    packed = pack_padded_sequence(x_theirs, lengths, batch_first=True, enforce_sorted=False)
    their_packed, their_state = theirs(packed, hx)
    their_out, _ = pad_packed_sequence(their_packed, batch_first=True, total_length=t)
    our_out, our_state = ours(x_ours, hx, lengths=lengths)

    torch.testing.assert_close(our_out, their_out, **TOL)  # both are zero at padded steps
    for mine, torch_state in zip(flat_state(our_state), flat_state(their_state)):
        torch.testing.assert_close(mine, torch_state, **TOL)
    backward_projection(our_out, *flat_state(our_state))
    backward_projection(their_out, *flat_state(their_state))
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    assert_grads_match(ours, theirs, mapping)


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_cell_matches_torch(kind: str) -> None:
    torch.manual_seed(0)
    b, size_in, hidden = 3, 5, 7
    if kind.startswith("rnn"):
        nonlinearity = kind.split("_")[1]
        ours = RNNCell(size_in, hidden, nonlinearity=nonlinearity)
        theirs = nn.RNNCell(size_in, hidden, nonlinearity=nonlinearity)
    else:
        ours_cls, theirs_cls = {"lstm": (LSTMCell, nn.LSTMCell), "gru": (GRUCell, nn.GRUCell)}[kind]
        ours, theirs = ours_cls(size_in, hidden), theirs_cls(size_in, hidden)
    mapping = same_name(*CELL_PARAMS)
    copy_weights(ours, theirs, mapping)
    x_ours, x_theirs = leaf_pair(b, size_in)
    h = torch.randn(b, hidden)
    hx = (h, torch.randn(b, hidden)) if kind == "lstm" else h
    our_out, their_out = flat_state(ours(x_ours, hx)), flat_state(theirs(x_theirs, hx))
    for mine, torch_out in zip(our_out, their_out):
        torch.testing.assert_close(mine, torch_out, **TOL)
    backward_projection(*our_out)
    backward_projection(*their_out)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    assert_grads_match(ours, theirs, mapping)
