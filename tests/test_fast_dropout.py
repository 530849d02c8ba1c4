"""The fast-dropout attention path with p > 0, tested directly, and pinned losses of models trained through it.

`attention_forward` drops attention probabilities and scales the output by 1 / (1 - p). With the value matrix
equal to the identity, the output *is* the dropped and scaled probability matrix, so the share of dropped
probabilities and the scale of the kept ones can be read off it. Over many masks, the mean output must equal
the output without dropout, within the spread that the number of masks allows.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tunelab.models.fastdropout import IMPLEMENTATION, attention_forward, use_fast_dropout

P = 0.25  # a multiple of 1/65536: the mask keeps exactly 3/4 in expectation and the scale is exactly 4/3


class Attention(nn.Module):
    """What `attention_forward` reads from a transformers attention module."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.num_key_value_groups = groups


def probabilities(query, key, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) without dropout: (B, H, L, L)."""
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if causal:
        L = scores.shape[-1]
        scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("causal", [False, True])
def test_a_share_p_of_the_probabilities_is_dropped_and_the_rest_scaled_by_1_over_1_minus_p(causal):
    torch.manual_seed(0)
    B, H, L = 8, 4, 32
    query, key = torch.randn(B, H, L, 16), torch.randn(B, H, L, 16)
    value = torch.eye(L).expand(B, H, L, L)  # output row i = dropped, scaled probability row i
    out, _ = attention_forward(Attention().train(), query, key, value, None, dropout=P, is_causal=causal)
    out = out.transpose(1, 2)  # (B, L, H, L) -> (B, H, L, L), as the probabilities
    probs = probabilities(query, key, causal)
    live = probs > 0  # causal: the future has probability 0 and must stay 0
    assert int(live.sum()) == B * H * (L * (L + 1) // 2 if causal else L * L)
    assert torch.all(out[~live] == 0)
    dropped = (out == 0) & live
    n = int(live.sum())
    share = int(dropped.sum()) / n
    assert abs(share - P) < 5 * math.sqrt(P * (1 - P) / n), share  # binomial: 5 standard deviations
    kept = live & ~dropped
    torch.testing.assert_close(out[kept], probs[kept] / (1 - P), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("groups", [1, 2])
def test_the_mean_over_many_masks_is_the_output_without_dropout(groups):
    """4,000 masks at once (the same q, k, v repeated along the batch), grouped-query attention included."""
    torch.manual_seed(1)
    M, H, L, d = 4000, 4, 12, 8
    query = torch.randn(1, H, L, d)
    key, value = torch.randn(1, H // groups, L, d), torch.randn(1, H // groups, L, d)
    module = Attention(groups).train()
    out, _ = attention_forward(module, query.expand(M, -1, -1, -1), key.expand(M, -1, -1, -1),
                               value.expand(M, -1, -1, -1), None, dropout=P, is_causal=True)
    mean = out.mean(0)  # (L, H, d)
    value = value.repeat_interleave(groups, dim=1)
    probs = probabilities(query, key.repeat_interleave(groups, dim=1), True)[0]  # (H, L, L)
    expected = (probs @ value[0]).transpose(0, 1)  # (L, H, d)
    # One mask's output element is sum_j keep_j p_j v_j / (1 - P): variance P / (1 - P) * sum_j (p_j v_j)^2.
    variance = (P / (1 - P)) * (probs.square() @ value[0].square()).transpose(0, 1)
    z = (mean - expected) / (variance / M).sqrt()
    assert float(z.abs().max()) < 5, float(z.abs().max())  # 384 z-scores: beyond 5 has probability ~2e-4
    assert 0.5 < float(z.square().mean()) < 1.5  # near 1: the spread is the one of P; ~0 if nothing is dropped


# ---------------------------------------------------------------------------------------------
# Pinned losses of a few training steps through the fast-dropout path (dropout 0.1 everywhere)

# torch 2.13 CPU, one thread. The models are initialised with a large initializer_range, so the logits (and the
# losses) depend on everything the body computes, not only on the head's bias: a change in the body shows.
PINNED = {"bert": [1.498381773630778, 1.1269640922546387, 1.020197868347168],
          "llama": [5.478104654947916, 4.140759531656901, 3.1574785868326822]}


def run_steps(model, batch: dict, loss_fn, steps: int = 3) -> list[float]:
    """`steps` AdamW steps on one fixed batch through the fast-dropout path; the mean loss of each."""
    from tunelab.config import EarlyStoppingConfig, TrainConfig
    from tunelab.train.logging import RunLogger
    from tunelab.train.loop import train_loop

    use_fast_dropout(model)
    assert model.config._attn_implementation == IMPLEMENTATION
    cfg = TrainConfig(max_steps=steps, lr=1e-2, scheduler="constant", warmup_steps=0, log_every=1, seed=0,
                      early_stopping=EarlyStoppingConfig(metric="loss", patience=None), device="cpu")
    logged: list[float] = []
    logger = RunLogger(None, steps, show_progress=False)
    logger.log = lambda kind, step, values: logged.append(values["loss"])
    torch.manual_seed(0)  # the dropout masks
    train_loop(model, epoch_batches=lambda epoch: iter([batch]), micro_batches_per_epoch=1, loss_fn=loss_fn,
               evaluate=None, cfg=cfg, device=torch.device("cpu"), logger=logger)
    return logged


def test_bert_losses_through_fast_dropout_are_pinned():
    from transformers import BertConfig, BertForSequenceClassification

    from tunelab.tasks.classification import loss_sum

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.3))
    ids = torch.randint(5, 100, (6, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 0, 1, 2])}
    losses = run_steps(model, batch, loss_sum)
    assert losses == pytest.approx(PINNED["bert"], abs=1e-5)


def test_llama_losses_through_fast_dropout_are_pinned():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.tasks.causal_lm import labelled_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_dropout=0.1, initializer_range=0.3))
    ids = torch.randint(5, 100, (4, 24))
    targets = torch.full_like(ids, -100)
    targets[:, 8:-1] = ids[:, 9:]  # predict the next token from position 8 on
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "targets": targets}
    losses = run_steps(model, batch, labelled_loss)
    assert losses == pytest.approx(PINNED["llama"], abs=1e-5)
