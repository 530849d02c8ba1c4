"""The scratch models really learn: small synthetic tasks, fixed seeds, AdamW, a few hundred steps.

Each task is chosen so that a model which ignores order, position or content cannot pass:
- classifiers: is marker A before marker B in a random, variably padded sequence? (a bag of words is at 50%)
- GPT, cyclic grammar: 1 2 1 3 4 3 repeated from a random phase; the next token depends on the last two
- GPT, copy: x1..x6 SEP x1..x6; the second half is unseen content that must be looked up by position
- seq2seq, reverse: x1..x6 -> x6..x1 EOS
Held-out data come from a different seed than the training batches. Each test takes a few seconds on
one CPU thread (see tests/nn/conftest.py).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from tunelab.nn import build_scratch_model

Batch = dict[str, torch.Tensor]
PAD = 0


def fit(model: torch.nn.Module, make_batch: Callable[[int, torch.Generator], Batch], steps: int,
        lr: float, batch_size: int = 64) -> None:
    """Train on fresh random batches with AdamW, then leave the model in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        loss = model(**make_batch(batch_size, generator)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def held_out(make_batch: Callable[[int, torch.Generator], Batch], n: int) -> Batch:
    return make_batch(n, torch.Generator().manual_seed(2))


# ------------------------------------------------------------------------- classification: A before B?

A, B, CLS_VOCAB, MIN_LEN, MAX_LEN = 1, 2, 10, 6, 12  # tokens 3..9 are filler


def order_batch(n: int, generator: torch.Generator) -> Batch:
    """Right-padded random sequences holding A and B once each; label 1 when A comes first."""
    length = torch.randint(MIN_LEN, MAX_LEN + 1, (n, 1), generator=generator)
    pad = torch.arange(MAX_LEN)[None, :] >= length  # (n, T)
    ids = torch.randint(3, CLS_VOCAB, (n, MAX_LEN), generator=generator).masked_fill(pad, PAD)
    # two distinct random real positions: the two smallest random keys, with padding keyed last
    keys = torch.rand(n, MAX_LEN, generator=generator).masked_fill(pad, 2.0)
    first, second = keys.argsort(dim=1)[:, :2].unbind(dim=1)  # (n,) each
    rows = torch.arange(n)
    ids[rows, first], ids[rows, second] = A, B
    return {"input_ids": ids, "attention_mask": (~pad).long(), "labels": (first < second).long()}


@pytest.mark.parametrize("kind,sizes", [
    ("lstm", dict(embed_dim=16, hidden_size=32, bidirectional=False)),
    ("transformer", dict(hidden_size=32, num_heads=4, ffn_size=64, position="learned")),
    ("transformer", dict(hidden_size=32, num_heads=4, ffn_size=64, position="sinusoidal")),
    ("transformer", dict(hidden_size=32, num_heads=4, ffn_size=64, position="rotary")),
], ids=["lstm", "transformer-learned", "transformer-sinusoidal", "transformer-rotary"])
def test_classifier_learns_which_marker_comes_first(kind: str, sizes: dict) -> None:
    torch.manual_seed(0)
    model = build_scratch_model(kind, CLS_VOCAB, 2, num_layers=1 if kind == "lstm" else 2, dropout=0.1,
                                **({"max_position": MAX_LEN} if kind == "transformer" else {}), **sizes)
    fit(model, order_batch, steps=200, lr=1e-2 if kind == "lstm" else 3e-3)
    test = held_out(order_batch, 1000)
    with torch.no_grad():
        predicted = model(test["input_ids"], test["attention_mask"]).logits.argmax(dim=-1)
    accuracy = (predicted == test["labels"]).float().mean().item()
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f}"


# ----------------------------------------------------------------------------------- language models

GPT_SIZES = dict(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position=16, dropout=0.0)
CYCLE, CYCLE_LEN = torch.tensor([1, 2, 1, 3, 4, 3]), 16


def cycle_batch(n: int, generator: torch.Generator) -> Batch:
    """The cycle 1 2 1 3 4 3 from a random phase. Every bigram of the cycle is unique, so each token
    from the third on is determined by the two before it; the second token is not (1 and 3 occur twice),
    so that one target is masked out (-100) and the loss can honestly reach ~0."""
    start = torch.randint(0, len(CYCLE), (n, 1), generator=generator)
    ids = CYCLE[(start + torch.arange(CYCLE_LEN)) % len(CYCLE)]  # (n, T)
    labels = ids.clone()
    labels[:, 1] = -100
    return {"input_ids": ids, "labels": labels}


def test_gpt_learns_a_cyclic_grammar() -> None:
    torch.manual_seed(0)
    model = build_scratch_model("gpt", 5, None, position="learned", **GPT_SIZES)
    fit(model, cycle_batch, steps=200, lr=3e-3, batch_size=32)
    with torch.no_grad():
        loss = model(**held_out(cycle_batch, 256)).loss.item()
    assert loss < 0.05, f"held-out loss {loss:.4f}"
    continued = model.generate(torch.tensor([[2, 1], [3, 1], [4, 3]]), max_new_tokens=8)
    assert continued.tolist() == [[2, 1, 3, 4, 3, 1, 2, 1, 3, 4], [3, 1, 2, 1, 3, 4, 3, 1, 2, 1],
                                  [4, 3, 1, 2, 1, 3, 4, 3, 1, 2]]


SEP, COPY_VOCAB, COPY_LEN = 1, 12, 6  # content tokens are 2..11


def copy_batch(n: int, generator: torch.Generator) -> Batch:
    """x1..x6 SEP x1..x6 with random x; only the copy is scored (the first half is unpredictable)."""
    prefix = torch.randint(2, COPY_VOCAB, (n, COPY_LEN), generator=generator)
    ids = torch.cat([prefix, torch.full((n, 1), SEP), prefix], dim=1)  # (n, 13)
    labels = ids.clone()
    labels[:, : COPY_LEN + 1] = -100
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_gpt_learns_to_copy(position: str) -> None:
    torch.manual_seed(0)
    model = build_scratch_model("gpt", COPY_VOCAB, None, position=position, **GPT_SIZES)
    fit(model, copy_batch, steps=300, lr=3e-3)
    test = held_out(copy_batch, 500)
    with torch.no_grad():
        loss = model(**test).loss.item()
    assert loss < 0.05, f"held-out loss {loss:.4f}"
    generated = model.generate(test["input_ids"][:, : COPY_LEN + 1], max_new_tokens=COPY_LEN)
    exact = (generated == test["input_ids"]).all(dim=1).float().mean().item()
    assert exact >= 0.98, f"exact copies {exact:.3f}"


EOS = 1


def reverse_batch(n: int, generator: torch.Generator) -> Batch:
    source = torch.randint(2, COPY_VOCAB, (n, COPY_LEN), generator=generator)
    target = torch.cat([source.flip(1), torch.full((n, 1), EOS)], dim=1)  # (n, 7)
    return {"input_ids": source, "labels": target}


def test_seq2seq_learns_to_reverse() -> None:
    torch.manual_seed(0)
    model = build_scratch_model("seq2seq", COPY_VOCAB, None, **GPT_SIZES)
    fit(model, reverse_batch, steps=300, lr=3e-3)
    test = held_out(reverse_batch, 500)
    with torch.no_grad():
        loss = model(**test).loss.item()
    assert loss < 0.05, f"held-out loss {loss:.4f}"
    generated = model.generate(test["input_ids"], max_new_tokens=COPY_LEN + 1, eos_token_id=EOS)
    exact = (generated == test["labels"]).all(dim=1).float().mean().item()
    assert exact >= 0.98, f"exact reversals {exact:.3f}"
