"""The `ner` part of `make bench` (issue 14): token-classification training speed in tunelab and in Hugging Face
`Trainer` (with `DataCollatorForTokenClassification`) on one job, and the test entity F1 of both.

Sides (each run in its own child process, interleaved over the repeats like every part):
- `ner-tunelab-fp32`, `ner-tunelab-bf16`: `tunelab.run.train` on task token_classification: builtin:minilm-l6
  with a token head, full fine-tuning on builtin:ner-synthetic (template sentences tagged PER / LOC / ORG /
  MISC / DATE in IOB2);
- `ner-trainer-fp32`, `ner-trainer-bf16`: `Trainer` on tunelab's prepared job: the same model object (the token
  head drawn after the same seed: its initial weights are fingerprinted on both sides and the section says
  whether they matched), the same training windows (token ids, word-aligned labels: the tag at each word's
  first sub-token, -100 elsewhere), tunelab's AdamW, per-step learning rates and timing span
  (bench/fair.py); tested by the job's own function.
Both sides batch plainly at random (`group_by_length: never`; the Trainer's default sampler). No validation
split: one epoch's last weights are tested, by the same decoding (best tag per word) and the same metric
(tunelab.evaluate.ner_metrics: seqeval strict IOB2). bf16 sides only where the CPU multiplies bf16 natively.

The two sides' F1 are paired over the test sentences: each sentence's strict entity counts (gold, predicted,
exactly right) are kept, and the SE of the F1 difference is the linearised one of a ratio of sums (F1 =
2 TP / (P + G) summed over sentences), sentences being the sampling unit.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import statistics
from pathlib import Path

import record
from run import MARKER, capture, peak_rss_mb, resolved_precision  # bench/ is on sys.path when run.py runs

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "tagging"
SMOKE = os.environ.get("BENCH_SMOKE") == "1"

# 1,200 training sentences (about 18 tokens each with [CLS] / [SEP]: 21,424 tokens) x 1 epoch = 75 steps of 16;
# test: 10% of builtin:ner-synthetic's 3,000 sentences (300, 806 gold entities). A probe of this job on a busy
# machine (load 2-3) reached test entity F1 0.84 (tunelab fp32) and 0.81 (Trainer fp32), so the entities are
# learned; it took 49 s (tunelab) and 117 s (Trainer) per run, setup and test pass included, so 2 rounds of the
# 4 sides (run.REPEATS) were planned; on the idle machine `make bench PART=ner` then took 6 minutes.
NER_JOB = dict(limit=1200, max_length=128, epochs=1, batch_size=16, lr=1.0e-4, weight_decay=0.01,
               warmup_ratio=0.1, max_grad_norm=1.0, seed=42, test_fraction=0.1)
if SMOKE:
    NER_JOB.update(limit=48, max_length=64, batch_size=8, test_fraction=0.01)

SIDES = ("ner-tunelab-fp32", "ner-tunelab-bf16", "ner-trainer-fp32", "ner-trainer-bf16")
NAMES = {"ner-tunelab-fp32": "tunelab fp32", "ner-tunelab-bf16": "tunelab bf16",
         "ner-trainer-fp32": "HF Trainer fp32", "ner-trainer-bf16": "HF Trainer bf16"}


def job() -> dict:
    """What a stored measurement records of the part's job."""
    return dict(NER_JOB)


def run_side(side: str) -> dict:
    """One side in this process (the child bench/run.py starts for it)."""
    tool, precision = side.split("-")[1:]
    return run_tunelab(precision) if tool == "tunelab" else run_trainer(precision)


def ner_config(precision: str, out_dir: Path):
    """The tunelab run config of the job (the Trainer side prepares its job from it too)."""
    from tunelab.config import config_from_dict

    j = NER_JOB
    return config_from_dict({
        "task": "token_classification",
        "model": {"name": "builtin:minilm-l6", "max_length": j["max_length"]},
        "data": {"train": "builtin:ner-synthetic", "limit": j["limit"], "val_fraction": 0.0,
                 "test_fraction": j["test_fraction"]},
        "method": {"name": "full"},
        "train": {"epochs": j["epochs"], "batch_size": j["batch_size"], "lr": j["lr"],
                  "weight_decay": j["weight_decay"], "warmup_ratio": j["warmup_ratio"],
                  "max_grad_norm": j["max_grad_norm"], "seed": j["seed"], "scheduler": "linear",
                  "precision": precision, "log_every": 1, "group_by_length": "never",
                  "early_stopping": {"patience": None}},
        "output_dir": str(out_dir)})


# ---------------------------------------------------------------------------------------------
# What both sides keep: the initial head, each test sentence's entity counts


def head_fingerprint(model) -> str:
    """A short hash of the token head's weights (the part drawn at random: the encoder is pretrained)."""
    head = model.classifier
    digest = hashlib.sha256()
    for p in (head.weight, head.bias):
        digest.update(p.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def sentence_counts(gold: list[list[str]], predicted: list[list[str]]) -> list[list[int]]:
    """Per sentence [gold entities, predicted entities, exactly right] in seqeval's strict IOB2 reading (an
    entity is B-X then I-X words; a stray I- opens none): the counts whose sums give the micro P / R / F1."""
    from seqeval.scheme import IOB2, Entities

    gold_e = Entities([list(s) for s in gold], IOB2).entities
    pred_e = Entities([list(s) for s in predicted], IOB2).entities
    out = []
    for g, p in zip(gold_e, pred_e):
        gs, ps = {e.to_tuple()[1:] for e in g}, {e.to_tuple()[1:] for e in p}
        out.append([len(gs), len(ps), len(gs & ps)])
    return out


def f1_of(counts: list[list[int]]) -> float:
    """Micro entity F1 from per-sentence [gold, predicted, right]: 2 TP / (P + G)."""
    g, p, tp = (sum(c[i] for c in counts) for i in range(3))
    return 2 * tp / (g + p) if g + p else 0.0


@contextlib.contextmanager
def kept_tags(kept: list):
    """Keep the (gold, predicted) IOB2 tags of every sentence the job scores, so two sides can be paired
    sentence by sentence. `scores` is looked up in the module when the job tests."""
    from tunelab.tasks import token_classification

    original = token_classification.scores

    def scores(split, tagged):
        from tunelab.data.tagging import to_iob2

        # as `scores` reads predictions: a stray I- begins an entity
        kept[:] = [([*r["tags"]], to_iob2(t, "iob2")[0]) for r, t in zip(split.records, tagged.tags)]
        return original(split, tagged)

    token_classification.scores = scores
    try:
        yield
    finally:
        token_classification.scores = original


def ner_facts(job) -> dict:
    """What the job trained and was tested on: sentences, words, windows, real tokens, gold entities."""
    data = {}
    for name, split in job.data.items():
        data[f"{name}_sentences"] = len(split.records)
        data[f"{name}_words"] = sum(len(r["tokens"]) for r in split.records)
        data[f"{name}_windows"] = len(split.windows)
        data[f"{name}_tokens"] = sum(len(w.ids) for w in split.windows)
        data[f"{name}_labelled"] = sum(sum(x != -100 for x in w.labels) for w in split.windows)
    data["labels"] = len(job.labels)
    return data


def ner_flops(model, windows) -> float:
    """Model FLOPs of one epoch over the windows (record.training_flops: full fine-tuning, bidirectional; the
    token head (hidden x tags per token) is left out, as record.matmul_params leaves classifiers out)."""
    cfg = model.config
    return NER_JOB["epochs"] * record.training_flops(
        record.matmul_params(model), [(len(w.ids), 0) for w in windows], layers=cfg.num_hidden_layers,
        hidden=cfg.hidden_size, full=True, causal=False)


def ner_result(job, seconds: float, lrs: list[float], metrics: dict, kept: list, precision: str,
               head: str) -> dict:
    """One side's figures: speed over the bench-counted real tokens, the test metrics, the per-sentence
    entity counts (checked against the job's own F1)."""
    facts = ner_facts(job)
    counts = sentence_counts([g for g, _ in kept], [p for _, p in kept])
    if abs(f1_of(counts) - metrics["entity_f1"]) > 1e-9:
        raise SystemExit(f"per-sentence entity counts give F1 {f1_of(counts)!r}, the job's metric "
                         f"{metrics['entity_f1']!r}: the pairing would not describe the reported F1")
    tokens = facts["train_tokens"] * NER_JOB["epochs"]
    return {"tokens_per_s": tokens / seconds, "train_seconds": seconds, "train_tokens": tokens, "steps": len(lrs),
            "lrs": lrs, "precision": precision, "peak_rss_mb": peak_rss_mb(), "initial_head": head,
            "model_flops": ner_flops(job.model, job.data["train"].windows), "params": record.matmul_params(job.model),
            "data": facts, **{k: metrics[k] for k in ("entity_f1", "entity_precision", "entity_recall",
                                                       "token_accuracy", "n", "entities")},
            "per_type_f1": {kind: r["f1"] for kind, r in metrics["per_type"].items()}, "test_counts": counts}


def run_tunelab(precision: str) -> dict:
    """`tunelab.run.train` on the job; speed from eval.json, rates from metrics.jsonl."""
    from fair import tunelab_lrs
    from tunelab.run import train
    from tunelab.tasks.token_classification import TokenClassificationJob

    factory, kept_job = capture(TokenClassificationJob)
    heads: list[str] = []

    def fingerprinting(cfg, device, log):  # the head as prepared, before the first step
        job = factory(cfg, device, log)
        prepare = job.prepare
        job.prepare = lambda: (prepare(), heads.append(head_fingerprint(job.model)))[0]
        return job

    kept: list = []
    with kept_tags(kept):
        run_dir = train(ner_config(precision, OUT / f"ner-tunelab-{precision}"), overwrite=True,
                        show_progress=False, log=lambda m: None, job_factory=fingerprinting)
    ev = json.loads((run_dir / "eval.json").read_text())
    out = ner_result(kept_job["job"], ev["train_seconds"], tunelab_lrs(run_dir / "metrics.jsonl"), ev["test"], kept,
                     resolved_precision(precision), heads[0])
    out["loop_tokens_per_s"] = ev["train_tokens_per_s"]  # the loop's own count (attention-mask sums)
    return out


def run_trainer(precision: str) -> dict:
    """The Hugging Face baseline: `Trainer` + DataCollatorForTokenClassification trains tunelab's prepared job's
    model on its windows, with tunelab's optimizer, per-step rates and timing span; tested by tunelab's job."""
    import torch
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from fair import StepTimer, tunelab_optimizers, tunelab_steps
    from tunelab.run import seed_everything
    from tunelab.tasks.token_classification import TokenClassificationJob

    hf_logging.set_verbosity_error()
    j, cfg = NER_JOB, ner_config("fp32", OUT / "unused")
    seed_everything(cfg.train.seed)  # as tunelab's driver does before prepare: the same initial token head
    job = TokenClassificationJob(cfg, torch.device("cpu"), lambda m: None)
    job.prepare()
    head = head_fingerprint(job.model)
    items = [{"input_ids": w.ids, "attention_mask": [1] * len(w.ids), "labels": w.labels}
             for w in job.data["train"].windows]
    total, warmup = tunelab_steps(job.micro_batches_per_epoch(), j["epochs"], j["warmup_ratio"])
    timer = StepTimer()
    args = TrainingArguments(output_dir=str(OUT / "trainer-run"), num_train_epochs=j["epochs"],
                             bf16=precision == "bf16", per_device_train_batch_size=j["batch_size"],
                             max_grad_norm=j["max_grad_norm"], seed=j["seed"], save_strategy="no", eval_strategy="no",
                             logging_steps=10, report_to=[], disable_tqdm=True, use_cpu=True,
                             dataloader_num_workers=0)
    trainer = Trainer(model=job.model, args=args, train_dataset=items, callbacks=[timer],
                      data_collator=DataCollatorForTokenClassification(job.tokenizer),
                      optimizers=tunelab_optimizers(job.model, lr=j["lr"], weight_decay=j["weight_decay"],
                                                    total=total, warmup=warmup))
    trainer.train()
    kept: list = []
    with kept_tags(kept):
        metrics = job.test()
    return ner_result(job, timer.seconds, timer.lrs, metrics, kept, precision, head)


# ---------------------------------------------------------------------------------------------
# The section of results.md, from a stored measurement


def _row(res: dict[str, list[dict]], label: str, get, fmt: str) -> str:
    from results import cell

    return f"| {label} | " + " | ".join(cell([get(r) for r in rs], fmt) for rs in res.values()) + " |"


def ner_table(rec: dict, res: dict[str, list[dict]]) -> list[str]:
    """One column per side: median (min-max) over the repeats."""
    from results import peak_of

    def mfu(r: dict) -> float:
        return 100 * r["model_flops"] / r["train_seconds"] / (peak_of(rec, r["precision"]) * 1e9)

    rows = [("real tokens/s", lambda r: r["tokens_per_s"], ".0f"),
            ("seconds in optimizer steps", lambda r: r["train_seconds"], ".1f"),
            ("model GFLOP/s", lambda r: r["model_flops"] / r["train_seconds"] / 1e9, ".1f"),
            ("MFU (% of its precision's peak)", mfu, ".1f"),
            ("peak RSS (MB)", lambda r: r["peak_rss_mb"], ".0f"),
            ("load (1 min) before the run", lambda r: r["_run"]["load_before"][0], ".2f"),
            ("**test entity F1** (seqeval strict IOB2)", lambda r: r["entity_f1"], ".4f"),
            ("test entity precision", lambda r: r["entity_precision"], ".4f"),
            ("test entity recall", lambda r: r["entity_recall"], ".4f"),
            ("test token accuracy (words)", lambda r: r["token_accuracy"], ".4f")]
    lines = ["| | " + " | ".join(NAMES[s] for s in res) + " |", "|---" * (len(res) + 1) + "|"]
    return lines + [_row(res, label, get, fmt) for label, get, fmt in rows]


def ner_ratios(res: dict[str, list[dict]]) -> list[str]:
    """tunelab over the Trainer in tokens/s: ratio of medians and each round's ratio."""
    pairs = [("both fp32", "ner-tunelab-fp32", "ner-trainer-fp32"),
             ("both bf16", "ner-tunelab-bf16", "ner-trainer-bf16"),
             ("each tool's default on this CPU (tunelab bf16, Trainer fp32)", "ner-tunelab-bf16", "ner-trainer-fp32")]
    lines = []
    for label, a, b in pairs:
        if a in res and b in res:
            ta, tb = ([r["tokens_per_s"] for r in res[s]] for s in (a, b))
            per_round = [x / y for x, y in zip(ta, tb)]
            lines.append(f"- {label}: tunelab **{statistics.median(ta) / statistics.median(tb):.2f}x** tokens/s "
                         f"(per round {min(per_round):.2f}-{max(per_round):.2f}x)")
    return lines


def f1_difference(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """F1(a) - F1(b) over the same sentences and its standard error, sentences as the sampling unit.

    F1 = sum(2 tp_i) / sum(d_i) with d_i = predicted_i + gold_i is a ratio of sums; linearised, sentence i
    adds (2 tp_i - F1 d_i) / mean(d) to it. The difference's SE is that of the per-sentence differences of
    those terms: sqrt(sum(u_i^2) / (k (k - 1))).
    """
    k = len(a)
    fa, fb = f1_of(a), f1_of(b)
    if k < 2:
        return fa - fb, math.nan
    da, db = (sum(c[0] + c[1] for c in side) / k for side in (a, b))
    u = [(2 * x[2] - fa * (x[0] + x[1])) / da - (2 * y[2] - fb * (y[0] + y[1])) / db for x, y in zip(a, b)]
    return fa - fb, math.sqrt(sum(v * v for v in u) / (k * (k - 1)))


def ner_paired(res: dict[str, list[dict]]) -> list[str]:
    """Test entity F1 tunelab - Trainer in each precision (first runs), paired over the same sentences."""
    lines = []
    for prec in ("fp32", "bf16"):
        a, b = res.get(f"ner-tunelab-{prec}"), res.get(f"ner-trainer-{prec}")
        if not a or not b:
            continue
        ca, cb = a[0]["test_counts"], b[0]["test_counts"]
        d, se = f1_difference(ca, cb)
        verdict = ("the same entities in every sentence" if ca == cb else
                   "larger than the sampling of sentences explains (this seed)" if abs(d) > 2 * se else
                   "**not resolved** (|difference| < 2 SE): no claim either way")
        lines.append(f"- test entity F1, {prec}: tunelab - Trainer = {d:+.4f} ± {se:.4f} (SE, paired over the same "
                     f"{len(ca)} sentences): {verdict}")
    return lines


def precisions_agree(res: dict[str, list[dict]]) -> list[str]:
    """For each tool measured in both precisions: whether its bf16 run found the same entities per test sentence
    as its fp32 run (first runs; counts of gold, predicted and right entities per sentence)."""
    lines = []
    for tool, name in (("tunelab", "tunelab"), ("trainer", "the Trainer")):
        a, b = res.get(f"ner-{tool}-fp32"), res.get(f"ner-{tool}-bf16")
        if a and b:
            differ = sum(x != y for x, y in zip(a[0]["test_counts"], b[0]["test_counts"]))
            lines.append(f"- {name}: bf16 and fp32 training gave " + (
                "the same entity counts in every test sentence" if not differ else
                f"different entity counts in {differ} of {len(a[0]['test_counts'])} test sentences"))
    return lines


def same_start(res: dict[str, list[dict]]) -> str:
    """Whether every run began from the same token head (fingerprints of its initial weights)."""
    heads = {r["initial_head"] for rs in res.values() for r in rs}
    return ("every run started from the same initial token head (fingerprint of its weights "
            f"{next(iter(heads))})" if len(heads) == 1 else
            f"**the runs started from {len(heads)} different token heads** (fingerprints differ)")


def ner_markdown(rec: dict) -> list[str]:
    """The `ner` part's section of results.md."""
    from results import measured, millions, results_of

    j, res = rec["job"], results_of(rec)
    first = next(iter(res.values()))[0]
    d = first["data"]
    varied = [NAMES[s] for s, rs in res.items() if len({round(r["entity_f1"], 6) for r in rs}) > 1]
    return [
        "## Named-entity recognition: MiniLM-L6 token head, tunelab against Hugging Face Trainer", MARKER, "",
        "One job, two training loops: `builtin:minilm-l6` with a token head (a tag score per sub-token), full "
        "fine-tuning on `builtin:ner-synthetic` (template sentences generated at run time, tagged PER / LOC / ORG "
        "/ MISC / DATE in IOB2). tunelab trains it as task token_classification; the Trainer side gets tunelab's "
        "prepared job: the same model object with the same initial token head, the same windows (token ids; the "
        "label of each word on its first sub-token, -100 on the other sub-tokens and [CLS] / [SEP]), tunelab's "
        "AdamW and every step's learning rate (checked identical), batches of the same size drawn plainly at "
        "random on both sides (tunelab `group_by_length: never`, the Trainer's default sampler; "
        "DataCollatorForTokenClassification pads labels with -100), and the same timing span (seconds inside "
        "optimizer steps: forward, backward, clipping, update). Both losses are the mean cross entropy over a "
        "batch's labelled positions. Both sides are tested by tunelab's own function: windows merged by word, "
        "the best tag per word, entity precision / recall / F1 by seqeval in strict IOB2 mode (an entity counts "
        "only with its exact type and words). No validation split: the last weights are tested.", "",
        f"Data: {d['train_sentences']:,} training sentences ({d['train_words']:,} words, data.limit {j['limit']}) "
        f"in {d['train_windows']:,} windows of at most {j['max_length']} tokens, {d['train_tokens']:,} real tokens "
        f"of which {d['train_labelled']:,} carry a label; {d['labels']} IOB2 tags; {j['epochs']} epoch = "
        f"{first['steps']} steps of {j['batch_size']}; lr {j['lr']} linear with warmup {j['warmup_ratio']}, "
        f"weight decay {j['weight_decay']}, clip {j['max_grad_norm']}, seed {j['seed']}. Test: "
        f"{d['test_sentences']} sentences (data.test_fraction {j['test_fraction']}) with {first['entities']} gold "
        "entities. Tokens/s count the real tokens of the training windows (the same number for both sides).", "",
        *measured(rec),
        *ner_table(rec, res), "",
        *ner_ratios(res),
        *ner_paired(res),
        *precisions_agree(res),
        "- test entity F1 " + (f"varied across repeats for {', '.join(varied)} (ranges in the table)" if varied
                               else "was identical in every repeat of each side (same seed, same threads)"),
        f"- {same_start(res)}", "",
        "The SE of an F1 difference covers which sentences were scored, not the randomness of training: the "
        "sides start from the same weights and windows, but their batch order and dropout masks differ, so a "
        "difference is one seed's. tunelab draws dropout masks from 16-bit random words (`train.fast_dropout`), "
        "part of its speed. Model FLOPs: 6 N n + 12 L d n^2 per window of n tokens (N: the encoder's linear "
        f"weights, {millions(res, 'body')}; the token head is left out).", ""]
