"""The causal-LM loss: labelled positions only == the full-logits loss; packed == unpacked per example."""
from __future__ import annotations

import random

import pytest
import torch

from causal_helpers import alpaca_records, chat_records
from causal_tiny import make_model
from tunelab.data.batching import padded_batch
from tunelab.data.encoding import encode_records
from tunelab.data.packing import pack, packed_batch
from tunelab.data.tokens import IGNORE_INDEX
from tunelab.tasks.causal_lm import labelled_loss


@pytest.fixture(scope="module")
def examples(tok):
    recs = chat_records(6)
    return encode_records(tok, recs, "messages", max_length=128, train_on_prompt=False, source="x").examples


@pytest.fixture(scope="module")
def model(tok):
    return make_model(len(tok), seed=1).eval()


def hf_loss_sum(model, batch) -> tuple[float, int]:
    """transformers' own loss (full logits, shift inside) times the number of labelled tokens."""
    labels = torch.full_like(batch["targets"], IGNORE_INDEX)
    labels[:, 1:] = batch["targets"][:, :-1]  # HF wants labels aligned with inputs
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    n = int((labels != IGNORE_INDEX).sum())
    return float(out.loss) * n, n


@torch.no_grad()
def test_labelled_positions_loss_equals_full_logits_loss(model, examples, tok):
    batch = padded_batch(examples, tok.pad_token_id)
    ours, n = labelled_loss(model, batch)
    theirs, m = hf_loss_sum(model, batch)
    assert n == m == sum(e.n_labels for e in examples)
    assert float(ours) == pytest.approx(theirs, rel=1e-5)


@torch.no_grad()
def test_packed_per_example_losses_equal_unpacked(model, examples, tok):
    rows = pack([len(e.ids) for e in examples], capacity=200)
    assert len(rows) < len(examples)  # something was actually packed together
    batch = packed_batch([[examples[i] for i in row] for row in rows], tok.pad_token_id)
    for b, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(examples[i].ids)
            only = torch.full_like(batch["targets"], IGNORE_INDEX)  # keep this example's targets only
            only[b, start:start + n] = batch["targets"][b, start:start + n]
            packed, k = labelled_loss(model, {**batch, "targets": only})
            alone, k2 = labelled_loss(model, padded_batch([examples[i]], tok.pad_token_id))
            assert k == k2 == examples[i].n_labels
            assert float(packed) == pytest.approx(float(alone), rel=1e-5, abs=1e-5)
            start += n


@torch.no_grad()
def test_packing_without_restarting_positions_would_differ(model, examples, tok):
    """Control: the equality above is not vacuous; plain concatenation changes the losses."""
    rows = pack([len(e.ids) for e in examples], capacity=200)
    batch = packed_batch([[examples[i] for i in row] for row in rows], tok.pad_token_id)
    packed, _ = labelled_loss(model, batch)
    naive, _ = labelled_loss(model, {k: v for k, v in batch.items() if k != "position_ids"})
    unpacked, _ = labelled_loss(model, padded_batch(examples, tok.pad_token_id))
    assert float(packed) == pytest.approx(float(unpacked), rel=1e-5)
    assert abs(float(naive) - float(unpacked)) > 1e-3


def test_pack_fills_rows_and_keeps_every_example():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(300)]
    rows = pack(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    lower_bound = -(-sum(lengths) // 128)
    assert len(rows) <= lower_bound * 1.05 + 1
    assert pack(lengths, 128) == rows  # deterministic


def test_loss_gradients_only_flow_through_labelled_positions(tok):
    """The loss's gradient w.r.t. the final hidden states is exactly zero at every unlabelled position (prompt,
    padding) and non-zero at every labelled one; w.r.t. the input embeddings it is exactly zero after each
    row's last label (causal attention carries nothing backwards) and non-zero up to it."""
    model = make_model(len(tok), seed=2)
    recs = alpaca_records(4)
    ex = encode_records(tok, recs, "alpaca", max_length=128, train_on_prompt=False, source="x").examples
    batch = padded_batch(ex, tok.pad_token_id)
    seen = {}

    def keep_grad(name):
        def hook(_module, _inputs, output):
            output.retain_grad()
            seen[name] = output
        return hook

    model.model.embed_tokens.register_forward_hook(keep_grad("embeddings"))  # (B, T, H)
    model.model.norm.register_forward_hook(keep_grad("hidden"))  # (B, T, H): what the output head reads
    loss, n = labelled_loss(model, batch)
    loss.backward()
    labelled = batch["targets"] != IGNORE_INDEX  # (B, T)
    assert n == int(labelled.sum()) == sum(e.n_labels for e in ex)
    assert (~labelled & (batch["attention_mask"] == 1)).any() and (batch["attention_mask"] == 0).any()
    hidden = seen["hidden"].grad.abs().sum(-1)  # (B, T)
    assert torch.all(hidden[~labelled] == 0) and torch.all(hidden[labelled] > 0)
    embeddings = seen["embeddings"].grad.abs().sum(-1)  # (B, T)
    for row, mask in zip(embeddings, labelled):
        last = int(mask.nonzero().max())
        assert torch.all(row[last + 1:] == 0) and torch.all(row[:last + 1] > 0)
