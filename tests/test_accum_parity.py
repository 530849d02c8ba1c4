"""Gradient-accumulation parity when the micro-batches of a window hold different numbers of items.

With equal micro-batches, the inexact "mean of the micro-batch means" equals the exact mean, so parity
there proves nothing about the normalisation. Here one step over 5 examples as 5 x 1 must equal one step as
micro-batches of 2, 2 and 1 (classification: items are examples), and one step over causal-LM micro-batches
with different numbers of trained tokens must equal one step over them all at once (items are tokens).

Each test drives the real `train_loop` on hand-made micro-batches (so their sizes are known), one window per
step: every step sees the same examples in both set-ups, and the weights must agree after 1 and 3 steps.
SGD without clipping makes the update proportional to the gradient (Adam's first step is nearly its sign,
which would hide a wrongly weighted mean). Measured (torch 2.13, CPU): exact accumulation agrees to 2e-7 after
3 steps; the mean of micro-batch means moves the weights 0.03 (causal LM) to 0.07 (classification) away after
one step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tunelab.config import EarlyStoppingConfig, TrainConfig
from tunelab.train.logging import RunLogger
from tunelab.train.loop import train_loop

# fp32 sums in a different order differ by a few ulps (|w| < 1): 1e-6 leaves 5x room over the 2e-7 measured and
# is 30,000x below what the mean of means changes.
ATOL = 1e-6


def sgd_config(steps: int, grad_accum: int) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=1, grad_accum=grad_accum, optimizer="sgd", momentum=0.9, lr=0.5,
                       weight_decay=0.0, scheduler="constant", warmup_steps=0, max_grad_norm=None, log_every=1,
                       early_stopping=EarlyStoppingConfig(metric="loss", patience=None), seed=0, device="cpu")


def train_on(make_model, micro_batches: list[dict], loss_fn, steps: int) -> tuple[dict, list[float]]:
    """Train a fresh model for `steps` steps of one window = all `micro_batches`; (weights, logged losses)."""
    model = make_model()
    logged: list[float] = []
    logger = RunLogger(None, steps, show_progress=False)
    logger.log = lambda kind, step, values: logged.append(values["loss"])
    train_loop(model, epoch_batches=lambda epoch: iter(micro_batches), micro_batches_per_epoch=len(micro_batches),
               loss_fn=loss_fn, evaluate=None, cfg=sgd_config(steps, len(micro_batches)),
               device=torch.device("cpu"), logger=logger)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, logged


def assert_same_training(make_model, whole: dict, parts: list[dict], loss_fn) -> None:
    before = dict(make_model().named_parameters())
    for steps in (1, 3):
        ref, ref_losses = train_on(make_model, [whole], loss_fn, steps)
        got, got_losses = train_on(make_model, parts, loss_fn, steps)
        for name in ref:
            assert not torch.equal(ref[name], before[name]), f"{name} did not move"
            torch.testing.assert_close(got[name], ref[name], atol=ATOL, rtol=0, msg=f"{name} after {steps} steps")
        assert got_losses == pytest.approx(ref_losses, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Classification: 5 examples as one batch, or as micro-batches of 2, 2 and 1


def classification_batch(tokenizer, records: list[dict], labels: list[str]) -> dict:
    enc = tokenizer([r["text"] for r in records], padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([labels.index(r["label"]) for r in records])}


def test_classification_5_x_1_equals_2_2_1(tiny_bert, helpers):
    from tunelab.models.load import load_sequence_classifier, load_tokenizer
    from tunelab.tasks.classification import loss_sum

    def make_model():
        torch.manual_seed(0)  # the new head
        return load_sequence_classifier(tiny_bert, helpers.LABELS, dropout=0.0)[0]

    tokenizer = load_tokenizer(tiny_bert)
    # Texts of different lengths, so the micro-batches are padded differently too.
    records = [{"text": " ".join(r["text"].split()[:k]), "label": r["label"]}
               for r, k in zip(helpers.synthetic_records(2, seed=7), (6, 3, 5, 2, 4))]
    parts = [classification_batch(tokenizer, records[i:j], helpers.LABELS) for i, j in ((0, 2), (2, 4), (4, 5))]
    assert [len(p["labels"]) for p in parts] == [2, 2, 1]
    assert_same_training(make_model, classification_batch(tokenizer, records, helpers.LABELS), parts, loss_sum)


# ---------------------------------------------------------------------------------------------
# Causal LM: answers of different lengths, so the micro-batches train different numbers of tokens


def test_causal_lm_whole_batch_equals_micro_batches_of_different_token_counts():
    sys.path.insert(0, str(Path(__file__).parent / "causal"))  # the tiny Llama helpers (as tests/causal does)
    from causal_tiny import make_model as make_llama, make_tokenizer
    from tunelab.data.batching import padded_batch
    from tunelab.data.encoding import encode_records
    from tunelab.tasks.causal_lm import labelled_loss

    tok = make_tokenizer()
    records = [{"instruction": f"Count to {k}.", "output": " ".join(str(i) for i in range(1, k + 1))}
               for k in (2, 9, 4, 1, 6)]
    examples = encode_records(tok, records, "alpaca", max_length=128, train_on_prompt=False, source="x").examples
    parts = [padded_batch(examples[i:j], tok.pad_token_id) for i, j in ((0, 2), (2, 3), (3, 5))]
    trained = [int((p["targets"] != -100).sum()) for p in parts]
    assert len(set(trained)) == 3, trained  # every micro-batch trains its own number of tokens
    assert_same_training(lambda: make_llama(len(tok), seed=0), padded_batch(examples, tok.pad_token_id), parts,
                         labelled_loss)
