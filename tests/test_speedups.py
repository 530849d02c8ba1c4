"""Speed features that must not change what is learned: fast dropout masks, bf16 mixed precision and
reused memory."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from tunelab.models import fastdropout
from tunelab.models.fastdropout import FastDropout, fast_dropout, keep_mask, undo_fast_dropout, use_fast_dropout
from tunelab.train import memory
from tunelab.train.precision import resolve_precision

# ---------------------------------------------------------------------------------------------
# The mask


def test_each_16_bit_lane_keeps_1_minus_p():
    """Every one of the four 16-bit words of a 64-bit draw is uniform (a sign bit that is never set would
    make one lane keep 100% - 50% x p)."""
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([4_000_000]), 0.1, torch.device("cpu"))
    lanes = keep.view(-1, 4).float().mean(0)  # sd of each lane's mean is 3e-4
    assert torch.all((lanes - 0.9).abs() < 2e-3), lanes


def test_the_expected_output_equals_the_input():
    torch.manual_seed(0)
    for p in (0.05, 0.1, 0.3, 0.5):
        threshold, scale = fastdropout._quantised(p)
        keep_probability = (32768 - threshold) / 65536
        assert abs((1 - keep_probability) - p) <= 0.5 / 65536
        assert keep_probability * scale == pytest.approx(1.0, abs=1e-12)
        out = fast_dropout(torch.ones(2_000_000), p)
        assert float(out.mean()) == pytest.approx(1.0, abs=4e-3)
        values = out.unique().tolist()
        assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(scale)


def test_same_seed_same_mask_and_the_gradient_uses_it():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.2)
    a.sum().backward()
    torch.manual_seed(3)
    b = fast_dropout(x.detach(), 0.2)
    assert torch.equal(a.detach(), b)
    _, scale = fastdropout._quantised(0.2)
    torch.testing.assert_close(x.grad, (b != 0).float() * scale, rtol=0, atol=0)


def test_eval_mode_and_p_zero_are_the_identity():
    x = torch.randn(5, 7)
    layer = FastDropout(0.3).eval()
    assert torch.equal(layer(x), x)
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------
# In transformers models: with every element kept, a training-mode forward must equal evaluation mode


def keep_everything(monkeypatch):
    monkeypatch.setattr(fastdropout, "_quantised", lambda p: (-32768, 1.0))


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=3))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, attention_dropout=0.2))


def logits_and_grads(model, **inputs):
    model.zero_grad()
    logits = model(**inputs).logits
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make, padded", [(tiny_bert, True), (tiny_bert, False), (tiny_llama, False)])
def test_training_path_with_nothing_dropped_equals_evaluation(monkeypatch, make, padded):
    model = make()
    ids = torch.randint(1, 100, (3, 9))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 5:] = 0
    ref_logits, ref_grads = logits_and_grads(model.eval(), input_ids=ids, attention_mask=mask)
    assert use_fast_dropout(model) > 0 or make is tiny_llama  # Llama has no dropout modules, only attention
    assert model.config._attn_implementation == fastdropout.IMPLEMENTATION
    keep_everything(monkeypatch)
    calls = []
    monkeypatch.setattr(fastdropout, "keep_mask", lambda *a: calls.append(a) or torch.ones(a[0], dtype=torch.bool))
    logits, grads = logits_and_grads(model.train(), input_ids=ids, attention_mask=mask)
    assert calls, "the training forward did not go through fast_dropout"
    torch.testing.assert_close(logits, ref_logits, atol=2e-6, rtol=0)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-6, msg=name)  # |grad| ~ 10


def test_undo_restores_the_model_and_the_saved_config(tmp_path):
    model = tiny_bert()
    swapped = use_fast_dropout(model)
    assert swapped == sum(isinstance(m, nn.Dropout) for m in model.modules()) > 0
    undo_fast_dropout(model)
    assert all(type(m) is not FastDropout for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    assert fastdropout.IMPLEMENTATION not in (tmp_path / "config.json").read_text()


def test_training_with_fast_dropout_saves_plain_modules(make_config, helpers, monkeypatch):
    import tunelab.train.loop as loop

    seen, real = {}, loop.train_loop

    def spy(model, **kwargs):
        seen["types"], seen["model"] = {type(m) for m in model.modules()}, model
        return real(model, **kwargs)

    monkeypatch.setattr(loop, "train_loop", spy)
    run_dir = helpers.train_quietly(make_config({"train.max_steps": 2}))
    assert FastDropout in seen["types"] and nn.Dropout not in seen["types"]
    assert all(type(m) is not FastDropout for m in seen["model"].modules())
    assert "tunelab_sdpa" not in (run_dir / "model" / "config.json").read_text()


# ---------------------------------------------------------------------------------------------
# Precision


@pytest.mark.parametrize("name, fast_bf16, expected", [
    ("auto", True, torch.bfloat16), ("auto", False, None), ("fp32", True, None), ("bf16", False, torch.bfloat16)])
def test_precision_resolution_on_a_cpu(monkeypatch, name, fast_bf16, expected):
    monkeypatch.setattr("tunelab.train.precision.cpu_has_fast_bf16", lambda: fast_bf16)
    assert resolve_precision(name, torch.device("cpu")) == expected


def test_bf16_training_runs_matmuls_in_bf16_keeps_fp32_weights_and_learns(make_config, helpers):
    from transformers import BertForSequenceClassification

    dtypes = {"train": set(), "eval": set()}
    original = nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        dtypes["train" if self.training else "eval"].add(out.dtype)
        return out

    overrides = {"train.max_steps": 60, "train.lr": 5e-3, "train.scheduler": "constant", "train.log_every": 5,
                 "model.dropout": 0.0}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.Linear, "forward", spy)
        run_dir = helpers.train_quietly(make_config({**overrides, "train.precision": "bf16"}))
    assert dtypes == {"train": {torch.bfloat16}, "eval": {torch.float32}}
    assert BertForSequenceClassification.from_pretrained(run_dir / "model").dtype == torch.float32
    bf16_losses = [r["loss"] for r in helpers.read_metrics(run_dir, "train")]
    bf16_accuracy = json.loads((run_dir / "eval.json").read_text())["test"]["accuracy"]
    fp32_run = helpers.train_quietly(make_config({**overrides, "train.precision": "fp32"}), overwrite=True)
    fp32_losses = [r["loss"] for r in helpers.read_metrics(fp32_run, "train")]
    assert bf16_losses[-1] < 0.7 * bf16_losses[0]
    assert bf16_losses[0] == pytest.approx(fp32_losses[0], abs=0.02)  # bf16 keeps about 3 significant digits
    assert bf16_accuracy >= 0.9 * json.loads((fp32_run / "eval.json").read_text())["test"]["accuracy"]


# ---------------------------------------------------------------------------------------------
# Reused memory

FAULTS_OF_20_BIG_TENSORS = """
import resource, sys, torch
from tunelab.train.memory import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # the heap settles: freed neighbours coalesce into blocks big enough to reuse
    torch.ones(16 << 20).sum()  # 64 MB, allocated, touched and freed
before = faults()
for _ in range(20):
    torch.ones(16 << 20).sum()
print(faults() - before)
"""


@pytest.mark.skipif(memory._glibc() is None, reason="glibc only")
def test_reused_memory_gives_big_tensors_pages_without_faults():
    """64 MB is 16,384 pages of 4 KB: glibc maps fresh ones for each such tensor unless told to keep them."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_20_BIG_TENSORS, mode], capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])

    assert faults("default") > 20 * 16_000
    assert faults("reuse") < 3 * 16_384  # settled: at most a few tensors' worth of fresh pages (0 seen)
