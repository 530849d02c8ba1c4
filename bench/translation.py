"""Seq2seq part of `make bench`: translation between German and English on `builtin:gettext`, one training
budget for every model, and the warm-started MiniLM job in Hugging Face `Seq2SeqTrainer` beside tunelab.

Sides (each run in its own child process, interleaved over the repeats like every part):

- `s2s-scratch-de-en`, `s2s-scratch-en-de`: `scratch:transformer-seq2seq` with a byte-level BPE tokenizer
  trained on both sides of that direction's training pairs (nothing from the test pairs);
- `s2s-minilm-de-en`: MiniLM-L6 warm-started as an encoder-decoder (`model.architecture: encoder-decoder`).
  German -> English only: MiniLM's tokenizer is uncased and strips accents, so it cannot write German;
- `s2s-trainer-minilm-de-en`: the same MiniLM job trained by `Seq2SeqTrainer`. It gets tunelab's prepared job
  (the same pairs, token ids, and initial weights: the random cross-attention is drawn after the same seed),
  tunelab's AdamW and per-step learning rates and its timing span (bench/fair.py), and is tested by tunelab's
  own function, so only the training loop differs;
- `s2s-smollm-de-en`, `s2s-smollm-en-de`: SmolLM2-135M-Instruct, decoder-only with LoRA, on "source\\n" ->
  target prompts with the loss on the target only.

The budget is the same everywhere: the same training pairs of a direction, batch, steps (one epoch), max_length,
plainly random batches (`group_by_length: never`, so every tunelab side trains the same pairs in the same
batches whatever its tokenizer), fp32. The learning rate is each model's own (a model from scratch, a full
fine-tune and LoRA do not share one). No validation split: one epoch has one evaluation, so the last weights
are the tested ones. Test: greedy decoding of every test pair, corpus chrF and BLEU (sacrebleu, signatures
stored), and the outputs themselves, so sentence-level chrF can be paired between sides afterwards.

Speed: tokens/s here are the pair's tokens (source ids plus target ids with EOS for an encoder-decoder; the
whole prompt + target row for a decoder-only model) over the seconds inside optimizer steps, counted by this
file from the encoded data, the same way for the Trainer. Tokenizers differ, so pairs/s is the figure that
compares models; tokens/s compares tunelab with the Trainer on one model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from run import MARKER, capture, peak_rss_mb  # bench/ is on sys.path when bench/run.py runs

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "seq2seq"
SMOKE = os.environ.get("BENCH_SMOKE") == "1"

# 800 training pairs of at most 80 characters a side x 1 epoch = 200 steps of 4. Test: 0.3% of the
# deduplicated German catalog pairs (about 147), every one generated (samples >= the test split). SmolLM2
# sets the size: on one thread it trained about 4 pairs/s (short probes), so its two runs are most of a
# round of the six sides; 2 rounds (REPEATS in run.py) were estimated at about 25 minutes on 2 cores.
JOB = dict(language="de", max_chars=80, limit=800, test_fraction=0.003, max_length=96, batch_size=4, epochs=1,
           weight_decay=0.01, warmup_ratio=0.1, max_grad_norm=1.0, seed=42, samples=256, max_new_tokens=48,
           vocab_size=4000)
if SMOKE:
    JOB.update(limit=32, test_fraction=0.0003, max_length=48, samples=8, max_new_tokens=8, vocab_size=400)
DIRECTIONS = {"de-en": "to_english", "en-de": "from_english"}
MODELS = {  # model: section, method: section, learning rate
    "scratch": ({"name": "scratch:transformer-seq2seq", "layers": 3, "hidden_size": 256, "heads": 4,
                 "position": "learned", "dropout": 0.1}, {"name": "full"}, 1.0e-3),
    "minilm": ({"name": "builtin:minilm-l6", "architecture": "encoder-decoder"}, {"name": "full"}, 1.0e-4),
    "smollm": ({"name": "builtin:smollm2-135m-instruct"},
               {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}, 1.0e-3),
}
NAMES = {"scratch": "scratch Transformer (tunelab)", "minilm": "MiniLM enc-dec (tunelab)",
         "trainer-minilm": "MiniLM enc-dec (Seq2SeqTrainer)", "smollm": "SmolLM2-135M LoRA (tunelab)"}
SIDES = ("s2s-scratch-de-en", "s2s-scratch-en-de", "s2s-minilm-de-en", "s2s-trainer-minilm-de-en",
         "s2s-smollm-de-en", "s2s-smollm-en-de")


def job() -> dict:
    """What a stored measurement records of the job: JOB and each model's model:/method: sections and lr."""
    return {**JOB, "models": {name: {"model": m, "method": method, "lr": lr}
                              for name, (m, method, lr) in MODELS.items()}}


def parse_side(side: str) -> tuple[str, str, bool]:
    """(model, direction, trainer?) of a side name such as s2s-trainer-minilm-de-en."""
    rest = side.removeprefix("s2s-")
    trainer = rest.startswith("trainer-")
    model, direction = rest.removeprefix("trainer-").rsplit("-", 2)[0], rest[-5:]
    return model, direction, trainer


def side_config(model: str, direction: str, out_dir: Path, tokenizer: Path | None = None):
    """The tunelab run config of one model and direction (the Trainer side prepares its job from it too)."""
    from tunelab.config import config_from_dict

    j, (model_section, method, lr) = JOB, MODELS[model]
    extra = {"tokenizer": str(tokenizer)} if tokenizer is not None else {}
    return config_from_dict({
        "task": "seq2seq",
        "model": {**model_section, "max_length": j["max_length"], **extra},
        "data": {"train": "builtin:gettext", "language": j["language"], "direction": DIRECTIONS[direction],
                 "max_chars": j["max_chars"], "limit": j["limit"], "val_fraction": 0.0,
                 "test_fraction": j["test_fraction"]},
        "method": method,
        "train": {"epochs": j["epochs"], "batch_size": j["batch_size"], "lr": lr, "weight_decay": j["weight_decay"],
                  "warmup_ratio": j["warmup_ratio"], "max_grad_norm": j["max_grad_norm"], "seed": j["seed"],
                  "scheduler": "linear", "precision": "fp32", "log_every": 1, "group_by_length": "never",
                  "early_stopping": {"patience": None}},
        "generate": {"samples_in_eval": j["samples"], "max_new_tokens": j["max_new_tokens"], "num_beams": 1},
        "output_dir": str(out_dir)})


def train_pair_tokenizer(direction: str) -> Path:
    """A byte-level BPE tokenizer trained on both sides of the direction's training pairs (the split tunelab
    trains on, read with its own function); BPE training is deterministic, so every repeat gets the same one."""
    from tunelab.tasks.seq2seq import load_split_pairs
    from tunelab.tokenizer_train import build_tokenizer

    cfg = side_config("minilm", direction, OUT / "unused")  # only its data: section is read
    pairs = load_split_pairs(cfg.data, cfg.train.seed, lambda _: None)["train"][0]
    texts = [text for p in pairs for text in (p["source"], p["target"])]
    folder = OUT / f"tokenizer-{direction}"
    build_tokenizer(texts, JOB["vocab_size"], "bpe").save_pretrained(str(folder))
    return folder


def data_facts(job) -> dict:
    """What the side trained and was tested on: pairs, the tokens this bench counts, truncation."""
    from tunelab.tasks.seq2seq import PairSet

    train, test = job.data["train"], job.data["test"]
    if isinstance(train, PairSet):  # encoder-decoder: source ids + target ids (EOS included)
        tokens = sum(map(len, train.sources)) + sum(map(len, train.labels))
        target_tokens = sum(map(len, train.labels))
        cut = train.source_cut + train.target_cut
        examples = len(train)
    else:  # decoder-only: the prompt + target row; trained positions are the target's
        tokens, target_tokens, cut, examples = train.tokens, train.label_tokens, train.truncated, len(train)
    return {"train_pairs": len(train.pairs), "train_examples": examples, "train_tokens": tokens,
            "train_target_tokens": target_tokens, "train_truncated": cut, "test_pairs": len(test.pairs),
            "vocabulary": len(job.tokenizer)}


def test_figures(metrics: dict, samples: list[dict]) -> dict:
    """The test metrics a section shows, with every generated output and its reference."""
    return {"chrf": metrics["chrf"], "bleu": metrics["bleu"], "test_loss": metrics["loss"],
            "generated": metrics["generated"], "signatures": metrics["signatures"],
            "outputs": [s["generated"] for s in samples], "references": [s["reference"] for s in samples]}


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_side(side: str) -> dict:
    """One side in this process (the child bench/run.py starts for it)."""
    model, direction, trainer = parse_side(side)
    if trainer:
        return run_trainer(model, direction)
    return run_tunelab(model, direction)


def run_tunelab(model: str, direction: str) -> dict:
    """`tunelab.run.train` on the side's config; figures from its eval.json, metrics.jsonl and job."""
    from fair import tunelab_lrs
    from tunelab.run import train
    from tunelab.tasks.seq2seq import Seq2SeqJob

    tokenizer = train_pair_tokenizer(direction) if model == "scratch" else None
    factory, kept = capture(Seq2SeqJob)
    cfg = side_config(model, direction, OUT / f"{model}-{direction}", tokenizer)
    run_dir = train(cfg, overwrite=True, show_progress=False, log=lambda m: None, job_factory=factory)
    ev, job = json.loads((run_dir / "eval.json").read_text()), kept["job"]
    facts = data_facts(job)
    tokens = facts["train_tokens"] * JOB["epochs"]
    return {"job_name": f"{model}-{direction}", "tokens_per_s": tokens / ev["train_seconds"],
            "pairs_per_s": facts["train_examples"] * JOB["epochs"] / ev["train_seconds"],
            "train_seconds": ev["train_seconds"], "train_tokens": tokens, "steps": ev["steps"],
            "loop_tokens_per_s": ev["train_tokens_per_s"], "lrs": tunelab_lrs(run_dir / "metrics.jsonl"),
            "lr": cfg.train.lr, "trainable_params": trainable(job.model), "family": job.family.name,
            "peak_rss_mb": peak_rss_mb(), "data": facts, **test_figures(ev["test"], job.samples)}


def run_trainer(model: str, direction: str) -> dict:
    """The Hugging Face baseline: `Seq2SeqTrainer` trains tunelab's prepared job's model on its token ids,
    with tunelab's optimizer, per-step rates and timing span; tested by tunelab's job (same function)."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments
    from transformers.utils import logging as hf_logging

    from fair import StepTimer, tunelab_optimizers, tunelab_steps
    from tunelab.data.tokens import IGNORE_INDEX
    from tunelab.run import seed_everything
    from tunelab.tasks.seq2seq import Seq2SeqJob

    hf_logging.set_verbosity_error()
    j, cfg = JOB, side_config(model, direction, OUT / "unused")
    seed_everything(cfg.train.seed)  # as tunelab's driver does before prepare: the same initial weights
    job = Seq2SeqJob(cfg, torch.device("cpu"), lambda m: None)
    job.prepare()
    train = job.data["train"]
    items = [{"input_ids": s, "attention_mask": [1] * len(s), "labels": t} for s, t in zip(train.sources, train.labels)]
    total, warmup = tunelab_steps(job.micro_batches_per_epoch(), j["epochs"], j["warmup_ratio"])
    timer = StepTimer()
    args = Seq2SeqTrainingArguments(output_dir=str(OUT / "trainer-run"), num_train_epochs=j["epochs"],
                                    per_device_train_batch_size=j["batch_size"], max_grad_norm=j["max_grad_norm"],
                                    seed=j["seed"], save_strategy="no", eval_strategy="no", logging_steps=10,
                                    report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    trainer = Seq2SeqTrainer(model=job.model, args=args, train_dataset=items, callbacks=[timer],
                             data_collator=DataCollatorForSeq2Seq(job.tokenizer, padding=True,
                                                                  label_pad_token_id=IGNORE_INDEX),
                             optimizers=tunelab_optimizers(job.model, lr=cfg.train.lr, weight_decay=j["weight_decay"],
                                                           total=total, warmup=warmup))
    trainer.train()
    metrics, samples = job._scores(job.model, job.data["test"], j["samples"])
    facts = data_facts(job)
    tokens = facts["train_tokens"] * j["epochs"]
    return {"job_name": f"{model}-{direction}", "tokens_per_s": tokens / timer.seconds,
            "pairs_per_s": facts["train_examples"] * j["epochs"] / timer.seconds, "train_seconds": timer.seconds,
            "train_tokens": tokens, "steps": len(timer.lrs), "lrs": timer.lrs, "lr": cfg.train.lr,
            "trainable_params": trainable(job.model), "family": job.family.name, "peak_rss_mb": peak_rss_mb(),
            "data": facts, **test_figures(metrics, samples)}


def check_budget(runs: list[dict]) -> None:
    """Fail loudly unless every side trained the same number of steps, and the sides of one direction the
    same pairs (the learning rates are checked per job by run.check_same_job)."""
    first = runs[0]["result"]
    for run in runs[1:]:
        r = run["result"]
        if r["steps"] != first["steps"]:
            raise SystemExit(f"training budgets differ: {runs[0]['side']} {first['steps']} steps vs "
                             f"{run['side']} {r['steps']}")
    for direction in DIRECTIONS:
        same = [run for run in runs if parse_side(run["side"])[1] == direction]
        counts = {run["side"]: run["result"]["data"]["train_examples"] for run in same}
        if len(set(counts.values())) > 1:
            raise SystemExit(f"{direction}: the sides trained different numbers of pairs: {counts}")


# ---------------------------------------------------------------------------------------------
# The section of results.md, from a stored measurement


def paired_chrf(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean sentence-level chrF difference a - b over the same test pairs, its standard error, and n."""
    import math
    import statistics

    from sacrebleu.metrics import CHRF

    if a["references"] != b["references"]:
        raise SystemExit("the two sides were tested on different pairs; their chrF cannot be paired")
    chrf = CHRF()
    diffs = [chrf.sentence_score(x, [ref]).score - chrf.sentence_score(y, [ref]).score
             for x, y, ref in zip(a["outputs"], b["outputs"], a["references"])]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return statistics.mean(diffs), se, len(diffs)


def column_name(side: str) -> str:
    model, direction, trainer = parse_side(side)
    return f"{NAMES[('trainer-' if trainer else '') + model]}, {direction.replace('-', ' -> ')}"


def trainer_lines(res: dict[str, list[dict]]) -> list[str]:
    """tunelab over Seq2SeqTrainer on the MiniLM job: tokens/s ratio, chrF side by side, paired difference."""
    import statistics

    a, b = res.get("s2s-minilm-de-en"), res.get("s2s-trainer-minilm-de-en")
    if not a or not b:
        return []
    ta, tb = [r["tokens_per_s"] for r in a], [r["tokens_per_s"] for r in b]
    per_round = [x / y for x, y in zip(ta, tb)]
    d, se, n = paired_chrf(a[0], b[0])
    verdict = ("larger than the sampling of test pairs explains (this seed)" if abs(d) > 2 * se else
               "**not resolved** (|difference| < 2 SE): no claim either way")
    return [f"- MiniLM de -> en, tunelab over Seq2SeqTrainer: **{statistics.median(ta) / statistics.median(tb):.2f}x** "
            f"tokens/s (per round {min(per_round):.2f}-{max(per_round):.2f}x); test chrF {a[0]['chrf']:.2f} "
            f"(tunelab) vs {b[0]['chrf']:.2f} (Seq2SeqTrainer), BLEU {a[0]['bleu']:.2f} vs {b[0]['bleu']:.2f}",
            f"- sentence-level chrF, tunelab - Seq2SeqTrainer = {d:+.2f} ± {se:.2f} (SE, paired over the same {n} "
            f"test pairs): {verdict}. Both start from the same weights and train the same token ids; the batches "
            "come in a different order (each tool's own sampler) and dropout masks differ, so this is one seed's "
            "difference, not a property of the tool."]


def markdown(rec: dict) -> list[str]:
    """The part's section of results.md."""
    from results import cell, measured, results_of

    j, res = rec["job"], results_of(rec)
    first = next(iter(res.values()))[0]
    scratch, lora = j["models"]["scratch"]["model"], j["models"]["smollm"]["method"]
    rows = [("model family", lambda r: r["family"], "s"), ("learning rate", lambda r: r["lr"], "g"),
            ("trainable parameters (M)", lambda r: r["trainable_params"] / 1e6, ".2f"),
            ("vocabulary", lambda r: r["data"]["vocabulary"], ",d"),
            ("training tokens (own tokenizer)", lambda r: r["train_tokens"], ",d"),
            ("pairs truncated", lambda r: r["data"]["train_truncated"], "d"),
            ("**pairs/s**", lambda r: r["pairs_per_s"], ".1f"), ("tokens/s", lambda r: r["tokens_per_s"], ".0f"),
            ("seconds in optimizer steps", lambda r: r["train_seconds"], ".1f"),
            ("peak RSS (MB)", lambda r: r["peak_rss_mb"], ".0f"),
            ("load (1 min) before the run", lambda r: r["_run"]["load_before"][0], ".2f"),
            ("**test chrF**", lambda r: r["chrf"], ".2f"), ("test BLEU", lambda r: r["bleu"], ".2f"),
            ("test loss per target token (own tokenizer)", lambda r: r["test_loss"], ".3f")]
    lines = ["## Translation: German <-> English on gettext catalogs", MARKER, "",
             f"Every side trains the same budget: for each direction the same {first['data']['train_pairs']:,} "
             f"training pairs of `builtin:gettext` (language {j['language']}, pairs with a side over "
             f"{j['max_chars']} characters dropped, duplicates by source removed), {first['steps']} steps of "
             f"{j['batch_size']} (1 epoch), max_length {j['max_length']}, fp32, plainly random batches in the same "
             "order on every tunelab side, AdamW with weight decay "
             f"{j['weight_decay']}, linear schedule with warmup {j['warmup_ratio']}, clip {j['max_grad_norm']}, seed "
             f"{j['seed']}; each model its own learning rate. Test: {first['data']['test_pairs']} held-out pairs "
             f"(data.test_fraction {j['test_fraction']}), every one greedily decoded (at most {j['max_new_tokens']} "
             "new tokens) and scored with sacrebleu (corpus chrF and BLEU). The two directions are carved "
             "separately (the catalogs deduplicate by source, which differs), so their test pairs differ.", "",
             f"- scratch Transformer: `scratch:transformer-seq2seq` ({scratch['layers']} encoder and "
             f"{scratch['layers']} decoder layers, hidden {scratch['hidden_size']}, {scratch['heads']} heads, "
             f"{scratch['position']} positions, dropout {scratch['dropout']}) with a byte-level BPE tokenizer of at "
             f"most {j['vocab_size']} tokens trained on both sides of the direction's training pairs;",
             "- MiniLM enc-dec: `builtin:minilm-l6` warm-started as an encoder-decoder (the decoder's cross-attention "
             "starts random), full fine-tuning, **German -> English only**: MiniLM's tokenizer is uncased and strips "
             "accents, so it cannot write German;",
             f"- SmolLM2-135M-Instruct, decoder-only: LoRA r={lora['r']} alpha={lora['alpha']} dropout "
             f"{lora['dropout']} on {lora['target_modules']}, trained on \"source\\n\" -> target with the loss "
             "on the target's tokens;",
             "- Seq2SeqTrainer: the MiniLM job's prepared model (same initial weights), pairs and token ids, "
             "trained by Hugging Face `Seq2SeqTrainer` with `DataCollatorForSeq2Seq` padding, tunelab's AdamW and "
             "per-step learning rates (checked identical), timed over the same span (forward, backward, clip, "
             "update), tested by tunelab's function.", "",
             "Speed: pairs/s compares models (their tokenizers cut the same text into different numbers of "
             "tokens); tokens/s (source plus target ids for an encoder-decoder, the prompt + target row for "
             "SmolLM2, counted by the bench from the encoded data) compares tunelab with the Trainer on one model.",
             "", *measured(rec, mfu=False),
             "| | " + " | ".join(column_name(s) for s in res) + " |", "|---" * (len(res) + 1) + "|"]
    for label, get, fmt in rows:  # measured rows: median (range) over the repeats; facts: the first run's
        measured_row = fmt.startswith(".")
        cells = [cell([get(r) for r in rs], fmt) if measured_row else format(get(rs[0]), fmt) for rs in res.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    varied = [column_name(s) for s, rs in res.items() if len({round(r["chrf"], 6) for r in rs}) > 1]
    lines += ["", *trainer_lines(res),
              "- test chrF " + (f"varied across repeats for {', '.join(varied)} (ranges in the table)" if varied
                                else "was identical in every repeat of each side (same seed, same threads)"),
              f"- sacrebleu signatures: chrF `{first['signatures']['chrf']}`, BLEU `{first['signatures']['bleu']}`"]
    return lines + [""]
