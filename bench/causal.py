"""Causal-LM part of `make bench`: the same LoRA run on SmolLM2-135M in tunelab and in HF Trainer + peft.

Same model, data split and token ids (tunelab's pipeline encodes for both), LoRA (r, alpha, dropout, target
modules), batch size, epochs, optimizer and per-step learning rates, checkpoint policy and timing span
(bench/fair.py). Validation loss is the mean cross-entropy per trained token, computed for both sides by
`example_losses` (one example at a time, in fp32), which also gives each conversation's own loss: the
standard error of the validation loss and of the difference between sides are taken over conversations.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import record
from run import capture, peak_rss_mb, resolved_precision  # bench/ is on sys.path when bench/run.py runs

HERE = Path(__file__).resolve().parent

# 48 ShareGPT conversations for training (about 42 examples keep a trained token within 256 tokens: 11 steps
# of 4) and a validation split of 50% of the pool (48 conversations) keep 4 sides x 3 repeats under 20
# minutes on an idle 2-core machine.
LM_JOB = dict(train="builtin:sharegpt", limit=48, max_length=256, epochs=1, batch_size=4, lr=1.0e-3,
              r=16, alpha=32, dropout=0.05, target_modules="all-linear", warmup_ratio=0.1, max_grad_norm=1.0,
              seed=42, val_fraction=0.5, test_fraction=0.0)
if os.environ.get("BENCH_SMOKE") == "1":
    LM_JOB.update(limit=8, max_length=128, val_fraction=0.3, warmup_ratio=0.5)  # 2 steps, the first warmup


def lm_config(out_dir: str, precision: str = "auto"):
    from tunelab.config import config_from_dict

    j = LM_JOB
    return config_from_dict({
        "task": "causal_lm",
        "model": {"name": "builtin:smollm2-135m-instruct", "max_length": j["max_length"]},
        "data": {"train": j["train"], "format": "sharegpt", "limit": j["limit"],
                 "val_fraction": j["val_fraction"], "test_fraction": j["test_fraction"]},
        "method": {"name": "lora", "r": j["r"], "alpha": j["alpha"], "dropout": j["dropout"],
                   "target_modules": j["target_modules"]},
        "train": {"epochs": j["epochs"], "batch_size": j["batch_size"], "lr": j["lr"], "scheduler": "linear",
                  "warmup_ratio": j["warmup_ratio"], "max_grad_norm": j["max_grad_norm"], "seed": j["seed"],
                  "weight_decay": 0.0, "precision": precision, "log_every": 1,
                  "early_stopping": {"metric": "loss", "patience": None}},
        "generate": {"samples_in_eval": 0},
        "output_dir": out_dir})


def example_losses(model, data, pad_id: int) -> list[list[float]]:
    """[summed loss, trained tokens] of each example, in fp32 (no autocast), by tunelab's loss function."""
    import torch

    from tunelab.data.batching import padded_batch
    from tunelab.tasks.causal_lm import labelled_loss

    model.eval()
    out = []
    with torch.no_grad():
        for e in data.examples:
            loss, n = labelled_loss(model, padded_batch([e], pad_id))
            out.append([float(loss), n])
    return out


def mean_loss(losses: list[list[float]]) -> float:
    return sum(s for s, _ in losses) / max(1, sum(n for _, n in losses))


def lm_facts(data: dict) -> dict:
    """What the job really trains and validates on, after cleaning, truncation and splitting."""
    facts = {"epochs": LM_JOB["epochs"]}
    for name, d in data.items():
        facts.update({f"{name}_records": len(d.records), f"{name}_examples": len(d), f"{name}_tokens": d.tokens,
                      f"{name}_trained_tokens": d.label_tokens, f"{name}_dropped": d.dropped,
                      f"{name}_truncated": d.truncated})
    return facts


def lm_flops(model, data) -> float:
    """Model FLOPs of the training (record.training_flops; LoRA, causal attention)."""
    cfg = getattr(model, "get_base_model", lambda: model)().config
    return LM_JOB["epochs"] * record.training_flops(
        record.matmul_params(model), [(len(e.ids), e.n_labels) for e in data.examples],
        layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, full=False, causal=True)


def best_of(history: list[list[list[float]]]) -> list[list[float]]:
    """The per-example losses of the best evaluation (the first of equal means, as both sides choose)."""
    means = [mean_loss(h) for h in history]
    return history[means.index(min(means))]


def run_tunelab_lm(precision: str = "auto") -> dict:
    import json

    from fair import tunelab_lrs
    from tunelab.run import train
    from tunelab.tasks.causal_lm import CausalLMJob

    class Job(CausalLMJob):
        """tunelab's job; validation by `example_losses` (the same function as the Trainer side's)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.history: list = []  # per-example losses of each evaluation

        def validate(self, model):
            data = self.data.get("validation")
            if data is None or len(data) == 0:
                return None
            self.history.append(example_losses(model, data, self.pad_id))
            loss = mean_loss(self.history[-1])
            return {"loss": loss, "perplexity": math.exp(min(loss, 100.0))}

    factory, kept = capture(Job)
    run_dir = train(lm_config(str(HERE / "out" / f"tunelab-lm-{precision}"), precision), overwrite=True,
                    show_progress=False, log=lambda m: None, job_factory=factory)
    ev, job = json.loads((run_dir / "eval.json").read_text()), kept["job"]
    losses = best_of(job.history)
    return {"tokens_per_s": ev["train_tokens_per_s"], "train_seconds": ev["train_seconds"],
            "train_tokens": ev["train_tokens"], "steps": ev["steps"], "best_step": ev["best_step"],
            "lrs": tunelab_lrs(run_dir / "metrics.jsonl"), "val_loss": mean_loss(losses), "val_losses": losses,
            "peak_rss_mb": peak_rss_mb(), "precision": resolved_precision(precision),
            "model_flops": lm_flops(job.model, job.data["train"]), "params": record.matmul_params(job.model),
            "data": lm_facts(job.data)}


def run_trainer_lm(bf16: bool = False) -> dict:
    """Trainer + peft with the standard recipe: full-vocabulary logits, DataCollatorForSeq2Seq padding."""
    import gc

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from fair import BestByValidation, StepTimer, tunelab_optimizers, tunelab_steps
    from tunelab.data.tokens import IGNORE_INDEX
    from tunelab.tasks.causal_lm import CausalLMJob

    hf_logging.set_verbosity_error()
    j = LM_JOB
    # tunelab's own data pipeline gives both sides the very same tokens and trained positions
    job = CausalLMJob(lm_config(str(HERE / "out" / "unused")), torch.device("cpu"), lambda m: None)
    job.prepare()
    tok, data = job.tokenizer, job.data
    path = job.model.get_base_model().config._name_or_path
    del job
    gc.collect()  # its model is freed before the Trainer's is loaded: peak memory holds one

    def items(encoded):  # HF labels are unshifted: label[t] = id[t] where t is a trained position
        return [{"input_ids": e.ids, "attention_mask": [1] * len(e.ids),
                 "labels": [IGNORE_INDEX] + e.targets[:-1]}
                for e in encoded.examples]

    train_items = items(data["train"])
    torch.manual_seed(j["seed"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=j["r"], lora_alpha=j["alpha"], lora_dropout=j["dropout"],
                                             target_modules=j["target_modules"], task_type="CAUSAL_LM"))
    total, warmup = tunelab_steps(-(-len(train_items) // j["batch_size"]), j["epochs"], j["warmup_ratio"])
    history: list = []

    def validate(m) -> float:
        history.append(example_losses(m, data["validation"], tok.pad_token_id))
        return mean_loss(history[-1])

    timer, best = StepTimer(), BestByValidation(validate, minimise=True)
    args = TrainingArguments(output_dir=str(HERE / "out" / "trainer-lm"), num_train_epochs=j["epochs"], bf16=bf16,
                             per_device_train_batch_size=j["batch_size"], max_grad_norm=j["max_grad_norm"],
                             seed=j["seed"], save_strategy="no", eval_strategy="no", logging_steps=10,
                             report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_items,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX),
                      callbacks=[timer, best], optimizers=tunelab_optimizers(
                          model, lr=j["lr"], weight_decay=0.0, total=total, warmup=warmup))
    trainer.train()
    tokens = data["train"].tokens * j["epochs"]
    losses = best_of(history)
    return {"tokens_per_s": tokens / timer.seconds, "train_seconds": timer.seconds, "train_tokens": tokens,
            "steps": len(timer.lrs), "best_step": best.best_step, "lrs": timer.lrs,
            "val_loss": mean_loss(losses), "val_losses": losses, "peak_rss_mb": peak_rss_mb(),
            "precision": "bf16" if bf16 else "fp32", "model_flops": lm_flops(model, data["train"]),
            "params": record.matmul_params(model),
            "data": lm_facts(data)}
