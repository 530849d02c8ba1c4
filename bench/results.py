"""bench/results.md, rendered from the stored measurements (bench/out/<part>-<stamp>.json) and nothing else.

Dates, loads and machines are those stored with each run, so rendering again changes nothing. A part with
no stored measurement keeps its section from the current results.md; a section from before this method
(no MARKER) is labelled as such, with what differed.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import record
from run import HEADINGS, MARKER

HERE = Path(__file__).resolve().parent
NAMES = {"tunelab-fp32": "tunelab fp32", "tunelab-bf16": "tunelab bf16", "trainer-fp32": "Trainer fp32",
         "trainer-bf16": "Trainer bf16", "trainer-fp32-keepmem": "Trainer fp32, memory kept"}
OLD_LABEL = {
    "classification": "400 articles x 2 epochs, one run per side, sides one after the other; the Trainer's "
                      "warmup started at lr 0 (tunelab's at lr/warmup); tunelab's time counted optimizer steps "
                      "only, the Trainer's `train_runtime` its whole `train()` call; tunelab tested its "
                      "best-by-validation checkpoint, the Trainer its last weights",
    "lm": "160 conversations (139 examples trained), validation 2,210 trained tokens: too few to resolve the loss "
          "differences shown; one run per side, sides one after the other; the Trainer's warmup started at lr 0 "
          "(+11% total learning rate for tunelab); tunelab's time counted optimizer steps only, the Trainer's "
          "`train_runtime` its whole `train()` call; best = last on both (1 epoch, one evaluation)",
    "scratch": "one run per model, no load or machine recorded beyond this text",
    "classification_seeds": "the 400-article, 2-epoch job with the Trainer's own schedule (warmup from lr 0) "
                            "and its last weights",
    "lm_seeds": "the 160-conversation job with the Trainer's own schedule (warmup from lr 0)"}
OLD_DATE = "2026-11-23"


def side_name(side: str) -> str:
    return NAMES[side.replace("-lm", "")].replace("Trainer", "Trainer + peft" if "-lm" in side else "HF Trainer")


def results_of(rec: dict) -> dict[str, list[dict]]:
    """Each side's results in repeat order."""
    out: dict[str, list[dict]] = {s: [] for s in rec["sides"]}
    for run in sorted(rec["runs"], key=lambda r: r["repeat"]):
        out[run["side"]].append({**run["result"], "_run": run})
    return out


def cell(values: list[float], fmt: str) -> str:
    s = record.spread(values)
    if s["n"] == 1 or s["min"] == s["max"]:
        return format(s["median"], fmt)
    return f"{format(s['median'], fmt)} ({format(s['min'], fmt)}-{format(s['max'], fmt)})"


def peak_of(rec: dict, precision: str) -> float:
    """The highest matmul peak measured in the part (before or after): the conservative yardstick."""
    return max(p[f"{precision}_gflops"] for p in rec["peak"])


def table(rec: dict, res: dict[str, list[dict]], quality: list[tuple[str, str, str]]) -> list[str]:
    """One column per side; speed rows are median (min-max) over the repeats."""
    def mfu(r: dict) -> float:
        return 100 * r["model_flops"] / r["train_seconds"] / (peak_of(rec, r["precision"]) * 1e9)

    rows = [("real tokens/s", lambda r: r["tokens_per_s"], ".0f"),
            ("seconds in optimizer steps", lambda r: r["train_seconds"], ".1f"),
            ("model GFLOP/s", lambda r: r["model_flops"] / r["train_seconds"] / 1e9, ".1f"),
            ("MFU (% of its precision's peak)", mfu, ".1f"),
            ("peak RSS (MB)", lambda r: r["peak_rss_mb"], ".0f"),
            ("load (1 min) before the run", lambda r: r["_run"]["load_before"][0], ".2f"),
            ("load (1 min) after the run", lambda r: r["_run"]["load_after"][0], ".2f"),
            ("best checkpoint (step)", lambda r: r["best_step"], ".0f")]
    rows += [(label, (lambda k: lambda r: r[k])(key), fmt) for label, key, fmt in quality]
    lines = ["| | " + " | ".join(side_name(s) for s in res) + " |", "|---" * (len(res) + 1) + "|"]
    for label, get, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(cell([get(r) for r in rs], fmt) for rs in res.values()) + " |")
    return lines


def ratios(res: dict[str, list[dict]], lm: bool, fast_bf16: bool) -> list[str]:
    """tunelab over the Trainer in tokens/s: the ratio of medians, and the range of per-round ratios."""
    p = "-lm" if lm else ""
    pairs = [("both fp32", f"tunelab{p}-fp32", f"trainer{p}-fp32")]
    if fast_bf16:
        pairs += [("both bf16 mixed precision", f"tunelab{p}-bf16", f"trainer{p}-bf16"),
                  ("each tool's default (tunelab bf16, Trainer fp32)", f"tunelab{p}-bf16", f"trainer{p}-fp32")]
    if not lm:
        pairs.append(("tunelab fp32 over the Trainer fp32 with memory kept (the part that is not the "
                      "allocator)", "tunelab-fp32", "trainer-fp32-keepmem"))
    lines = []
    for label, a, b in pairs:
        if a in res and b in res:
            ta, tb = ([r["tokens_per_s"] for r in res[s]] for s in (a, b))
            per_round = [x / y for x, y in zip(ta, tb)]
            lines.append(f"- {label}: tunelab **{statistics.median(ta) / statistics.median(tb):.2f}x** "
                         f"(per round {min(per_round):.2f}-{max(per_round):.2f}x)")
    return lines


def paired(res: dict[str, list[dict]], lm: bool) -> list[str]:
    """The quality difference tunelab - Trainer in the same precision, with its standard error over
    examples (the same examples scored by both), and whether it is resolved (|difference| > 2 SE)."""
    p, lines = "-lm" if lm else "", []
    for prec in ("fp32", "bf16"):
        a, b = f"tunelab{p}-{prec}", f"trainer{p}-{prec}"
        if a not in res or b not in res:
            continue
        ra, rb = res[a][0], res[b][0]
        if lm:
            diffs = [x[0] - y[0] for x, y in zip(ra["val_losses"], rb["val_losses"])]
            d, se = record.ratio_se(diffs, [x[1] for x in ra["val_losses"]])
            what = "validation loss"
        else:
            dd = [x - y for x, y in zip(ra["test_correct"], rb["test_correct"])]
            d, se = statistics.mean(dd), statistics.stdev(dd) / math.sqrt(len(dd))
            what = "test accuracy"
        verdict = ("larger than the sampling of examples explains (this seed)" if abs(d) > 2 * se else
                   "**not resolved** (|difference| < 2 SE): no claim either way")
        lines.append(f"- {what}, {prec}: tunelab - Trainer = {d:+.4f} ± {se:.4f} (SE, paired over the same "
                     f"examples): {verdict}")
    if lines:
        lines += ["", "This SE covers which examples were scored, not the randomness of training: the two tools "
                  "start from different random weights for the new head (LoRA: adapters) and draw their batches "
                  "in a different order, so a difference of one seed is not by itself a property of the tool, "
                  "least of all in a short job. `python bench/seeds.py` repeats the quality side over seeds."]
    return lines


def determinism(res: dict[str, list[dict]], key: str, what: str) -> str:
    """Whether a quality figure came out the same in every repeat (same seed, same threads)."""
    varied = [side_name(s) for s, rs in res.items() if len({round(r[key], 6) for r in rs}) > 1]
    return (f"The {what} was identical in every repeat of each side." if not varied else
            f"The {what} varied across repeats for {', '.join(varied)} (ranges in the table).")


def gflops(peaks: list[dict], precision: str) -> str:
    return " / ".join(f"{p[precision + '_gflops']:.0f}" for p in peaks)


def measured(rec: dict, mfu: bool = True) -> list[str]:
    """The section's provenance: when, on what, how many runs, the matmul peak, the stored file."""
    runs, peaks = rec["runs"], rec["peak"]
    return [f"Measured {runs[0]['started']} to {runs[-1]['finished']} (UTC) on "
            f"{record.describe_machine(rec['machine'])}; {rec['repeats']} runs per side, interleaved (order "
            f"reversed every round). Matmul peak in the same run (square torch matmuls, same thread count, before "
            f"and after the sides): fp32 {gflops(peaks, 'fp32')} GFLOP/s, bf16 {gflops(peaks, 'bf16')} GFLOP/s"
            f"{'; MFU uses the higher' if mfu else ''}. Figures: "
            f"`{rec['file']}`." + (" **Smoke run: tiny job, figures mean nothing.**" if rec.get("smoke") else ""),
            ""]


METHOD = ("Both sides train the same token ids with tunelab's AdamW and learning-rate schedule (the bench "
          "checks that every step's rate is identical on all sides and stops otherwise), evaluate at the end "
          "of each epoch with the same function and test the best checkpoint by validation. Time is the sum "
          "of seconds inside optimizer steps (forward, backward, clipping, update; not batch fetching, "
          "evaluation or saving), on both sides. Model FLOPs (formula below) over that time, divided by the "
          "matmul peak of the side's precision, is the MFU.")


def classification_section(rec: dict) -> list[str]:
    j, res = rec["job"], results_of(rec)
    d = next(iter(res.values()))[0]["data"]
    steps = next(iter(res.values()))[0]["steps"]
    return [
        "## Classification: MiniLM-L6 full fine-tuning on BBC News", MARKER, "",
        f"{METHOD} Trainer: DataCollatorWithPadding (pads each random batch to its longest example). tunelab "
        "computes only the [CLS] position in the last layer and draws dropout masks from 16-bit random words "
        "(`train.fast_dropout`).", "",
        f"Data: {d['train_examples']} training articles ({d['train_tokens']:,} real tokens, max_length "
        f"{j['max_length']}), {j['epochs']} epoch(s) = {steps} optimizer steps of {j['batch_size']}; validation "
        f"{d['validation_examples']} articles ({d['validation_tokens']:,} tokens); test {d['test_examples']} "
        f"articles ({d['test_tokens']:,} tokens). Stratified seeded split (seed {j['seed']}), AdamW lr {j['lr']}, "
        f"weight decay {j['weight_decay']}, linear schedule with warmup {j['warmup_ratio']}, clip "
        f"{j['max_grad_norm']}. Job shrunk from 400 articles x 2 epochs (validation 10%) so that 3 repeats of 5 "
        "sides fit in about 15 minutes; the test articles are the same.", "",
        *measured(rec),
        *table(rec, res, [("test accuracy", "accuracy", ".4f"), ("test F1 macro", "f1_macro", ".4f")]), "",
        *ratios(res, False, rec["machine"]["fast_bf16"]), "",
        f"Test accuracy resolution: ± {_acc_se(res):.4f} (binomial SE on {d['test_examples']} articles). "
        + determinism(res, "accuracy", "test accuracy"), "",
        *paired(res, False), "",
        "Model FLOPs, full fine-tuning: 6 N n + 12 L d n^2 per article of n tokens (N: the encoder's linear "
        f"weights, {millions(res, 'body')}, not the embeddings; L layers, width d; forward 1/3, backward 2/3). "
        "tunelab's [CLS]-only last layer skips part of that work, which this count still credits to it.", ""]


def millions(res: dict[str, list[dict]], role: str) -> str:
    params = next(iter(res.values()))[0].get("params")
    return f"{params[role] / 1e6:.2f}M" if params else "not stored"


def _acc_se(res: dict[str, list[dict]]) -> float:
    r = next(iter(res.values()))[0]
    return math.sqrt(r["accuracy"] * (1 - r["accuracy"]) / len(r["test_correct"]))


def lm_section(rec: dict) -> list[str]:
    j, res = rec["job"], results_of(rec)
    first = next(iter(res.values()))[0]
    d = first["data"]
    ses = {s: record.ratio_se([x[0] for x in rs[0]["val_losses"]], [x[1] for x in rs[0]["val_losses"]])[1]
           for s, rs in res.items()}
    return [
        "## Instruction tuning: SmolLM2-135M-Instruct LoRA on ShareGPT", MARKER, "",
        f"{METHOD} Trainer + peft: DataCollatorForSeq2Seq (dynamic padding), the model's own loss over "
        "full-vocabulary logits. tunelab: the vocabulary projection and loss only at trained positions, in "
        "chunks; dropout masks from 16-bit random words. Validation loss: mean cross-entropy per trained token, "
        "one conversation at a time in fp32, the same function for every side.", "",
        f"Data: {d['train_records']} training conversations; {d['train_examples']} keep a trained token within "
        f"{j['max_length']} tokens ({d['train_dropped']} dropped, {d['train_truncated']} truncated): "
        f"{d['train_tokens']:,} tokens, {d['train_trained_tokens']:,} of them trained (assistant turns), "
        f"{j['epochs']} epoch = {first['steps']} steps of {j['batch_size']}. Validation: "
        f"{d['validation_records']} conversations, {d['validation_examples']} examples, "
        f"{d['validation_trained_tokens']:,} trained tokens. LoRA r={j['r']} alpha={j['alpha']} dropout="
        f"{j['dropout']} on {j['target_modules']}, lr {j['lr']} linear with warmup {j['warmup_ratio']}, seed "
        f"{j['seed']}. Job shrunk from 160 conversations (batch 8) so that 3 repeats of 4 sides fit in about 20 "
        "minutes; the validation split was enlarged from 10% to 50% of the pool.", "",
        *measured(rec),
        *table(rec, res, [("validation loss", "val_loss", ".4f")]),
        "| SE of the validation loss | " + " | ".join(f"{ses[s]:.4f}" for s in res) + " |", "",
        *ratios(res, True, rec["machine"]["fast_bf16"]), "",
        "The SE of a validation loss is taken over conversations (tokens of one conversation are not "
        "independent). The sides score the same conversations, so the SE of their difference (below) is much "
        "smaller than that of either loss. " + determinism(res, "val_loss", "validation loss"), "",
        *paired(res, True), "",
        "Model FLOPs, LoRA: 4 N n + 6 N_A n + 4 N_V m + 6 L d n^2 per conversation of n tokens with m trained "
        f"positions. N: the decoder's frozen linear weights ({millions(res, 'body')}; forward 2N, gradients "
        f"through them 2N, none for them); N_A: the LoRA weights ({millions(res, 'adapter')}; forward, activation "
        f"and weight gradients); N_V: the vocabulary projection ({millions(res, 'head')}), "
        "counted only where a loss is taken; attention scores and mixing 3 x forward, causal (half).", ""]


def peak_section(rec: dict) -> list[str]:
    return [HEADINGS["peak"], MARKER, "",
            f"Measured {rec['started']} (UTC), load {rec['load_before'][0]:.2f} before, on "
            f"{record.describe_machine(rec['machine'])}: square torch matmuls reach fp32 "
            f"{rec['fp32_gflops']:.0f} GFLOP/s and bf16 {rec['bf16_gflops']:.0f} GFLOP/s. Figures: "
            f"`{rec['file']}`.", ""]


def previous_sections(path: Path) -> dict[str, str]:
    """The sections of an existing results.md, by part name (the longest matching heading wins)."""
    if not path.is_file():
        return {}
    chunks, found = ["## " + c for c in path.read_text().split("\n## ")[1:]], {}
    for part, heading in HEADINGS.items():
        match = [c for c in chunks if c.startswith(heading)
                 and not any(c.startswith(h) for h in HEADINGS.values() if len(h) > len(heading))]
        if match:
            found[part] = match[0].rstrip("\n") + "\n"
    return found


def labelled_old(part: str, text: str) -> str:
    """A section kept from before: says so, with its date and what differed, unless already measured (or
    labelled) under the current method."""
    if MARKER in text or "**Old method" in text:
        return text
    head, _, body = text.partition("\n")
    return (f"{head}\n\n> **Old method, measured {OLD_DATE}, not re-run with the current bench:** "
            f"{OLD_LABEL[part]}.\n{body}")


def render(smoke: bool, old: dict[str, str]) -> str:
    import answering
    import augment_bench
    import checkpoint
    import distributed
    import explain_bench
    import scratch
    import serve_bench
    import tagging_bench
    import tradeoff
    import translation as seq2seq

    lines = ["# tunelab benchmark", "",
             "Produced by `make bench` (`python bench/run.py`; one part: `make bench PART=lm`). Each side runs "
             "in its own process; peak RSS is that process's maximum resident memory. Every figure below is "
             "rendered from the stored measurements named in its section, with their own dates.", ""]
    renderers = {"peak": peak_section, "classification": classification_section, "lm": lm_section,
                 "scratch": lambda rec: [scratch.markdown(rec)], "checkpoint": checkpoint.markdown,
                 "distributed": distributed.markdown, "seq2seq": seq2seq.markdown, "qa": answering.qa_markdown,
                 "retrieval": answering.retrieval_markdown, "ner": tagging_bench.ner_markdown,
                 "compress": tradeoff.markdown, "explain": explain_bench.markdown, "serve": serve_bench.markdown,
                 "augment": augment_bench.markdown}
    for part in ("peak", "classification", "lm", "scratch", "classification_seeds", "lm_seeds", "checkpoint",
                 "distributed", "seq2seq", "qa", "retrieval", "ner", "compress", "explain", "serve", "augment"):
        rec = record.latest(part, smoke) if part in renderers else None
        if rec is not None:
            lines += renderers[part](rec)
        elif part in old:
            lines += [labelled_old(part, old[part])]
    return "\n".join(lines).rstrip("\n") + "\n"


def write(smoke: bool) -> str:
    """Render results.md (smoke: bench/out/results-smoke.md, the committed file untouched); return the text."""
    target = HERE / ("out/results-smoke.md" if smoke else "results.md")
    text = render(smoke, previous_sections(HERE / "results.md"))
    target.write_text(text)
    return text
