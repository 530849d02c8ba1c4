"""Question-answering parts of `make bench` (issue 13): `qa`, extractive-QA training speed in tunelab and in
Hugging Face `Trainer` on one job, and `retrieval`, retriever quality before / after tunelab's fine-tuning
beside BM25, and the vector index's build and query speed.

`qa` sides (each run in its own child process, interleaved over the repeats like every part):
- `qa-tunelab-fp32`, `qa-tunelab-bf16`: `tunelab.run.train` on task extractive_qa: builtin:minilm-l6 with a
  span head, full fine-tuning on builtin:bbc-qa (cloze questions on the BBC articles, a quarter unanswerable);
- `qa-trainer-fp32`, `qa-trainer-bf16`: `Trainer` on tunelab's prepared job: the same model object (same
  initial weights: the span head is drawn after the same seed), the same training windows (token ids,
  segment ids, start / end labels), tunelab's AdamW and per-step learning rates and its timing span
  (bench/fair.py); tested by tunelab's own function.
Both sides batch plainly at random (`group_by_length: never`; the Trainer's default sampler), so the batches
differ in order but not in kind. No validation split: the no-answer threshold is fixed at 0 (the SQuAD v2
rule: "no answer" when the [CLS] score beats the best span), so one epoch's last weights are tested and
both sides answer by the same rule. bf16 sides only where the CPU multiplies bf16 natively (run.sides_of).

`retrieval` sides:
- `retrieval-finetune`: tunelab's retrieval task on builtin:bbc-headlines (headline -> article body), the
  example config's budget; eval.json holds the test split's recall@1/5/10 and MRR@10 of the fine-tuned
  encoder (`test`), the untuned MiniLM (`base`) and BM25 (`bm25`);
- `retrieval-index`: `build_index` (what `tunelab index build` runs) over a fixed sample of the BBC articles
  with the untuned MiniLM, once exact and once with the HNSW graph; then the headlines of every article as
  queries: their embedding, exact and HNSW search, one query per call and all in one call, and the HNSW
  search's recall@10 against the exact top 10.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import record
from run import MARKER, capture, peak_rss_mb, resolved_precision  # bench/ is on sys.path when run.py runs

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "answering"
SMOKE = os.environ.get("BENCH_SMOKE") == "1"

# Extractive QA: 100 training questions cut into windows of 384 tokens sharing 128 (about 2.3 per question,
# about 230 windows) x 1 epoch = about 15 steps of 16; test: 3% of the contexts (about 130 questions). On an
# idle 2-core machine fp32 trains about 1,500 window tokens/s, so 2 rounds of the 4 sides (setup, training
# and the test pass each) were estimated at about 11 minutes.
QA_JOB = dict(limit=100, max_length=384, doc_stride=128, epochs=1, batch_size=16, lr=2.0e-4, weight_decay=0.01,
              warmup_ratio=0.1, max_grad_norm=1.0, seed=42, test_fraction=0.03, no_answer_threshold=0.0)
# Retriever fine-tuning: examples/bbc-retrieval.yaml's budget (800 pairs, 1 epoch = 25 steps of 32, max_length
# 128, lr 3e-5, temperature 0.05) and its splits (validation and test 10% each, seed 42).
RETRIEVAL_JOB = dict(limit=800, max_length=128, epochs=1, batch_size=32, lr=3.0e-5, temperature=0.05,
                     weight_decay=0.01, warmup_ratio=0.1, max_grad_norm=1.0, seed=42, val_fraction=0.1,
                     test_fraction=0.1, precision="fp32")
# Index: every 10th article (sorted by file) chunked at 128 tokens with 32 overlapping (the build's defaults),
# embedded by the untuned MiniLM; all 2,225 headlines as queries, k = 10; `Index.query` (embedding each text
# alone, then searching) timed on the first 300 of them.
INDEX_JOB = dict(every=10, chunk_size=128, overlap=32, batch_size=32, k=10, one_by_one=300)
if SMOKE:
    QA_JOB.update(limit=4, max_length=128, doc_stride=32, batch_size=4, test_fraction=0.002)
    RETRIEVAL_JOB.update(limit=16, max_length=32, batch_size=8, val_fraction=0.01, test_fraction=0.01)
    INDEX_JOB.update(every=200, chunk_size=32, overlap=8, queries=64, one_by_one=16)

QA_SIDES = ("qa-tunelab-fp32", "qa-tunelab-bf16", "qa-trainer-fp32", "qa-trainer-bf16")
RETRIEVAL_SIDES = ("retrieval-finetune", "retrieval-index")
QA_NAMES = {"qa-tunelab-fp32": "tunelab fp32", "qa-tunelab-bf16": "tunelab bf16",
            "qa-trainer-fp32": "HF Trainer fp32", "qa-trainer-bf16": "HF Trainer bf16"}


def job(part: str) -> dict:
    """What a stored measurement records of a part's job."""
    if part == "qa":
        return dict(QA_JOB)
    return {"finetune": dict(RETRIEVAL_JOB), "index": dict(INDEX_JOB)}


def run_side(side: str) -> dict:
    """One side in this process (the child bench/run.py starts for it)."""
    if side.startswith("qa-"):
        tool, precision = side.split("-")[1:]
        return run_qa_tunelab(precision) if tool == "tunelab" else run_qa_trainer(precision)
    return run_finetune() if side == "retrieval-finetune" else run_index()


# ---------------------------------------------------------------------------------------------
# qa: extractive QA, tunelab against Trainer


def qa_config(precision: str, out_dir: Path):
    """The tunelab run config of the extractive QA job (the Trainer side prepares its job from it too)."""
    from tunelab.config import config_from_dict

    j = QA_JOB
    return config_from_dict({
        "task": "extractive_qa",
        "model": {"name": "builtin:minilm-l6", "max_length": j["max_length"]},
        "data": {"train": "builtin:bbc-qa", "limit": j["limit"], "val_fraction": 0.0,
                 "test_fraction": j["test_fraction"], "doc_stride": j["doc_stride"]},
        "method": {"name": "full"},
        "qa": {"no_answer_threshold": j["no_answer_threshold"]},
        "train": {"epochs": j["epochs"], "batch_size": j["batch_size"], "lr": j["lr"],
                  "weight_decay": j["weight_decay"], "warmup_ratio": j["warmup_ratio"],
                  "max_grad_norm": j["max_grad_norm"], "seed": j["seed"], "scheduler": "linear",
                  "precision": precision, "log_every": 1, "group_by_length": "never",
                  "early_stopping": {"patience": None}},
        "output_dir": str(out_dir)})


@contextlib.contextmanager
def kept_predictions(kept: list):
    """Keep each test question's (predicted answer, gold answers, best span) as tunelab's test scores them, so
    two sides can be paired question by question; the best span is the answer before the no-answer rule.
    `scores` is looked up in the module when the job tests."""
    from tunelab.tasks import extractive_qa

    original = extractive_qa.scores

    def scores(answers, records, threshold, loss):
        metrics, predictions = original(answers, records, threshold, loss)
        kept[:] = [(p["answer"], r["answers"], a.text) for p, r, a in zip(predictions, records, answers)]
        return metrics, predictions

    extractive_qa.scores = scores
    try:
        yield
    finally:
        extractive_qa.scores = original


def qa_facts(job) -> dict:
    """What the job trained and was tested on: questions, windows, real tokens."""
    data = {}
    for name, split in job.data.items():
        data[f"{name}_questions"] = len(split.records)
        data[f"{name}_unanswerable"] = sum(not r["answers"] for r in split.records)
        data[f"{name}_windows"] = len(split.windows)
        data[f"{name}_tokens"] = sum(len(w.ids) for w in split.windows)
    return data


def qa_flops(model, windows) -> float:
    """Model FLOPs of one epoch over the windows (record.training_flops: full fine-tuning, bidirectional; the
    2-wide span head is counted with the body's linear layers)."""
    cfg = model.config
    return QA_JOB["epochs"] * record.training_flops(
        record.matmul_params(model), [(len(w.ids), 0) for w in windows], layers=cfg.num_hidden_layers,
        hidden=cfg.hidden_size, full=True, causal=False)


def qa_result(job, seconds: float, lrs: list[float], metrics: dict, kept: list, precision: str) -> dict:
    """One side's figures: speed over the bench-counted real tokens, test EM/F1 and per question, and the
    F1 of the best span of each question with an answer (whether it learned to find spans, whatever the
    no-answer rule decides)."""
    from tunelab.evaluate.qa_metrics import exact_match, f1_score

    facts = qa_facts(job)
    span_f1 = [f1_score(span, golds) for _, golds, span in kept if golds]
    tokens = facts["train_tokens"] * QA_JOB["epochs"]
    return {"tokens_per_s": tokens / seconds, "train_seconds": seconds, "train_tokens": tokens, "steps": len(lrs),
            "lrs": lrs, "precision": precision, "peak_rss_mb": peak_rss_mb(),
            "model_flops": qa_flops(job.model, job.data["train"].windows), "params": record.matmul_params(job.model),
            "data": facts, **{k: metrics[k] for k in ("exact_match", "f1", "has_answer_exact_match", "has_answer_f1",
                                                       "no_answer_exact_match", "no_answer_f1", "n")},
            "test_em": [exact_match(p, g) for p, g, _ in kept], "test_f1": [f1_score(p, g) for p, g, _ in kept],
            "test_span_f1": span_f1, "has_answer_span_f1": sum(span_f1) / max(1, len(span_f1))}


def run_qa_tunelab(precision: str) -> dict:
    """`tunelab.run.train` on the QA job; speed from eval.json, rates from metrics.jsonl."""
    from fair import tunelab_lrs
    from tunelab.run import train
    from tunelab.tasks.extractive_qa import ExtractiveQAJob

    factory, kept_job = capture(ExtractiveQAJob)
    kept: list = []
    with kept_predictions(kept):
        run_dir = train(qa_config(precision, OUT / f"qa-tunelab-{precision}"), overwrite=True, show_progress=False,
                        log=lambda m: None, job_factory=factory)
    ev = json.loads((run_dir / "eval.json").read_text())
    out = qa_result(kept_job["job"], ev["train_seconds"], tunelab_lrs(run_dir / "metrics.jsonl"), ev["test"], kept,
                    resolved_precision(precision))
    out["loop_tokens_per_s"] = ev["train_tokens_per_s"]  # the loop's own count (attention-mask sums)
    return out


def run_qa_trainer(precision: str) -> dict:
    """The Hugging Face baseline: `Trainer` + DataCollatorWithPadding trains tunelab's prepared job's model on
    its windows, with tunelab's optimizer, per-step rates and timing span; tested by tunelab's job."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from fair import StepTimer, tunelab_optimizers, tunelab_steps
    from tunelab.run import seed_everything
    from tunelab.tasks.extractive_qa import ExtractiveQAJob

    hf_logging.set_verbosity_error()
    j, cfg = QA_JOB, qa_config("fp32", OUT / "unused")
    seed_everything(cfg.train.seed)  # as tunelab's driver does before prepare: the same initial span head
    job = ExtractiveQAJob(cfg, torch.device("cpu"), lambda m: None)
    job.prepare()
    items = [{"input_ids": w.ids, "attention_mask": [1] * len(w.ids), "start_positions": w.start,
              "end_positions": w.end, **({"token_type_ids": w.types} if w.types else {})}
             for w in job.data["train"].windows]
    total, warmup = tunelab_steps(job.micro_batches_per_epoch(), j["epochs"], j["warmup_ratio"])
    timer = StepTimer()
    args = TrainingArguments(output_dir=str(OUT / "trainer-run"), num_train_epochs=j["epochs"],
                             bf16=precision == "bf16", per_device_train_batch_size=j["batch_size"],
                             max_grad_norm=j["max_grad_norm"], seed=j["seed"], save_strategy="no", eval_strategy="no",
                             logging_steps=10, report_to=[], disable_tqdm=True, use_cpu=True,
                             dataloader_num_workers=0)
    trainer = Trainer(model=job.model, args=args, train_dataset=items, callbacks=[timer],
                      data_collator=DataCollatorWithPadding(job.tokenizer),
                      optimizers=tunelab_optimizers(job.model, lr=j["lr"], weight_decay=j["weight_decay"],
                                                    total=total, warmup=warmup))
    trainer.train()
    kept: list = []
    with kept_predictions(kept):
        metrics = job.test()
    return qa_result(job, timer.seconds, timer.lrs, metrics, kept, precision)


# ---------------------------------------------------------------------------------------------
# retrieval: quality before / after fine-tuning, and the index


def finetune_config(out_dir: Path):
    """The retrieval run config (examples/bbc-retrieval.yaml's job, all threads, every step's rate logged)."""
    from tunelab.config import config_from_dict

    j = RETRIEVAL_JOB
    return config_from_dict({
        "task": "retrieval",
        "model": {"name": "builtin:minilm-l6", "max_length": j["max_length"]},
        "data": {"train": "builtin:bbc-headlines", "limit": j["limit"], "val_fraction": j["val_fraction"],
                 "test_fraction": j["test_fraction"]},
        "retrieval": {"temperature": j["temperature"], "pooling": "mean"},
        "method": {"name": "full"},
        "train": {"epochs": j["epochs"], "batch_size": j["batch_size"], "lr": j["lr"],
                  "weight_decay": j["weight_decay"], "warmup_ratio": j["warmup_ratio"],
                  "max_grad_norm": j["max_grad_norm"], "seed": j["seed"], "scheduler": "linear",
                  "precision": j["precision"], "log_every": 1},
        "output_dir": str(out_dir)})


METRIC_KEYS = ("recall@1", "recall@5", "recall@10", "mrr@10")


def run_finetune() -> dict:
    """The retrieval task's run; the three rankers' test metrics from its eval.json."""
    from fair import tunelab_lrs
    from tunelab.run import train
    from tunelab.tasks.retrieval import RetrievalJob

    factory, kept = capture(RetrievalJob)
    t0 = time.perf_counter()
    run_dir = train(finetune_config(OUT / "retrieval-finetune"), overwrite=True, show_progress=False,
                    log=lambda m: None, job_factory=factory)
    wall = time.perf_counter() - t0
    ev, data = json.loads((run_dir / "eval.json").read_text()), kept["job"].data
    rankers = {name: {k: ev[key][k] for k in (*METRIC_KEYS, "n", "passages")}
               for name, key in (("bm25", "bm25"), ("base", "base"), ("tuned", "test"))}
    return {"job_name": "finetune", "tokens_per_s": ev["train_tokens_per_s"], "train_seconds": ev["train_seconds"],
            "train_tokens": ev["train_tokens"], "steps": ev["steps"], "lrs": tunelab_lrs(run_dir / "metrics.jsonl"),
            "best_step": ev["best_step"], "wall_seconds": wall, "peak_rss_mb": peak_rss_mb(),
            "precision": resolved_precision(RETRIEVAL_JOB["precision"]), "rankers": rankers,
            "data": {f"{name}_pairs": len(split) for name, split in data.items()}}


def sample_corpus(every: int, path: Path) -> tuple[Path, list[str]]:
    """Every `every`-th BBC article (sorted by file) written as JSONL records {id, text} for `build_index`
    (under bench/out, never committed), and the headlines (first lines) of all articles, as queries."""
    from tunelab.data.builtin import bbc_news

    articles = bbc_news()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for a in articles[::every]:
            f.write(json.dumps({"id": a["_file"], "text": a["text"]}, ensure_ascii=False) + "\n")
    return path, [a["text"].partition("\n")[0].strip() for a in articles]


def per_second(count: int, fn) -> tuple[float, float]:
    """(count / seconds, seconds) of one call of fn()."""
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return count / seconds, seconds


def run_index() -> dict:
    """Index build (exact, then with HNSW) and query speed; HNSW recall@10 against exact search."""
    from tunelab.retrieval.embed import load_encoder
    from tunelab.retrieval.index import build_index

    j = INDEX_JOB
    corpus, queries = sample_corpus(j["every"], OUT / "index-corpus.jsonl")
    queries = queries[: j.get("queries")]
    encoder = load_encoder()  # builtin:minilm-l6, loaded once: the builds time chunking + embedding + writing
    encoder.embed(queries[:64], desc=None)  # warm-up: the first build should not pay one-time costs alone
    built = {}
    for kind in ("exact", "hnsw"):
        index, stats = build_index(corpus, OUT / f"index-{kind}", encoder, chunk_size=j["chunk_size"],
                                   overlap=j["overlap"], approximate=kind if kind == "hnsw" else None,
                                   batch_size=j["batch_size"], overwrite=True, desc=None)
        built[kind] = (index, stats)
    (exact, st), (hnsw, sth) = built["exact"], built["hnsw"]
    tokens = sum(len(ids) for ids in encoder.tokenizer([p["text"] for p in exact.passages])["input_ids"])
    qps_embed, _ = per_second(len(queries), lambda: encoder.embed(queries, desc=None))
    speeds = search_speeds(exact, hnsw, encoder.embed(queries, desc=None), j["k"])
    texts = queries[: j["one_by_one"]]
    one_by_one, _ = per_second(len(texts), lambda: [exact.query([q], j["k"]) for q in texts])
    return {"job_name": "index", "tokens_per_s": tokens / st.seconds, "train_tokens": 0, "lrs": [],
            "documents": st.documents, "passages": st.passages, "passage_tokens": tokens,
            "build_seconds": {"exact": st.seconds, "hnsw": sth.seconds},
            "build_passages_per_s": {"exact": st.passages / st.seconds, "hnsw": sth.passages / sth.seconds},
            "queries": len(queries), "queries_one_by_one": len(texts), "embed_qps": qps_embed, **speeds,
            "query_qps": one_by_one, "peak_rss_mb": peak_rss_mb()}


def search_speeds(exact, hnsw, vectors, k: int) -> dict:
    """Queries/s of both indexes' `search` on the (Q, H) query vectors, all in one call and one per call, and
    how much of the exact top k the HNSW search finds (mean share, and the share of queries it finds whole)."""
    found, out = {}, {}
    for kind, index in (("exact", exact), ("hnsw", hnsw)):
        index.search(vectors[:1], k)  # loads faiss / the graph once, outside the timing
        out[f"{kind}_batch_qps"], _ = per_second(len(vectors), lambda: found.update({kind: index.search(vectors, k)}))
        out[f"{kind}_single_qps"], _ = per_second(len(vectors), lambda: [index.search(v[None], k) for v in vectors])
    overlap = [len({h.passage_id for h in a} & {h.passage_id for h in b}) / len(a)  # len(a) = k, or all passages
               for a, b in zip(found["exact"], found["hnsw"])]
    return {**out, "hnsw_recall_at_10": statistics.mean(overlap),
            "hnsw_exact_top10_share": sum(o == 1.0 for o in overlap) / len(overlap)}


# ---------------------------------------------------------------------------------------------
# The sections of results.md, from a stored measurement


def _sides(res: dict[str, list[dict]], get, fmt: str) -> str:
    from results import cell

    return " | ".join(cell([get(r) for r in rs], fmt) for rs in res.values())


def qa_table(rec: dict, res: dict[str, list[dict]]) -> list[str]:
    """One column per side: speed rows are median (min-max) over the repeats, quality rows likewise."""
    from results import peak_of

    def mfu(r: dict) -> float:
        return 100 * r["model_flops"] / r["train_seconds"] / (peak_of(rec, r["precision"]) * 1e9)

    rows = [("real tokens/s", lambda r: r["tokens_per_s"], ".0f"),
            ("seconds in optimizer steps", lambda r: r["train_seconds"], ".1f"),
            ("model GFLOP/s", lambda r: r["model_flops"] / r["train_seconds"] / 1e9, ".1f"),
            ("MFU (% of its precision's peak)", mfu, ".1f"),
            ("peak RSS (MB)", lambda r: r["peak_rss_mb"], ".0f"),
            ("load (1 min) before the run", lambda r: r["_run"]["load_before"][0], ".2f"),
            ("**test exact match**", lambda r: r["exact_match"], ".4f"), ("**test F1**", lambda r: r["f1"], ".4f"),
            ("test F1, questions with an answer", lambda r: r["has_answer_f1"], ".4f"),
            ("test, questions without an answer: EM (= F1)", lambda r: r["no_answer_exact_match"] or 0.0, ".4f"),
            ("test, questions with an answer: F1 of the best span (no-answer rule set aside)",
             lambda r: r["has_answer_span_f1"], ".4f")]
    if any("has_answer_span_f1" not in r for rs in res.values() for r in rs):  # stored before it was measured
        rows.pop()
    lines = ["| | " + " | ".join(QA_NAMES[s] for s in res) + " |", "|---" * (len(res) + 1) + "|"]
    return lines + [f"| {label} | {_sides(res, get, fmt)} |" for label, get, fmt in rows]


def qa_ratios(res: dict[str, list[dict]]) -> list[str]:
    """tunelab over the Trainer in tokens/s: ratio of medians and each round's ratio."""
    pairs = [("both fp32", "qa-tunelab-fp32", "qa-trainer-fp32"), ("both bf16", "qa-tunelab-bf16", "qa-trainer-bf16"),
             ("each tool's default on this CPU (tunelab bf16, Trainer fp32)", "qa-tunelab-bf16", "qa-trainer-fp32")]
    lines = []
    for label, a, b in pairs:
        if a in res and b in res:
            ta, tb = ([r["tokens_per_s"] for r in res[s]] for s in (a, b))
            per_round = [x / y for x, y in zip(ta, tb)]
            lines.append(f"- {label}: tunelab **{statistics.median(ta) / statistics.median(tb):.2f}x** tokens/s "
                         f"(per round {min(per_round):.2f}-{max(per_round):.2f}x)")
    return lines


def qa_paired(res: dict[str, list[dict]]) -> list[str]:
    """Per-question F1 differences tunelab - Trainer in each precision (first runs), with their paired SE: of
    the answers, and of the best spans of the questions with an answer."""
    import math

    lines = []
    for (key, what, questions), prec in ((k, p) for k in (("test_f1", "test F1", "questions"),
                                                           ("test_span_f1", "best-span F1", "questions with an answer"))
                                         for p in ("fp32", "bf16")):
        a, b = res.get(f"qa-tunelab-{prec}"), res.get(f"qa-trainer-{prec}")
        if not a or not b or key not in a[0]:
            continue
        diffs = [x - y for x, y in zip(a[0][key], b[0][key])]
        d = statistics.mean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
        verdict = ("the same on every question" if not any(diffs) else
                   "larger than the sampling of questions explains (this seed)" if abs(d) > 2 * se else
                   "**not resolved** (|difference| < 2 SE): no claim either way")
        lines.append(f"- {what}, {prec}: tunelab - Trainer = {d:+.4f} ± {se:.4f} (SE, paired over the same "
                     f"{len(diffs)} {questions}): {verdict}")
    return lines


def qa_markdown(rec: dict) -> list[str]:
    """The `qa` part's section of results.md."""
    from results import measured, millions, results_of

    j, res = rec["job"], results_of(rec)
    first = next(iter(res.values()))[0]
    d = first["data"]
    varied = [QA_NAMES[s] for s, rs in res.items() if len({round(r["f1"], 6) for r in rs}) > 1]
    return [
        "## Extractive QA: MiniLM-L6 span head, tunelab against Hugging Face Trainer", MARKER, "",
        "One job, two training loops: `builtin:minilm-l6` with a span head (start / end logit per token), full "
        f"fine-tuning on `builtin:bbc-qa` (cloze questions built at run time from the BBC News articles, a quarter "
        "of them unanswerable: paired with another article). tunelab trains it as task extractive_qa; the "
        "Trainer side gets tunelab's prepared job: the same model object with the same initial span head, the same "
        "windows (token ids, segment ids, start / end labels), tunelab's AdamW and every step's learning rate "
        "(checked identical), batches of the same size drawn plainly at random on both sides (tunelab "
        "`group_by_length: never`, the Trainer's default sampler; DataCollatorWithPadding), and the same timing "
        "span (seconds inside optimizer steps: forward, backward, clipping, update). The Trainer computes the "
        "model's own span loss (mean of the start and end cross-entropies); tunelab's masks padded positions "
        "out of the softmax. Both are tested by tunelab's own function (windows -> best span per question, "
        f"EM / F1 with the SQuAD normalisation) at the fixed no-answer threshold {j['no_answer_threshold']} "
        "(no validation split: the last weights are tested).", "",
        f"Data: {d['train_questions']} training questions ({d['train_unanswerable']} unanswerable) in "
        f"{d['train_windows']} windows of at most {j['max_length']} tokens sharing {j['doc_stride']} "
        f"(data.doc_stride), {d['train_tokens']:,} real tokens, {j['epochs']} epoch = {first['steps']} steps of "
        f"{j['batch_size']}; lr {j['lr']} linear with warmup {j['warmup_ratio']}, weight decay "
        f"{j['weight_decay']}, clip {j['max_grad_norm']}, seed {j['seed']}. Test: {d['test_questions']} "
        f"questions ({d['test_unanswerable']} unanswerable; the articles of data.test_fraction {j['test_fraction']}, "
        f"split by context) in {d['test_windows']} windows. Tokens/s count the real tokens of the training windows "
        "(the bench counts them from the windows, the same number for both sides).", "",
        *measured(rec),
        *qa_table(rec, res), "",
        *qa_ratios(res),
        *qa_paired(res),
        "- test F1 " + (f"varied across repeats for {', '.join(varied)} (ranges in the table)" if varied else
                        "was identical in every repeat of each side (same seed, same threads)"), "",
        "A short job: its EM / F1 compare the two loops on the same budget; they do not say how good extractive "
        "QA on this data can get (examples/bbc-qa.yaml trains longer). Most training windows hold no answer "
        "(labelled [CLS]), so after a few steps a model may answer \"no answer\" to every question at threshold "
        "0 (EM is then the share of unanswerable questions); the best-span row shows whether it learned to "
        "locate answers all the same. The sides start from the same weights and "
        "windows; their batch order and dropout masks differ, so an F1 difference is one seed's. Model FLOPs: "
        "6 N n + 12 L d n^2 per window "
        f"of n tokens (N: the encoder's linear weights, {millions(res, 'body')}).", ""]


def retrieval_markdown(rec: dict) -> list[str]:
    """The `retrieval` part's section of results.md."""
    from results import measured, results_of

    res = results_of(rec)
    j, ij = rec["job"]["finetune"], rec["job"]["index"]
    lines = ["## Retrieval: BBC headline -> article, before and after fine-tuning; the vector index", MARKER, "",
             *measured(rec, mfu=False)]
    if res.get("retrieval-finetune"):
        lines += finetune_lines(res["retrieval-finetune"], j)
    if res.get("retrieval-index"):
        lines += index_lines(res["retrieval-index"], ij)
    return lines


def finetune_lines(runs: list[dict], j: dict) -> list[str]:
    from results import cell

    first = runs[0]
    d, rankers = first["data"], first["rankers"]
    names = (("bm25", "BM25 (rank_bm25 Okapi, whole articles)"), ("base", "MiniLM-L6, untuned"),
             ("tuned", "MiniLM-L6 fine-tuned by tunelab"))
    same = all(r["rankers"] == rankers for r in runs)
    t = rankers["tuned"]
    lines = [f"Quality: tunelab's retrieval task on `builtin:bbc-headlines` (query: an article's headline, "
             f"positive: its body), the budget of examples/bbc-retrieval.yaml: {d['train_pairs']} training pairs "
             f"(data.limit {j['limit']}), {j['epochs']} epoch = {first['steps']} steps of {j['batch_size']} with "
             f"in-batch negatives, temperature {j['temperature']}, lr {j['lr']} linear with warmup "
             f"{j['warmup_ratio']}, max_length {j['max_length']} (queries and passages), {first['precision']}, "
             f"seed {j['seed']}; mean pooling. Test split ({j['test_fraction']:.0%} of the articles, seed "
             f"{j['seed']}): each of its {t['n']} headlines ranked against all {t['passages']} test articles by "
             "exact search, from the run's eval.json (`bm25`, `base`, `test`).", "",
             "| ranker | recall@1 | recall@5 | recall@10 | MRR@10 |", "|---|---|---|---|---|"]
    lines += [f"| {label} | " + " | ".join(f"{rankers[name][k]:.4f}" for k in METRIC_KEYS) + " |"
              for name, label in names]
    lines += ["", f"- training: {cell([r['tokens_per_s'] for r in runs], '.0f')} real tokens/s, "
              f"{cell([r['train_seconds'] for r in runs], '.1f')} s in optimizer steps, "
              f"{cell([r['wall_seconds'] for r in runs], '.0f')} s for the whole run (both test rankings, "
              f"validation, saving); peak RSS {cell([r['peak_rss_mb'] for r in runs], '.0f')} MB",
              f"- the metrics were {'identical in every repeat' if same else 'different between repeats (first shown)'}"
              f" ({len(runs)} runs)", ""]
    return lines


def index_lines(runs: list[dict], j: dict) -> list[str]:
    from results import cell

    first = runs[0]

    def row(label: str, get, fmt: str) -> str:
        return f"| {label} | {cell([get(r) for r in runs], fmt)} |"

    return [f"Index: `build_index` (what `tunelab index build` runs) over every {j['every']}th BBC article "
            f"({first['documents']} documents, sorted by file) with the untuned MiniLM: {first['passages']:,} "
            f"passages of at most {j['chunk_size']} tokens overlapping by {j['overlap']} "
            f"({first['passage_tokens']:,} tokens), embedded in batches of {j['batch_size']} in fp32; the build's "
            "time counts chunking, embedding and writing the folder (the model is loaded and warmed up before). "
            f"Queries: {first['queries']:,} BBC headlines (of all articles, not only the indexed ones), k = {j['k']}. "
            "Search times take the query vectors as given; `Index.query` embeds each text first, as `tunelab index "
            "query` does.", "",
            "| | median (range) |", "|---|---|",
            row("build, exact: passages/s", lambda r: r["build_passages_per_s"]["exact"], ".1f"),
            row("build, exact: passage tokens/s", lambda r: r["tokens_per_s"], ".0f"),
            row("build with the HNSW graph (--approximate hnsw): passages/s",
                lambda r: r["build_passages_per_s"]["hnsw"], ".1f"),
            row("query embedding, all queries in batches: queries/s", lambda r: r["embed_qps"], ".0f"),
            row("exact search (faiss flat inner product), one query per call: queries/s",
                lambda r: r["exact_single_qps"], ".0f"),
            row("exact search, all queries in one call: queries/s", lambda r: r["exact_batch_qps"], ".0f"),
            row("HNSW search, one query per call: queries/s", lambda r: r["hnsw_single_qps"], ".0f"),
            row("HNSW search, all queries in one call: queries/s", lambda r: r["hnsw_batch_qps"], ".0f"),
            row(f"`Index.query` (embed + exact search), one text per call ({first['queries_one_by_one']} texts): "
                "queries/s", lambda r: r["query_qps"], ".1f"),
            row("**HNSW recall@10 against exact search**", lambda r: r["hnsw_recall_at_10"], ".4f"),
            row("queries whose HNSW top 10 equals the exact top 10", lambda r: r["hnsw_exact_top10_share"], ".4f"),
            row("peak RSS (MB)", lambda r: r["peak_rss_mb"], ".0f"), "", search_note(runs), ""]


def search_note(runs: list[dict]) -> str:
    """What the figures say about exact against approximate search at this index size (from the medians)."""
    med = {k: statistics.median(r[k] for r in runs) for k in ("embed_qps", "exact_single_qps", "hnsw_single_qps")}
    n = runs[0]["passages"]
    embed = (f"embedding a query ({med['embed_qps']:.0f}/s batched) costs more than searching exactly "
             f"({med['exact_single_qps']:.0f}/s one by one)" if med["embed_qps"] < med["exact_single_qps"] else
             f"searching exactly ({med['exact_single_qps']:.0f}/s one by one) costs more than embedding a query "
             f"({med['embed_qps']:.0f}/s batched)")
    faster = med["hnsw_single_qps"] / med["exact_single_qps"]
    return (f"At {n:,} vectors {embed}; HNSW search runs at {faster:.2f}x the exact search's queries/s. A flat "
            "scan's cost grows with the number of passages and the graph's roughly with its logarithm, so the "
            "approximate kind is for corpora far larger than this sample; its recall above is what it gives up "
            "here.")
