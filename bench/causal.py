"""Causal-LM half of `make bench`: the same LoRA run on SmolLM2-135M in tunelab and in HF Trainer + peft.

Same model, data split, LoRA (r, alpha, dropout, target modules), batch size, epochs, lr schedule and
seed. The final validation loss of both is computed by the same function (mean cross-entropy per trained
token), so the numbers compare.
"""
from __future__ import annotations

from pathlib import Path

from run import peak_rss_mb  # bench/ is on sys.path when bench/run.py runs

HERE = Path(__file__).resolve().parent

LM_JOB = dict(train="builtin:sharegpt", limit=160, max_length=256, epochs=1, batch_size=8, lr=1.0e-3,
              r=16, alpha=32, dropout=0.05, target_modules="all-linear", warmup_ratio=0.06, max_grad_norm=1.0,
              seed=42, val_fraction=0.1, test_fraction=0.0)


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
                  "weight_decay": 0.0, "precision": precision,
                  "early_stopping": {"metric": "loss", "patience": None}},
        "generate": {"samples_in_eval": 0},
        "output_dir": out_dir})


def run_tunelab_lm(precision: str = "auto") -> dict:
    import json

    from run import resolved_precision
    from tunelab.run import train

    run_dir = train(lm_config(str(HERE / "out" / f"tunelab-lm-{precision}"), precision), overwrite=True,
                    show_progress=False, log=lambda m: None)
    ev = json.loads((run_dir / "eval.json").read_text())
    return {"tokens_per_s": ev["train_tokens_per_s"], "train_seconds": ev["train_seconds"],
            "train_tokens": ev["train_tokens"], "val_loss": ev["best_validation"]["loss"],
            "peak_rss_mb": peak_rss_mb(), "precision": resolved_precision(precision)}


def run_trainer_lm(bf16: bool = False) -> dict:
    """Trainer + peft with the standard recipe: full-vocabulary logits, DataCollatorForSeq2Seq padding."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from tunelab.data.chat import IGNORE
    from tunelab.tasks.causal_lm import CausalLMJob, evaluate_loss

    hf_logging.set_verbosity_error()
    j = LM_JOB
    cfg = lm_config(str(HERE / "out" / "unused"))
    # tunelab's own data pipeline gives both sides the very same tokens and trained positions
    job = CausalLMJob(cfg, torch.device("cpu"), lambda m: None)
    job.prepare()
    tok, data = job.tokenizer, job.data
    path = job.model.get_base_model().config._name_or_path
    del job

    def items(encoded):  # HF labels are unshifted: label[t] = id[t] where t is a trained position
        return [{"input_ids": e.ids, "attention_mask": [1] * len(e.ids), "labels": [IGNORE] + e.targets[:-1]}
                for e in encoded.examples]

    train_items = items(data["train"])
    torch.manual_seed(j["seed"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=j["r"], lora_alpha=j["alpha"], lora_dropout=j["dropout"],
                                             target_modules=j["target_modules"], task_type="CAUSAL_LM"))
    steps = -(-len(train_items) // j["batch_size"]) * j["epochs"]
    args = TrainingArguments(output_dir=str(HERE / "out" / "trainer-lm"), num_train_epochs=j["epochs"], bf16=bf16,
                             per_device_train_batch_size=j["batch_size"], learning_rate=j["lr"],
                             weight_decay=0.0, warmup_steps=int(j["warmup_ratio"] * steps),
                             lr_scheduler_type="linear", max_grad_norm=j["max_grad_norm"], seed=j["seed"],
                             save_strategy="no", eval_strategy="no", logging_steps=10, report_to=[],
                             disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_items,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE))
    result = trainer.train()
    real_tokens = sum(len(x["input_ids"]) for x in train_items) * j["epochs"]
    secs = result.metrics["train_runtime"]
    val = evaluate_loss(model, data["validation"], 2 * j["batch_size"], tok.pad_token_id, torch.device("cpu"))
    return {"tokens_per_s": real_tokens / secs, "train_seconds": secs, "train_tokens": real_tokens,
            "val_loss": val["loss"], "peak_rss_mb": peak_rss_mb(), "precision": "bf16" if bf16 else "fp32"}


def section(res: dict) -> list[str]:
    from run import PARTS, columns, comparison_table, ratio_lines

    j = LM_JOB
    sides = PARTS["lm"]
    return [
        "## Instruction tuning: SmolLM2-135M-Instruct LoRA on ShareGPT", "",
        f"Same split of {j['limit']} ShareGPT conversations (loss on assistant turns only), max_length "
        f"{j['max_length']}, LoRA r={j['r']} alpha={j['alpha']} dropout={j['dropout']} on "
        f"{j['target_modules']}, {j['epochs']} epoch, batch {j['batch_size']}, lr {j['lr']} linear with warmup "
        f"{j['warmup_ratio']}, seed {j['seed']}. Trainer: DataCollatorForSeq2Seq (dynamic padding), the "
        "model's own loss over full-vocabulary logits. tunelab: the vocabulary projection and loss only at "
        "trained positions and in chunks (no N x V logits kept), dropout masks from 16-bit random words, random "
        "batches (grouping by length would save no padding: nearly every conversation fills 256 tokens). "
        "Validation loss is computed by the same function for every side.", "",
        *comparison_table(columns(res, sides, ("tunelab", "Trainer + peft")), [
            ("real tokens/s", "tokens_per_s", ".0f"), ("training time (s)", "train_seconds", ".1f"),
            ("peak RSS (MB)", "peak_rss_mb", ".0f"), ("final validation loss", "val_loss", ".4f")]), "",
        *ratio_lines(*(res[s] for s in sides)), ""]
