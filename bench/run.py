"""`make bench`: the same fine-tuning job in tunelab and in Hugging Face `Trainer`, one after the other.

Each side runs in its own child process (so peak memory is its own), on the same data split, model,
hyper-parameters and batch size. Results go to bench/results.md (and bench/out/*.json).

    python bench/run.py                 # both classification runs, then the table
    python bench/run.py --only tunelab  # one side (prints JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One job, two implementations. MiniLM full fine-tuning on BBC News.
JOB = dict(limit=400, max_length=256, epochs=2, batch_size=16, lr=1.0e-4, weight_decay=0.01, warmup_ratio=0.06,
           max_grad_norm=1.0, seed=42)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tunelab_config(out_dir: str):
    from tunelab.config import config_from_dict

    j = JOB
    return config_from_dict({
        "task": "classification",
        "model": {"name": "builtin:minilm-l6", "max_length": j["max_length"]},
        "data": {"train": "builtin:bbc-news", "limit": j["limit"], "val_fraction": 0.1, "test_fraction": 0.1},
        "method": {"name": "full"},
        "train": {"epochs": j["epochs"], "batch_size": j["batch_size"], "lr": j["lr"],
                  "weight_decay": j["weight_decay"], "warmup_ratio": j["warmup_ratio"],
                  "max_grad_norm": j["max_grad_norm"], "seed": j["seed"], "scheduler": "linear",
                  "early_stopping": {"metric": "f1_macro", "patience": None}},
        "output_dir": out_dir})


def run_tunelab() -> dict:
    from tunelab.run import train

    out = HERE / "out" / "tunelab-run"
    run_dir = train(tunelab_config(str(out)), overwrite=True, show_progress=False, log=lambda m: None)
    ev = json.loads((run_dir / "eval.json").read_text())
    return {"tokens_per_s": ev["train_tokens_per_s"], "train_seconds": ev["train_seconds"],
            "train_tokens": ev["train_tokens"], "accuracy": ev["test"]["accuracy"],
            "f1_macro": ev["test"]["f1_macro"], "peak_rss_mb": peak_rss_mb()}


def run_trainer() -> dict:
    """The Hugging Face baseline: Trainer + DataCollatorWithPadding (dynamic padding), same split."""
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)
    from transformers.utils import logging as hf_logging

    from tunelab.models.registry import resolve_model
    from tunelab.tasks.classification import label_set, raw_labels, split_records

    hf_logging.set_verbosity_error()
    j = JOB
    cfg = tunelab_config(str(HERE / "out" / "unused"))
    splits = split_records(cfg, lambda m: None)  # the very same train/test records as tunelab
    path = resolve_model("builtin:minilm-l6")
    tok = AutoTokenizer.from_pretrained(str(path))
    labels = label_set(raw_labels(splits["train"][0], "label", "train"))
    l2i = {lab: i for i, lab in enumerate(labels)}

    class DS(torch.utils.data.Dataset):
        def __init__(self, recs):
            enc = tok([r["text"] for r in recs], truncation=True, max_length=j["max_length"])
            self.items = [{"input_ids": ids, "attention_mask": am, "labels": l2i[r["label"]]}
                          for ids, am, r in zip(enc["input_ids"], enc["attention_mask"], recs)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    train_ds, test_ds = DS(splits["train"][0]), DS(splits["test"][0])
    torch.manual_seed(j["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=len(labels))
    args = TrainingArguments(output_dir=str(HERE / "out" / "trainer-run"), num_train_epochs=j["epochs"],
                             per_device_train_batch_size=j["batch_size"], per_device_eval_batch_size=32,
                             learning_rate=j["lr"], weight_decay=j["weight_decay"],
                             warmup_steps=int(j["warmup_ratio"] * (len(train_ds) // j["batch_size"] + 1) * j["epochs"]),
                             lr_scheduler_type="linear", max_grad_norm=j["max_grad_norm"], seed=j["seed"],
                             save_strategy="no", eval_strategy="no", logging_steps=10, report_to=[],
                             disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok))
    result = trainer.train()
    pred = trainer.predict(test_ds)
    y_pred, y_true = pred.predictions.argmax(-1), np.array(pred.label_ids)
    from sklearn.metrics import f1_score

    real_tokens = sum(len(x["input_ids"]) for x in train_ds.items) * j["epochs"]
    secs = result.metrics["train_runtime"]
    return {"tokens_per_s": real_tokens / secs, "train_seconds": secs, "train_tokens": real_tokens,
            "accuracy": float((y_pred == y_true).mean()), "f1_macro": float(f1_score(y_true, y_pred, average="macro")),
            "peak_rss_mb": peak_rss_mb()}


def _lm(name):
    def run() -> dict:
        import causal

        return getattr(causal, name)()
    return run


SIDES = {"tunelab": run_tunelab, "trainer": run_trainer,
         "tunelab-lm": _lm("run_tunelab_lm"), "trainer-lm": _lm("run_trainer_lm")}


def child(side: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--only", side], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def classification_section(t: dict, h: dict) -> list[str]:
    j = JOB
    return [
        "## Classification: MiniLM-L6 full fine-tuning on BBC News", "",
        f"Same split (seeded, stratified), {j['limit']} training articles, max_length {j['max_length']}, "
        f"{j['epochs']} epochs, batch {j['batch_size']}, AdamW lr {j['lr']}, linear schedule, warmup "
        f"{j['warmup_ratio']}, clip {j['max_grad_norm']}, seed {j['seed']}. Tokens/s counts real (non-padding) "
        "training tokens over training time (evaluation excluded). Trainer uses DataCollatorWithPadding "
        "(pads each random batch to its longest example); tunelab groups batches by length and computes "
        "only the [CLS] position in the last layer.", "",
        "| | tunelab | HF Trainer | ratio |", "|---|---|---|---|",
        f"| real tokens/s | {t['tokens_per_s']:.0f} | {h['tokens_per_s']:.0f} | {t['tokens_per_s'] / h['tokens_per_s']:.2f}x |",
        f"| training time (s) | {t['train_seconds']:.1f} | {h['train_seconds']:.1f} | |",
        f"| peak RSS (MB) | {t['peak_rss_mb']:.0f} | {h['peak_rss_mb']:.0f} | |",
        f"| test accuracy | {t['accuracy']:.4f} | {h['accuracy']:.4f} | |",
        f"| test F1 macro | {t['f1_macro']:.4f} | {h['f1_macro']:.4f} | |", ""]


def write_results(res: dict) -> None:
    import platform

    import torch

    lines = [
        "# tunelab benchmark", "",
        f"Measured {time.strftime('%Y-%m-%d')} with `make bench` on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} "
        "threads. Each side runs in its own process, one after the other; peak RSS is that process's maximum "
        "resident memory.", ""]
    if "tunelab" in res:
        lines += classification_section(res["tunelab"], res["trainer"])
    if "tunelab-lm" in res:
        from causal import section

        lines += section(res["tunelab-lm"], res["trainer-lm"])
    if "scratch" in res:
        lines += [res["scratch"]]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(SIDES))
    ap.add_argument("--skip", nargs="*", default=[], choices=["classification", "lm", "scratch"],
                    help="leave out parts of the benchmark")
    args = ap.parse_args()
    if args.only:
        print(json.dumps(SIDES[args.only]()))
        return
    (HERE / "out").mkdir(exist_ok=True)
    res: dict = {}
    parts = {"classification": ("tunelab", "trainer"), "lm": ("tunelab-lm", "trainer-lm")}
    for part, sides in parts.items():
        if part not in args.skip:
            for side in sides:
                res[side] = child(side)
                print(f"{side}: {res[side]}", flush=True)
    (HERE / "out" / "results.json").write_text(json.dumps(res, indent=2))
    if "scratch" not in args.skip:
        import scratch

        res["scratch"] = scratch.run()
    write_results(res)


if __name__ == "__main__":
    main()
