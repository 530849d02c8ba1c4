"""Scratch classifiers (LSTM, GRU, Transformer) on BBC News, beside the fine-tuned pretrained MiniLM.

The split is seeded and stratified like the main bench's (bench/run.py JOB), so the test articles are the
same ones MiniLM is scored on; validation (10%) and the training-set limit (LIMIT: 400 articles) are those
the MiniLM job had before it was shrunk for repeats. A lowercase WordPiece
tokenizer is trained on the training split only (no test text leaks into the vocabulary). Each model runs
through `tunelab.run.train` in this process on one thread: the step-by-step RNN loops are faster on one
thread than on two, and far more so when anything else is using the second core.

    python bench/scratch.py                     # all three, prints the markdown section
    python bench/scratch.py --only lstm         # one model
`run()` stores the figures with their date, load and machine in bench/out/scratch-<stamp>.json, from which
bench/results.py renders the section (`markdown`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import record  # noqa: E402
from run import JOB, MARKER, SMOKE  # noqa: E402  (bench/run.py: the main bench's split)

OUT = HERE / "out" / "scratch"
VOCAB_SIZE = 8000
MAX_LENGTH = 128  # half the main bench's 256: keeps every run under ~3 minutes; the lead names the topic
LIMIT, VAL_FRACTION = 400, 0.1  # training articles, validation share
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
if SMOKE:
    LIMIT, MAX_LENGTH, VOCAB_SIZE, VAL_FRACTION = 32, 32, 500, 0.02
    TRAIN.update(epochs=2)


def scratch_config(kind: str, tokenizer: Path | None, out_dir: Path):
    """The run config of one scratch model on the main bench's BBC News split."""
    from tunelab.config import config_from_dict

    model, lr = MODELS[kind]
    return config_from_dict({
        "task": "classification",
        "model": {**model, "max_length": MAX_LENGTH, "dropout": 0.1,
                  "tokenizer": None if tokenizer is None else str(tokenizer)},
        "data": {"train": "builtin:bbc-news", "limit": LIMIT, "val_fraction": VAL_FRACTION,
                 "test_fraction": JOB["test_fraction"]},
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


def minilm_figure(smoke: bool) -> dict | None:
    """The fine-tuned MiniLM's figures (tunelab's default precision, first repeat) from the newest stored
    classification measurement, if any."""
    rec = record.latest("classification", smoke)
    if rec is None:
        return None
    side = "tunelab-bf16" if "tunelab-bf16" in rec["sides"] else "tunelab-fp32"
    run = next(r for r in rec["runs"] if r["side"] == side)
    return {**run["result"], "job": rec["job"], "side": side}


def markdown(rec: dict) -> str:
    """The section, from a stored scratch measurement (and the newest classification one for MiniLM)."""
    j, t, results = JOB, rec["train"], rec["results"]
    minilm = minilm_figure(rec.get("smoke", False))
    lines = [
        "## Classification from scratch: LSTM, GRU, Transformer on BBC News", MARKER, "",
        f"{rec['limit']} training articles, {rec['val_fraction']:.0%} validation, the main bench's test articles (seed {j['seed']}); "
        f"max_length {rec['max_length']}; a lowercase WordPiece tokenizer ({rec['vocab_size']} "
        f"tokens) trained on the training split; {t['epochs']} epochs, batch {t['batch_size']}, AdamW (lr "
        f"{rec['lr']['lstm']} for the RNNs, {rec['lr']['transformer']} for the Transformer), linear schedule, "
        f"dropout 0.1, {t['threads']} thread; the best validation F1 checkpoint is tested. RNNs: 1 "
        "bidirectional layer, hidden 128 (embeddings 128), final states pooled; Transformer: 2 pre-norm layers, "
        "hidden 128, 4 heads, learned positions, mean pooling. One run per model.", "",
        f"Measured {rec['started']} to {rec['finished']} (UTC), load {rec['load_before'][0]:.2f} before and "
        f"{rec['load_after'][0]:.2f} after, on {record.describe_machine(rec['machine'])}. Figures: "
        f"`{rec['file']}`." + (" **Smoke run: tiny job, figures mean nothing.**" if rec.get("smoke") else ""), "",
        "| model | parameters | test accuracy | test F1 macro | training time (s) |", "|---|---|---|---|---|"]
    for kind, r in results.items():
        lines.append(f"| scratch {kind} | {r['parameters'] / 1e6:.2f}M | {r['accuracy']:.4f} | {r['f1_macro']:.4f} "
                     f"| {r['train_seconds']:.1f} |")
    if minilm:
        mj = minilm["job"]
        lines.append(f"| MiniLM-L6, pretrained, fine-tuned ({minilm['data']['train_examples']} articles, "
                     f"{mj['epochs']} epoch(s), max_length {mj['max_length']}, {minilm['precision']}; part "
                     f"classification) | 22.7M | {minilm['accuracy']:.4f} | {minilm['f1_macro']:.4f} "
                     f"| {minilm['train_seconds']:.1f} |")
    else:
        lines.append("| MiniLM-L6, pretrained, fine-tuned | 22.7M | not measured: run `make bench PART=classification` "
                     "| | |")
    return "\n".join(lines) + "\n"


def run(kinds: tuple[str, ...] = tuple(MODELS), smoke: bool = SMOKE) -> dict:
    """Train each scratch model; store and return the measurement (bench/out/scratch[-smoke]-<stamp>.json)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = record.new_path("scratch", smoke)
    rec = {"part": "scratch", "smoke": smoke, "started": record.utc_now(), "load_before": record.load(),
           "machine": record.machine(), "limit": LIMIT, "val_fraction": VAL_FRACTION, "max_length": MAX_LENGTH, "vocab_size": VOCAB_SIZE,
           "train": TRAIN, "lr": {k: lr for k, (_, lr) in MODELS.items()}}
    tokenizer = train_split_tokenizer(OUT / "tokenizer")
    rec["results"] = {kind: run_one(kind, tokenizer) for kind in kinds}
    rec.update(finished=record.utc_now(), load_after=record.load(), complete=True)
    record.save(path, rec)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(MODELS), action="append")
    args = ap.parse_args()
    rec = run(tuple(args.only or MODELS))
    print(markdown({**rec, "file": "bench/out/scratch"}))


if __name__ == "__main__":
    main()
