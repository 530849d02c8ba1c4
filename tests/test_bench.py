"""The benchmark's fairness machinery (bench/fair.py), its arithmetic (bench/record.py) and its rendering
(bench/results.py), on tiny random models: the Trainer side gets tunelab's exact learning rates, its time
excludes evaluation, it tests the best checkpoint, and results.md is a pure function of stored figures."""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import fair  # noqa: E402
import record  # noqa: E402


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=3))


def items(n: int = 20, length: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (n, length), generator=g).tolist()
    return [{"input_ids": x, "attention_mask": [1] * length, "labels": i % 3} for i, x in enumerate(ids)]


def trainer(model, data, tmp_path, callbacks, epochs=1, batch=4, **optim):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=batch,
                             save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
                             dataloader_num_workers=0, seed=0, **({} if optim else {"learning_rate": 1e-3,
                                                                                      "warmup_steps": 2}))
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks,
                   optimizers=fair.tunelab_optimizers(model, **optim) if optim else (None, None))


def test_trainer_steps_at_tunelab_learning_rates(tmp_path):
    """The Trainer side's per-step rates are exactly tunelab's lr_factor schedule, first warmup step included
    (the Trainer's own schedule starts at 0, which `same_lrs` reports)."""
    from tunelab.train.optim import lr_factor

    total, warmup = fair.tunelab_steps(5, 1, 0.4)  # 20 items / batch 4
    assert (total, warmup) == (5, 2)
    expected = [1e-3 * lr_factor(s, total, warmup, "linear") for s in range(total)]
    timer = fair.StepTimer()
    trainer(tiny_bert(), items(), tmp_path, [timer], lr=1e-3, weight_decay=0.0, total=total, warmup=warmup).train()
    assert fair.same_lrs(timer.lrs, expected) is None
    assert timer.lrs[0] == pytest.approx(5e-4)

    own = fair.StepTimer()  # what the bench used before: the Trainer's schedule with the same warmup
    trainer(tiny_bert(), items(), tmp_path / "own", [own]).train()
    assert own.lrs[0] == 0.0
    assert fair.same_lrs(own.lrs, expected) == f"step 1: lr 0.0 vs {expected[0]!r}"


def test_step_timer_leaves_out_evaluation(tmp_path):
    """Time between on_step_begin and on_step_end only: a 0.4 s evaluation at each epoch end is not counted,
    while the Trainer's train_runtime counts it."""
    class SlowEval(fair.TrainerCallback):
        def on_epoch_end(self, *args, **kwargs):
            time.sleep(0.4)

    timer = fair.StepTimer()
    out = trainer(tiny_bert(), items(8), tmp_path, [timer, SlowEval()], epochs=2, lr=1e-3, weight_decay=0.0,
                  total=4, warmup=0).train()
    assert len(timer.lrs) == 4
    assert out.metrics["train_runtime"] > 0.8
    assert timer.seconds < out.metrics["train_runtime"] - 0.7


def test_best_by_validation_restores_the_best_epoch(tmp_path):
    """Scores 0.9 then 0.5 (higher is better): the weights after training are those of the first epoch."""
    model = tiny_bert()
    scores, seen = iter([0.9, 0.5]), []

    def evaluate(m):
        seen.append(copy.deepcopy(m.state_dict()))
        return next(scores)

    best = fair.BestByValidation(evaluate, minimise=False)
    trainer(model, items(8), tmp_path, [best], epochs=2, lr=1e-2, weight_decay=0.0, total=4, warmup=0).train()
    assert best.best_step == 2 and [s for s, _ in best.history] == [2, 4]
    after = model.state_dict()
    assert all(torch.equal(after[k], seen[0][k]) for k in after)
    assert not all(torch.equal(after[k], seen[1][k]) for k in after)


def test_check_same_job_stops_on_different_schedules():
    import run

    runs = [{"side": s, "result": {"lrs": lrs, "train_tokens": 100}}
            for s, lrs in (("tunelab-fp32", [5e-4, 1e-3]), ("trainer-fp32", [0.0, 1e-3]))]
    with pytest.raises(SystemExit, match="learning-rate schedules differ: tunelab-fp32 vs trainer-fp32: step 1"):
        run.check_same_job(runs)
    runs[1]["result"]["lrs"] = [5e-4, 1e-3]
    run.check_same_job(runs)
    runs[1]["result"]["train_tokens"] = 99
    with pytest.raises(SystemExit, match="trained tokens differ"):
        run.check_same_job(runs)


def test_tunelab_lrs_needs_every_step(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"kind": "train", "step": s, "lr": 0.1 * s}) for s in (1, 2, 3))
                   + "\n" + json.dumps({"kind": "eval", "step": 3, "loss": 1.0}) + "\n")
    assert fair.tunelab_lrs(log) == [0.1, 0.2, pytest.approx(0.3)]
    log.write_text(json.dumps({"kind": "train", "step": 10, "lr": 0.1}) + "\n")
    with pytest.raises(SystemExit, match="log_every: 1"):
        fair.tunelab_lrs(log)


def test_ratio_standard_error_over_examples():
    mean, se = record.ratio_se([1.0, 2.0, 3.0], [1, 1, 1])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    # per-token mean 10/5 = 2; residuals s - 2c = 0, 2, -2 -> sqrt(8 / 6) / (5 / 3)
    mean, se = record.ratio_se([2.0, 4.0, 4.0], [1, 1, 3])
    assert mean == 2.0 and se == pytest.approx(math.sqrt(8 / 6) / (5 / 3))


def test_training_flops_formula():
    params = {"body": 10, "head": 100, "adapter": 2}
    # full, bidirectional: 6*10*4 + 6*100*1 + 12*1*2*16
    assert record.training_flops(params, [(4, 1)], layers=1, hidden=2, full=True, causal=False) == 240 + 600 + 384
    # LoRA, causal: 4*10*4 + 6*2*4 + 4*100*1 + 6*1*2*16
    assert record.training_flops(params, [(4, 1)], layers=1, hidden=2, full=False, causal=True) == 160 + 48 + 400 + 192


def test_matmul_params_by_role():
    """A tiny Llama with LoRA: adapter = peft's trainable count, head = the vocabulary projection, body = the
    decoder's linear layers (embeddings are no matrix product)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    per_layer = 16 * 16 * 2 + 16 * 8 * 2 + 3 * 16 * 32  # q, o; k, v (one 8-wide kv head); gate, up, down
    assert record.matmul_params(model) == {"body": 2 * per_layer, "head": 64 * 16, "adapter": 0}
    lora = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    counts = record.matmul_params(lora)
    assert counts["adapter"] == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert (counts["body"], counts["head"]) == (2 * per_layer, 64 * 16)


def stored_classification(out: Path) -> None:
    """A stored two-side, two-repeat classification measurement, as bench/run.py writes it."""
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "avx512_bf16": False, "amx": False,
               "fast_bf16": False, "torch": "2.13.0", "python": "3.11"}
    data = {"epochs": 1, "train_examples": 4, "train_tokens": 40, "validation_examples": 2,
            "validation_tokens": 20, "test_examples": 4, "test_tokens": 40}
    runs = []
    for r, side, tps, correct in ((0, "tunelab-fp32", 200.0, [1, 1, 1, 0]), (0, "trainer-fp32", 100.0, [1, 0, 1, 0]),
                                  (1, "trainer-fp32", 110.0, [1, 0, 1, 0]), (1, "tunelab-fp32", 190.0, [1, 1, 1, 0])):
        runs.append({"side": side, "repeat": r, "started": f"2026-01-0{r + 1}T10:00:00Z",
                     "finished": f"2026-01-0{r + 1}T10:05:00Z", "load_before": [0.5, 0.5, 0.5],
                     "load_after": [1.0, 0.6, 0.5], "machine": machine,
                     "result": {"tokens_per_s": tps, "train_seconds": 40 / tps, "train_tokens": 40, "steps": 1,
                                "best_step": 1, "lrs": [1e-4], "accuracy": sum(correct) / 4, "f1_macro": 0.5,
                                "test_correct": correct, "peak_rss_mb": 1000.0, "precision": "fp32",
                                "model_flops": 4e9, "data": data}})
    peak = {"fp32_gflops": 100.0, "bf16_gflops": 1.0}
    rec = {"part": "classification", "smoke": False, "job": {"limit": 4, "max_length": 16, "epochs": 1,
           "batch_size": 4, "lr": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.1, "max_grad_norm": 1.0,
           "seed": 42}, "sides": ["tunelab-fp32", "trainer-fp32"], "repeats": 2, "machine": machine,
           "peak": [peak, {**peak, "fp32_gflops": 80.0}], "runs": runs, "complete": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "classification-20260101T100000Z.json").write_text(json.dumps(rec))


def test_results_come_from_stored_figures_only(tmp_path, monkeypatch):
    """Rendering twice gives the same text with the stored dates (never today's); the figures are medians
    and ranges of the stored runs; a section kept from an older results.md is labelled as old."""
    import results

    monkeypatch.setattr(record, "OUT", tmp_path / "out")
    stored_classification(tmp_path / "out")
    old = {"lm": "## Instruction tuning: old\n\nold text\n"}
    first = results.render(False, old)
    time.sleep(1.1)
    assert results.render(False, old) == first
    assert "Measured 2026-01-01T10:00:00Z to 2026-01-02T10:05:00Z (UTC) on Test CPU" in first
    assert time.strftime("%Y-%m-%d") not in first
    assert "| real tokens/s | 195 (190-200) | 105 (100-110) |" in first
    assert "- both fp32: tunelab **1.86x** (per round 1.73-2.00x)" in first
    assert "| MFU (% of its precision's peak) | 19.5 (19.0-20.0) | 10.5 (10.0-11.0) |" in first
    assert "test accuracy, fp32: tunelab - Trainer = +0.2500 ± 0.2500" in first and "**not resolved**" in first
    assert "## Instruction tuning: old\n\n> **Old method, measured 2026-11-23, not re-run" in first
