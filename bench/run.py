"""`make bench`: the same fine-tuning job in tunelab and in Hugging Face `Trainer`, measured so a sceptic can
check it.

Each side runs in its own child process (so peak memory is its own), on the same data split, model,
hyper-parameters, batch size, learning-rate schedule (the Trainer gets tunelab's optimizer and schedule, and
the bench fails if any side's per-step rates differ), checkpoint policy (the best by validation, evaluated at
each epoch's end, on both sides) and timing span (seconds inside optimizer steps on both sides; see fair.py).
The sides run interleaved, the order reversed every round (A B C D, D C B A, ...), `--repeats` times each;
tables give the median and range. Every run is stored with its time, load and machine in
bench/out/<part>-<stamp>.json; results.md is rendered from those files alone.

    python bench/run.py                                   # every part (the fourteen below)
    python bench/run.py --part lm                         # one part: classification lm scratch peak
                                                          #           checkpoint distributed seq2seq qa
                                                          #           retrieval ner compress explain serve
                                                          #           augment
    python bench/run.py --part classification --smoke     # a tiny job, 2 repeats: checks the bench end to end
    python bench/run.py --rewrite                         # results.md again from the stored measurements
    python bench/run.py --only tunelab-fp32               # one side in this process (prints JSON)

Two parts measure tunelab alone. `checkpoint` (bench/checkpoint.py): seconds and megabytes per checkpoint, and
the overhead of `train.checkpoint_every` at its default (null) against 0 in % of the loop's time, for MiniLM
full fine-tuning and SmolLM2 LoRA. `distributed` (bench/distributed.py): DDP in 2 processes x 1 thread
(torchrun) against 1 process x 2 threads on the same global batch, tokens/s of both and the largest
differences of their final weights and logged losses.

`seq2seq` (bench/translation.py): German <-> English on builtin:gettext with one training budget for a scratch
Transformer, MiniLM warm-started as an encoder-decoder and SmolLM2 LoRA (decoder-only): test chrF / BLEU and
speed; and the MiniLM job trained by Hugging Face `Seq2SeqTrainer` beside tunelab's.

`qa` and `retrieval` (bench/answering.py): extractive QA (MiniLM + span head on builtin:bbc-qa) trained by
tunelab and by `Trainer` on the same windows, tokens/s and test EM / F1; retrieval recall@k / MRR@10 of BM25,
the untuned and the tunelab-fine-tuned MiniLM on BBC headline -> article, and the index's build and query
speed, exact and HNSW, with the HNSW search's recall@10 against exact search.

`ner` (bench/tagging_bench.py): token classification (MiniLM + token head on builtin:ner-synthetic) trained by
tunelab and by `Trainer` with DataCollatorForTokenClassification on the same windows and word-aligned labels,
tokens/s and test entity F1 (seqeval strict IOB2, tunelab's function) paired over the test sentences.

`compress` (bench/tradeoff.py): a MiniLM teacher on BBC News, its variants made by `tunelab compress`
(structured pruning, int8, low rank, their combination), a 3-layer student distilled from it and the same
student on the labels alone, all measured by `tunelab compress --report`: parameters, weights, latency,
throughput, test F1 and the share of the teacher's F1 kept.

`explain` (bench/explain_bench.py): the BBC News MiniLM run of examples/bbc-news.yaml, its first test articles
explained by every method of `tunelab explain` (ig, occlusion, lime, shap, attention): per method the area over
the deletion curve (AOPC) against random deletion's, paired over the articles, and the seconds per explanation.

`serve` (bench/serve_bench.py): a bounded load test of `tunelab serve` child processes on 127.0.0.1: a short
BBC News MiniLM run classifying test articles from 8 clients with server-side batching (--batch-size 16) and
without (1), requests/s, p50/p99 latency and the mean batch size from /metrics; SmolLM2-135M streaming chat
from 1 and 4 clients, time to first token, tokens/s per stream and latency; and a burst against a queue of 2
that must be answered 503 with Retry-After. Any status other than 200 and 503 fails the part.

`augment` (bench/augment_bench.py): a learning curve of MiniLM on BBC News at 50 / 100 / 200 / 400 training
articles, each trained without and with `data.augment` (4 EDA-edited copies per article) for the same number of
steps, tested on the same 223 articles: test accuracy and macro-F1 per point over 2-3 seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import record  # noqa: E402  (bench/record.py)
from tunelab.train.memory import TRIM_THRESHOLD  # noqa: E402

SMOKE = os.environ.get("BENCH_SMOKE") == "1"  # set by --smoke, inherited by the children
MARKER = "<!-- bench method 2 -->"  # sections measured as described in this file carry it

# MiniLM full fine-tuning on BBC News. 160 articles x 1 epoch (10 steps) and a validation split of 5% (111
# articles; it only picks the checkpoint) keep the part with 5 sides x 3 repeats, their validation and test
# passes, near 14 minutes on an idle 2-core machine. The test split is the same 10% (223 articles) as before.
JOB = dict(limit=160, max_length=256, epochs=1, batch_size=16, lr=1.0e-4, weight_decay=0.01, warmup_ratio=0.1,
           max_grad_norm=1.0, seed=42, val_fraction=0.05, test_fraction=0.1)
# smoke: 2 epochs, so the best-of-two-evaluations path runs too; small held-out splits
SMOKE_SIZES = dict(limit=32, max_length=64, epochs=2, batch_size=8, warmup_ratio=0.25, val_fraction=0.02,
                   test_fraction=0.02)
if SMOKE:
    JOB.update(SMOKE_SIZES)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tunelab_config(out_dir: str, precision: str = "auto"):
    from tunelab.config import config_from_dict

    j = JOB
    return config_from_dict({
        "task": "classification",
        "model": {"name": "builtin:minilm-l6", "max_length": j["max_length"]},
        "data": {"train": "builtin:bbc-news", "limit": j["limit"], "val_fraction": j["val_fraction"],
                 "test_fraction": j["test_fraction"]},
        "method": {"name": "full"},
        "train": {"epochs": j["epochs"], "batch_size": j["batch_size"], "lr": j["lr"],
                  "weight_decay": j["weight_decay"], "warmup_ratio": j["warmup_ratio"],
                  "max_grad_norm": j["max_grad_norm"], "seed": j["seed"], "scheduler": "linear",
                  "precision": precision, "log_every": 1,  # every step's lr, for the schedule check
                  "early_stopping": {"metric": "f1_macro", "patience": None}},
        "output_dir": out_dir})


def resolved_precision(name: str) -> str:
    import torch

    from tunelab.train.precision import resolve_precision

    return "bf16" if resolve_precision(name, torch.device("cpu")) == torch.bfloat16 else "fp32"


def capture(job_class):
    """A job factory for `tunelab.run.train` that keeps the job, to read its data and model afterwards."""
    kept = {}

    def factory(cfg, device, log):
        kept["job"] = job_class(cfg, device, log)
        return kept["job"]
    return factory, kept


def classification_facts(examples: dict, epochs: int) -> dict:
    """What the job really trains and tests on (tunelab's tokenised splits; the Trainer gets the same ids)."""
    return {"epochs": epochs, **{f"{name}_{what}": value for name, ex in examples.items()
                                 for what, value in (("examples", len(ex)), ("tokens", ex.real_tokens))}}


def classification_flops(model, examples) -> float:
    """Model FLOPs of the training (record.training_flops; full fine-tuning, bidirectional attention)."""
    cfg = model.config
    return JOB["epochs"] * record.training_flops(
        record.matmul_params(model), [(len(ids), 1) for ids in examples.ids], layers=cfg.num_hidden_layers,
        hidden=cfg.hidden_size, full=True, causal=False)


def run_tunelab(precision: str = "auto") -> dict:
    from fair import tunelab_lrs
    from tunelab.run import train
    from tunelab.tasks.classification import ClassificationJob

    factory, kept = capture(ClassificationJob)
    run_dir = train(tunelab_config(str(HERE / "out" / f"tunelab-{precision}"), precision), overwrite=True,
                    show_progress=False, log=lambda m: None, job_factory=factory)
    ev, job = json.loads((run_dir / "eval.json").read_text()), kept["job"]
    test = job.examples["test"]
    return {"tokens_per_s": ev["train_tokens_per_s"], "train_seconds": ev["train_seconds"],
            "train_tokens": ev["train_tokens"], "steps": ev["steps"], "best_step": ev["best_step"],
            "lrs": tunelab_lrs(run_dir / "metrics.jsonl"), "accuracy": ev["test"]["accuracy"],
            "f1_macro": ev["test"]["f1_macro"],
            "test_correct": [int(p == y) for p, y in zip(job._test_probs.argmax(1).tolist(), test.labels)],
            "peak_rss_mb": peak_rss_mb(), "precision": resolved_precision(precision),
            "model_flops": classification_flops(job.model, job.examples["train"]),
            "params": record.matmul_params(job.model),
            "data": classification_facts(job.examples, JOB["epochs"])}


def tunelab_examples():
    """tunelab's split, label set and token ids (Examples per split) and the tokenizer, without its model: the
    Trainer side trains the very same ids, and its peak memory holds one model only."""
    from tunelab.models.load import load_tokenizer
    from tunelab.models.registry import resolve_model
    from tunelab.tasks.classification import label_set, make_examples, raw_labels, split_records

    cfg = tunelab_config(str(HERE / "out" / "unused"))
    splits = split_records(cfg, lambda m: None)
    labels = label_set(raw_labels(splits["train"][0], cfg.data.label_field, cfg.data.train))
    tok = load_tokenizer(resolve_model(cfg.model.name))
    examples = {name: make_examples(tok, recs, text_field=cfg.data.text_field, label_field=cfg.data.label_field,
                                    label2id={lab: i for i, lab in enumerate(labels)},
                                    max_length=cfg.model.max_length, source=src)
                for name, (recs, src) in splits.items()}
    return examples, labels, tok


def run_trainer(bf16: bool = False) -> dict:
    """The Hugging Face baseline: Trainer + DataCollatorWithPadding (dynamic padding), on tunelab's split and
    token ids, with tunelab's optimizer and schedule, best-by-validation checkpoint and timing span."""
    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from fair import BestByValidation, StepTimer, tunelab_optimizers, tunelab_steps
    from tunelab.evaluate.metrics import classification_metrics
    from tunelab.models.registry import resolve_model
    from tunelab.tasks.classification import predict_proba

    hf_logging.set_verbosity_error()
    j = JOB
    examples, labels, tok = tunelab_examples()
    train_items = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": y}
                   for ids, y in zip(examples["train"].ids, examples["train"].labels)]

    def metrics(model, split: str) -> dict:
        probs = predict_proba(model, examples[split], 2 * j["batch_size"], tok.pad_token_id, torch.device("cpu"))
        return {**classification_metrics(examples[split].labels, probs.numpy(), labels), "probs": probs}

    torch.manual_seed(j["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(str(resolve_model("builtin:minilm-l6")),
                                                               num_labels=len(labels))
    total, warmup = tunelab_steps(-(-len(train_items) // j["batch_size"]), j["epochs"], j["warmup_ratio"])
    timer = StepTimer()
    best = BestByValidation(lambda m: metrics(m, "validation")["f1_macro"], minimise=False)
    args = TrainingArguments(output_dir=str(HERE / "out" / "trainer-run"), num_train_epochs=j["epochs"], bf16=bf16,
                             per_device_train_batch_size=j["batch_size"], max_grad_norm=j["max_grad_norm"],
                             seed=j["seed"], save_strategy="no", eval_strategy="no", logging_steps=10,
                             report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train_items, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[timer, best], optimizers=tunelab_optimizers(
                          model, lr=j["lr"], weight_decay=j["weight_decay"], total=total, warmup=warmup))
    trainer.train()
    test = metrics(model, "test")
    tokens = examples["train"].real_tokens * j["epochs"]
    return {"tokens_per_s": tokens / timer.seconds, "train_seconds": timer.seconds, "train_tokens": tokens,
            "steps": len(timer.lrs), "best_step": best.best_step, "lrs": timer.lrs, "accuracy": test["accuracy"],
            "f1_macro": test["f1_macro"],
            "test_correct": [int(p == y) for p, y in zip(test["probs"].argmax(1).tolist(), examples["test"].labels)],
            "peak_rss_mb": peak_rss_mb(), "precision": "bf16" if bf16 else "fp32",
            "model_flops": classification_flops(model, examples["train"]),
            "params": record.matmul_params(model),
            "data": classification_facts(examples, j["epochs"])}


def _side(module: str, name: str, *args):
    """A side run by `name(*args)` of bench/<module>.py, imported only in the child that runs it."""
    def run() -> dict:
        import importlib

        return getattr(importlib.import_module(module), name)(*args)
    return run


SIDES = {"tunelab-fp32": lambda: run_tunelab("fp32"), "tunelab-bf16": lambda: run_tunelab("bf16"),
         "trainer-fp32": run_trainer, "trainer-bf16": lambda: run_trainer(bf16=True),
         "trainer-fp32-keepmem": run_trainer,  # child() runs it with KEEP_MEMORY_ENV
         "tunelab-lm-fp32": _side("causal", "run_tunelab_lm", "fp32"),
         "tunelab-lm-bf16": _side("causal", "run_tunelab_lm", "bf16"),
         "trainer-lm-fp32": _side("causal", "run_trainer_lm"),
         "trainer-lm-bf16": _side("causal", "run_trainer_lm", True),
         "peak": record.peak,
         **{f"ckpt-{job}-{setting}": _side("checkpoint", "run_side", job, setting)
            for job in ("minilm", "lm") for setting in ("default", "off")},
         **{side: _side("distributed", "run_side", side) for side in ("ddp-2x1", "single-1x2")},
         **{side: _side("translation", "run_side", side) for side in (
             "s2s-scratch-de-en", "s2s-scratch-en-de", "s2s-minilm-de-en", "s2s-trainer-minilm-de-en",
             "s2s-smollm-de-en", "s2s-smollm-en-de")},
         **{side: _side("answering", "run_side", side) for side in (
             "qa-tunelab-fp32", "qa-tunelab-bf16", "qa-trainer-fp32", "qa-trainer-bf16", "retrieval-finetune",
             "retrieval-index")},
         **{side: _side("tagging_bench", "run_side", side) for side in (
             "ner-tunelab-fp32", "ner-tunelab-bf16", "ner-trainer-fp32", "ner-trainer-bf16")}}
PARTS = {"classification": ("tunelab-fp32", "tunelab-bf16", "trainer-fp32", "trainer-bf16", "trainer-fp32-keepmem"),
         "lm": ("tunelab-lm-fp32", "tunelab-lm-bf16", "trainer-lm-fp32", "trainer-lm-bf16"),
         "checkpoint": ("ckpt-minilm-default", "ckpt-minilm-off", "ckpt-lm-default", "ckpt-lm-off"),
         "distributed": ("ddp-2x1", "single-1x2"),
         "seq2seq": tuple(s for s in SIDES if s.startswith("s2s-")),
         "qa": tuple(s for s in SIDES if s.startswith("qa-")),
         "retrieval": ("retrieval-finetune", "retrieval-index"),
         "ner": tuple(s for s in SIDES if s.startswith("ner-"))}
ALL_PARTS = ("classification", "lm", "scratch", "peak", "checkpoint", "distributed", "seq2seq", "qa", "retrieval",
             "ner", "compress", "explain", "serve", "augment")
# runs per side where 3 would not fit the part's time (default 3; 2 with --smoke)
REPEATS = {"seq2seq": 2, "qa": 2, "retrieval": 2, "ner": 2}
HEADINGS = {"peak": "## Machine and matmul peak", "classification": "## Classification",
            "lm": "## Instruction tuning", "scratch": "## Classification from scratch",
            "checkpoint": "## Checkpoint cost", "distributed": "## Distributed data parallel",
            "seq2seq": "## Translation", "qa": "## Extractive QA", "retrieval": "## Retrieval",
            "ner": "## Named-entity recognition", "compress": "## Compression trade-off",
            "explain": "## Explanations", "serve": "## Serving", "augment": "## Augmentation",
            # written by bench/seeds.py
            "classification_seeds": "## Classification: test accuracy over seeds",
            "lm_seeds": "## Instruction tuning: validation loss over seeds"}

# glibc's environment form of what `train.reuse_memory` sets in tunelab (tunelab/train/memory.py): the
# Trainer run with it shows how much of the difference is the allocator.
KEEP_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def sides_of(part: str, fast_bf16: bool) -> list[str]:
    """A part's sides; the bf16 ones only on a CPU with native bf16 (elsewhere bf16 is ~100x slower)."""
    return [s for s in PARTS[part] if fast_bf16 or "bf16" not in s]


def child(side: str) -> dict:
    """One side in a fresh process; its result is the last line of its standard output."""
    env = {**os.environ, **KEEP_MEMORY_ENV} if side.endswith("-keepmem") else None
    out = subprocess.run([sys.executable, __file__, "--only", side], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_same_job(runs: list[dict]) -> None:
    """Fail loudly unless every run of one job used the same per-step learning rates and trained the same
    tokens (a part with several jobs names each run's in its result's `job_name`)."""
    for name in dict.fromkeys(r["result"].get("job_name") for r in runs):
        _check_one_job([r for r in runs if r["result"].get("job_name") == name])


def _check_one_job(runs: list[dict]) -> None:
    from fair import same_lrs

    first = runs[0]
    for run in runs[1:]:
        problem = same_lrs(first["result"]["lrs"], run["result"]["lrs"])
        if problem:
            raise SystemExit(f"learning-rate schedules differ: {first['side']} vs {run['side']}: {problem}")
        if run["result"]["train_tokens"] != first["result"]["train_tokens"]:
            raise SystemExit(f"trained tokens differ: {first['side']} {first['result']['train_tokens']} vs "
                             f"{run['side']} {run['result']['train_tokens']}")


def measure(part: str, repeats: int) -> dict:
    """Interleaved repeats of a part's sides, each run stored as it finishes; the peak before and after."""
    path, machine = record.new_path(part, SMOKE), record.machine()
    sides = sides_of(part, machine["fast_bf16"])
    rec = {"part": part, "smoke": SMOKE, "job": job_of(part), "sides": sides, "repeats": repeats,
           "machine": machine, "peak": [child("peak")], "runs": [], "complete": False}
    for r in range(repeats):
        for side in (sides if r % 2 == 0 else sides[::-1]):  # A B C, C B A: drift hits every side alike
            run = {"side": side, "repeat": r, "started": record.utc_now(), "load_before": record.load()}
            run["result"] = child(side)
            run.update(finished=record.utc_now(), load_after=record.load(), machine=machine)
            rec["runs"].append(run)
            record.save(path, rec)
            check_same_job(rec["runs"])
            if part == "seq2seq":  # one training budget for every model
                import translation as seq2seq

                seq2seq.check_budget(rec["runs"])
            print(f"{part} {side} repeat {r}: {run['result']['tokens_per_s']:.0f} tokens/s, load "
                  f"{run['load_before'][0]:.2f} -> {run['load_after'][0]:.2f}", flush=True)
    rec["peak"].append(child("peak"))
    if part == "distributed":  # the two sides' final weights and losses, compared once all runs are in
        import distributed

        rec["equivalence"] = distributed.equivalence(rec)
    rec["complete"] = True
    record.save(path, rec)
    return rec


def job_of(part: str) -> dict:
    if part == "lm":
        import causal

        return dict(causal.LM_JOB)
    if part == "checkpoint":
        import checkpoint

        return {name: dict(job) for name, job in checkpoint.JOBS.items()}
    if part == "distributed":
        import distributed

        return dict(distributed.JOB)
    if part == "seq2seq":
        import translation as seq2seq

        return seq2seq.job()
    if part in ("qa", "retrieval"):
        import answering

        return answering.job(part)
    if part == "ner":
        import tagging_bench

        return tagging_bench.job()
    return dict(JOB)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(SIDES), help="run one side in this process and print its JSON")
    ap.add_argument("--part", nargs="+", choices=ALL_PARTS, default=list(ALL_PARTS),
                    help="the parts to measure (default: all of them)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per side (default 3; seq2seq, qa, retrieval, ner 2; 2 with --smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny jobs, to check the bench end to end; results go to bench/out/results-smoke.md")
    ap.add_argument("--rewrite", action="store_true", help="only rebuild results.md from the stored measurements")
    args = ap.parse_args()
    if args.only:
        print(json.dumps(SIDES[args.only]()))
        return
    if args.smoke:
        os.environ["BENCH_SMOKE"] = "1"
        global SMOKE
        SMOKE = True
        JOB.update(SMOKE_SIZES)
    import results

    if not args.rewrite:
        for part in args.part:
            if part == "scratch":
                import scratch

                scratch.run(smoke=SMOKE)
            elif part == "compress":
                import tradeoff

                tradeoff.run(smoke=SMOKE)
            elif part == "explain":
                import explain_bench

                explain_bench.run(smoke=SMOKE)
            elif part == "serve":
                import serve_bench

                serve_bench.run(smoke=SMOKE)
            elif part == "augment":
                import augment_bench

                augment_bench.run(smoke=SMOKE)
            elif part == "peak":
                record.save(record.new_path("peak", SMOKE), {"part": "peak", **child("peak"), "complete": True})
            else:
                measure(part, args.repeats or (2 if SMOKE else REPEATS.get(part, 3)))
    print(results.write(SMOKE))


if __name__ == "__main__":
    main()
