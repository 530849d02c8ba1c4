"""Scratch classifiers (LSTM, GRU, Transformer) on BBC News, beside the fine-tuned pretrained MiniLM.

The split is the main bench's (bench/run.py JOB: the same seeded, stratified train/validation/test split and
training-set limit), so the test articles are the same ones MiniLM is scored on. A lowercase WordPiece
tokenizer is trained on the training split only (no test text leaks into the vocabulary). Each model runs
through `tunelab.run.train` in this process on one thread: the step-by-step RNN loops are faster on one
thread than on two, and far more so when anything else is using the second core.

    python bench/scratch.py                     # all three, prints the markdown section
    python bench/scratch.py --only lstm         # one model
`run()` returns the section (bench/run.py can append it to results.md); numbers also go to
bench/out/scratch.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from run import JOB  # noqa: E402  (bench/run.py: the main bench's split and limit)

OUT = HERE / "out" / "scratch"
VOCAB_SIZE = 8000
MAX_LENGTH = 128  # half the main bench's 256: keeps every run under ~3 minutes; the lead names the topic
# 16 epochs: models that start from nothing need many passes over a few hundred articles (MiniLM: 2).
# Per kind: its model: section and learning rate (RNNs from scratch want a larger one); the rest is TRAIN.
MODELS = {
    "lstm": ({"name": "scratch:lstm", "layers": 1, "hidden_size": 128, "bidirectional": True}, 3.0e-3),
    "gru": ({"name": "scratch:gru", "layers": 1, "hidden_size": 128, "bidirectional": True}, 3.0e-3),
    "transformer": ({"name": "scratch:transformer", "layers": 2, "hidden_size": 128, "heads": 4,
                     "position": "learned"}, 2.0e-3),
}
TRAIN = dict(epochs=16, batch_size=32, weight_decay=0.01, warmup_ratio=0.06, max_grad_norm=1.0,
             scheduler="linear", threads=1)


def scratch_config(kind: str, tokenizer: Path | None, out_dir: Path):
    """The run config of one scratch model on the main bench's BBC News split."""
    from tunelab.config import config_from_dict

    model, lr = MODELS[kind]
    return config_from_dict({
        "task": "classification",
        "model": {**model, "max_length": MAX_LENGTH, "dropout": 0.1,
                  "tokenizer": None if tokenizer is None else str(tokenizer)},
        "data": {"train": "builtin:bbc-news", "limit": JOB["limit"], "val_fraction": 0.1, "test_fraction": 0.1},
        "method": {"name": "full"},
        "train": {**TRAIN, "lr": lr, "seed": JOB["seed"], "early_stopping": {"metric": "f1_macro", "patience": None}},
        "output_dir": str(out_dir)})


def train_split_tokenizer(out_dir: Path) -> Path:
    """A WordPiece tokenizer trained on the training split's texts alone."""
    from tunelab.tasks.classification import split_records
    from tunelab.tokenizer_train import build_tokenizer

    records, _ = split_records(scratch_config("lstm", None, OUT / "unused"), lambda _: None)["train"]
    tokenizer = build_tokenizer([r["text"] for r in records], VOCAB_SIZE, "wordpiece", lowercase=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def run_one(kind: str, tokenizer: Path) -> dict:
    from tunelab.methods.common import count_parameters
    from tunelab.models.scratch import load_scratch
    from tunelab.run import train

    run_dir = train(scratch_config(kind, tokenizer, OUT / kind), overwrite=True, show_progress=False,
                    log=lambda _: None)
    ev = json.loads((run_dir / "eval.json").read_text())
    model, _ = load_scratch(run_dir / "model")
    return {"accuracy": ev["test"]["accuracy"], "f1_macro": ev["test"]["f1_macro"],
            "train_seconds": ev["train_seconds"], "tokens_per_s": ev["train_tokens_per_s"],
            "steps": ev["steps"], "parameters": count_parameters(model)[1]}


def minilm_figure() -> dict | None:
    """The fine-tuned MiniLM's figures from the main bench's last run (bench/out/results.json), if any."""
    path = HERE / "out" / "results.json"
    return json.loads(path.read_text()).get("tunelab") if path.is_file() else None  # absent: classification skipped


def markdown(results: dict, minilm: dict | None) -> str:
    j, t = JOB, TRAIN
    lines = [
        "## Classification from scratch: LSTM, GRU, Transformer on BBC News", "",
        f"The main bench's split ({j['limit']} training articles, seed {j['seed']}; the same test articles); "
        f"max_length {MAX_LENGTH} (MiniLM: {j['max_length']}); a lowercase WordPiece tokenizer ({VOCAB_SIZE} "
        f"tokens) trained on the training split; {t['epochs']} epochs, batch {t['batch_size']}, AdamW (lr "
        f"{MODELS['lstm'][1]} for the RNNs, {MODELS['transformer'][1]} for the Transformer), linear schedule, "
        f"dropout 0.1, {t['threads']} thread; the best validation F1 checkpoint is tested. RNNs: 1 "
        "bidirectional layer, hidden 128 (embeddings 128), final states pooled; Transformer: 2 pre-norm layers, "
        "hidden 128, 4 heads, learned positions, mean pooling.", "",
        "| model | parameters | test accuracy | test F1 macro | training time (s) |", "|---|---|---|---|---|"]
    for kind, r in results.items():
        lines.append(f"| scratch {kind} | {r['parameters'] / 1e6:.2f}M | {r['accuracy']:.4f} | {r['f1_macro']:.4f} "
                     f"| {r['train_seconds']:.1f} |")
    if minilm:
        lines.append(f"| MiniLM-L6, pretrained, fine-tuned ({j['epochs']} epochs) | 22.7M | {minilm['accuracy']:.4f} "
                     f"| {minilm['f1_macro']:.4f} | {minilm['train_seconds']:.1f} |")
    else:
        lines.append("| MiniLM-L6, pretrained, fine-tuned | 22.7M | not measured: run `make bench` | | |")
    return "\n".join(lines) + "\n"


def run(kinds: tuple[str, ...] = tuple(MODELS), minilm: dict | None = None) -> str:
    """Train each scratch model, write bench/out/scratch.json, return the markdown section.

    `minilm`: the main bench's tunelab classification result (default: read from bench/out/results.json).
    """
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokenizer = train_split_tokenizer(OUT / "tokenizer")
    results = {kind: run_one(kind, tokenizer) for kind in kinds}
    (HERE / "out" / "scratch.json").write_text(json.dumps(
        {"results": results, "job": JOB, "max_length": MAX_LENGTH, "train": TRAIN,
         "lr": {k: lr for k, (_, lr) in MODELS.items()}, "wall_seconds": round(time.perf_counter() - t0, 1)},
        indent=2))
    return markdown(results, minilm or minilm_figure())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(MODELS), action="append")
    args = ap.parse_args()
    print(run(tuple(args.only or MODELS)))


if __name__ == "__main__":
    main()
