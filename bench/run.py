"""`make bench`: the same fine-tuning job in tunelab and in Hugging Face `Trainer`, one after the other.

Each side runs in its own child process (so peak memory is its own), on the same data split, model,
hyper-parameters and batch size. Each tool runs twice: in float32, and in bf16 mixed precision (autocast;
weights and optimizer in float32), so that every ratio compares the same arithmetic. tunelab's default
(`train.precision: auto`) is bf16 on a CPU with native bf16, fp32 elsewhere; Trainer's default is fp32.
Results go to bench/results.md (and bench/out/results.json); sections of parts left out with --skip keep
their previous text.

    python bench/run.py                          # everything
    python bench/run.py --skip lm scratch        # the classification part only
    python bench/run.py --only tunelab-fp32      # one side (prints JSON)
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

from tunelab.train.memory import TRIM_THRESHOLD

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One job, two implementations. MiniLM full fine-tuning on BBC News.
JOB = dict(limit=400, max_length=256, epochs=2, batch_size=16, lr=1.0e-4, weight_decay=0.01, warmup_ratio=0.06,
           max_grad_norm=1.0, seed=42)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tunelab_config(out_dir: str, precision: str = "auto"):
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
                  "precision": precision, "early_stopping": {"metric": "f1_macro", "patience": None}},
        "output_dir": out_dir})


def resolved_precision(name: str) -> str:
    import torch

    from tunelab.train.precision import resolve_precision

    return "bf16" if resolve_precision(name, torch.device("cpu")) == torch.bfloat16 else "fp32"


def run_tunelab(precision: str = "auto") -> dict:
    from tunelab.run import train

    out = HERE / "out" / f"tunelab-{precision}"
    run_dir = train(tunelab_config(str(out), precision), overwrite=True, show_progress=False, log=lambda m: None)
    ev = json.loads((run_dir / "eval.json").read_text())
    return {"tokens_per_s": ev["train_tokens_per_s"], "train_seconds": ev["train_seconds"],
            "train_tokens": ev["train_tokens"], "accuracy": ev["test"]["accuracy"],
            "f1_macro": ev["test"]["f1_macro"], "peak_rss_mb": peak_rss_mb(),
            "precision": resolved_precision(precision)}


def run_trainer(bf16: bool = False) -> dict:
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
    args = TrainingArguments(output_dir=str(HERE / "out" / "trainer-run"), num_train_epochs=j["epochs"], bf16=bf16,
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
            "peak_rss_mb": peak_rss_mb(), "precision": "bf16" if bf16 else "fp32"}


def _lm(name, *args):
    def run() -> dict:
        import causal

        return getattr(causal, name)(*args)
    return run


# Column order of the tables: tunelab's default, then each tool in each precision.
SIDES = {"tunelab": run_tunelab, "tunelab-fp32": lambda: run_tunelab("fp32"),
         "trainer": run_trainer, "trainer-bf16": lambda: run_trainer(bf16=True),
         "trainer-keepmem": run_trainer,  # run by child() with KEEP_MEMORY_ENV
         "tunelab-lm": _lm("run_tunelab_lm"), "tunelab-lm-fp32": _lm("run_tunelab_lm", "fp32"),
         "trainer-lm": _lm("run_trainer_lm"), "trainer-lm-bf16": _lm("run_trainer_lm", True)}
PARTS = {"classification": ("tunelab", "tunelab-fp32", "trainer", "trainer-bf16", "trainer-keepmem"),
         "lm": ("tunelab-lm", "tunelab-lm-fp32", "trainer-lm", "trainer-lm-bf16")}
HEADINGS = {"classification": "## Classification", "lm": "## Instruction tuning",
            "scratch": "## Classification from scratch",
            # written by bench/seeds.py
            "classification_seeds": "## Classification: test accuracy over seeds",
            "lm_seeds": "## Instruction tuning: validation loss over seeds"}


# glibc's environment form of what `train.reuse_memory` sets in tunelab (tunelab/train/memory.py): the
# Trainer run with it shows how much of the difference is the allocator.
KEEP_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def child(side: str) -> dict:
    env = {**os.environ, **KEEP_MEMORY_ENV} if side.endswith("-keepmem") else None
    out = subprocess.run([sys.executable, __file__, "--only", side], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def comparison_table(cols: dict[str, dict], rows: list[tuple[str, str, str]]) -> list[str]:
    """A markdown table: one column per side; rows are (label, key, format)."""
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(format(c[key], fmt) for c in cols.values()) + " |")
    return lines


def ratio_lines(t: dict, t32: dict, h: dict, h16: dict) -> list[str]:
    """tunelab over Trainer in real tokens/s: same arithmetic each time, then the two defaults."""
    r = lambda a, b: a["tokens_per_s"] / b["tokens_per_s"]  # noqa: E731
    bf16 = t if t["precision"] == "bf16" else None
    lines = [f"- both fp32: tunelab **{r(t32, h):.2f}x** the Trainer's tokens/s"]
    if bf16:
        lines.append(f"- both bf16 mixed precision: tunelab **{r(bf16, h16):.2f}x**")
    lines.append(f"- each tool's default (tunelab {t['precision']}, Trainer fp32): tunelab **{r(t, h):.2f}x**")
    return lines


def columns(res: dict, sides: tuple[str, ...], names: tuple[str, str]) -> dict[str, dict]:
    t, t32, h, h16 = (res[s] for s in sides[:4])
    return {f"{names[0]} default ({t['precision']})": t, f"{names[0]} fp32": t32,
            f"{names[1]} fp32 (default)": h, f"{names[1]} bf16": h16}


def classification_section(res: dict) -> list[str]:
    j = JOB
    sides = PARTS["classification"]
    return [
        "## Classification: MiniLM-L6 full fine-tuning on BBC News", "",
        f"Same split (seeded, stratified), {j['limit']} training articles, max_length {j['max_length']}, "
        f"{j['epochs']} epochs, batch {j['batch_size']}, AdamW lr {j['lr']}, linear schedule, warmup "
        f"{j['warmup_ratio']}, clip {j['max_grad_norm']}, seed {j['seed']}. Tokens/s counts real (non-padding) "
        "training tokens over training time (evaluation excluded). Trainer uses DataCollatorWithPadding "
        "(pads each random batch to its longest example). tunelab computes only the [CLS] position in the last "
        "layer and draws dropout masks from 16-bit random words (`train.fast_dropout`); its batches are random "
        "too, as grouping by length would save no padding (nearly every article fills 256 tokens).", "",
        *comparison_table(columns(res, sides, ("tunelab", "HF Trainer")), [
            ("real tokens/s", "tokens_per_s", ".0f"), ("training time (s)", "train_seconds", ".1f"),
            ("peak RSS (MB)", "peak_rss_mb", ".0f"), ("test accuracy", "accuracy", ".4f"),
            ("test F1 macro", "f1_macro", ".4f")]), "",
        *ratio_lines(*(res[s] for s in sides[:4])), *keepmem_lines(res), ""]


def keepmem_lines(res: dict) -> list[str]:
    """The Trainer with glibc told to keep freed memory, as tunelab does (`train.reuse_memory`)."""
    if "trainer-keepmem" not in res:
        return []
    k, t32 = res["trainer-keepmem"], res["tunelab-fp32"]
    env = " ".join(f"{n}={v}" for n, v in KEEP_MEMORY_ENV.items())
    return ["", f"tunelab keeps freed memory for reuse (`train.reuse_memory`). The Trainer in fp32 with the same "
            f"setting (`{env}`) ran at {k['tokens_per_s']:.0f} tokens/s (peak RSS {k['peak_rss_mb']:.0f} MB, "
            f"test accuracy {k['accuracy']:.4f}); tunelab fp32 is **{t32['tokens_per_s'] / k['tokens_per_s']:.2f}x** "
            "that, the part of the gain that is not the allocator."]


def previous_sections() -> dict[str, str]:
    """The parts of the current results.md, by part name, to keep those not re-run."""
    path = HERE / "results.md"
    if not path.is_file():
        return {}
    text, found = path.read_text(), {}
    chunks = ["## " + c for c in text.split("\n## ")[1:]]
    for part, heading in HEADINGS.items():
        # the longest matching heading wins ("## Classification from scratch" vs "## Classification")
        match = [c for c in chunks if c.startswith(heading)
                 and not any(c.startswith(h) for h in HEADINGS.values() if len(h) > len(heading))]
        if match:
            found[part] = match[0].rstrip("\n") + "\n"
    return found


def write_results(res: dict) -> None:
    import platform

    import torch

    from tunelab.train.precision import cpu_has_fast_bf16

    old = previous_sections()
    lines = [
        "# tunelab benchmark", "",
        "Produced by `make bench` (`python bench/run.py`). Each side runs in its own process, one after the "
        "other; peak RSS is that process's maximum resident memory. Sections carry the date of their run.", ""]
    def when(part: str) -> list[str]:
        return [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores "
                f"({platform.processor() or platform.machine()}, native bf16: "
                f"{'yes' if cpu_has_fast_bf16() else 'no'}), torch {torch.__version__}, "
                f"{res.get('threads', 2)} threads; load average {res[f'load_before_{part}']:.2f} before the part.", ""]

    if "tunelab" in res:
        lines += classification_section(res) + when("classification")
    elif "classification" in old:
        lines += [old["classification"]]
    if "tunelab-lm" in res:
        from causal import section

        lines += section(res) + when("lm")
    elif "lm" in old:
        lines += [old["lm"]]
    if "scratch" in res:
        lines += [res["scratch"]]
    elif "scratch" in old:
        lines += [old["scratch"]]
    for part in ("classification_seeds", "lm_seeds"):
        if part in old:
            lines += [old[part]]
    (HERE / "results.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(SIDES))
    ap.add_argument("--skip", nargs="*", default=[], choices=["classification", "lm", "scratch"],
                    help="leave out parts of the benchmark")
    ap.add_argument("--rewrite", action="store_true",
                    help="rebuild results.md from the figures of the last run (bench/out/results.json)")
    args = ap.parse_args()
    if args.only:
        print(json.dumps(SIDES[args.only]()))
        return
    if args.rewrite:
        write_results(json.loads((HERE / "out" / "results.json").read_text()))
        return
    (HERE / "out").mkdir(exist_ok=True)
    import torch

    res: dict = {"threads": torch.get_num_threads()}  # the sides' (bench/scratch.py later sets 1 in here)
    for part, sides in PARTS.items():
        if part not in args.skip:
            res[f"load_before_{part}"] = os.getloadavg()[0]
            for side in sides:
                res[side] = child(side)
                print(f"{side}: {res[side]}", flush=True)
    saved = HERE / "out" / "results.json"  # merged with earlier runs: bench/scratch.py reads the MiniLM row
    merged = {**(json.loads(saved.read_text()) if saved.is_file() else {}), **res}
    saved.write_text(json.dumps(merged, indent=2))
    if "scratch" not in args.skip:
        import scratch

        res["scratch"] = scratch.run()
    write_results(res)


if __name__ == "__main__":
    main()
