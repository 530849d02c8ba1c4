"""bench part `compress`: what making MiniLM smaller costs on BBC News, measured through the CLI.

Every job is a `tunelab` command in a child process, as a user would run it, in a fresh work folder
(bench/out/compress-work/, smoke: compress-smoke-work/):

1. the teacher: `tunelab train` of MiniLM-L6 (6 layers) with full fine-tuning, examples/bbc-news.yaml on more
   data (TEACHER: 1,500 training articles, 3 epochs, max_length 128, seed 42; the test split is the usual
   10% of all 2,225 articles, 223);
2. its variants, each one `tunelab compress` call (VARIANTS), every retrained one for RETRAIN_STEPS steps of
   the run's own loop: structured 50% + retraining, int8 dynamic, low rank + retraining, their combination
   (structured 50% + retraining + int8 dynamic), and for honesty int8 weight-only and magnitude 50% + retraining;
3. two 3-layer students made of the teacher's layers 0, 2, 4 (`method.student_layers`) and trained on the same
   data for the teacher's number of steps: one distilled (method distill, alpha 0.5, T 2), and the control
   trained on the hard labels alone (alpha 0), which shows what the teacher's soft targets add;
4. `tunelab compress TEACHER --report --compare STUDENT --compare CONTROL --threads 2`: every variant measured in
   one process on the teacher's test split (tunelab.compress.report).

`run()` stores the report's rows, every command with its wall time, the runs' training facts, the machine and
the load in bench/out/compress-<stamp>.json and copies the plot to compress-<stamp>.png; `markdown()`
renders results.md's section from that file alone.

    python bench/run.py --part compress            # the measurement (about 15 minutes on 2 idle cores)
    python bench/run.py --part compress --smoke    # a tiny job that checks the part end to end
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import record  # noqa: E402
from run import MARKER  # noqa: E402

THREADS = 2  # torch threads of the report's timings: the machine's 2 cores
STUDENT_LAYERS = [0, 2, 4]
DISTILL = {"temperature": 2.0, "alpha": 0.5}
# The teacher: examples/bbc-news.yaml on 1,500 training articles (data.limit counts training records; validation
# and test stay 10% of all 2,225 each) for 3 epochs = 282 steps of 16.
TEACHER = dict(limit=1500, max_length=128, epochs=3, batch_size=16, lr=1.0e-4, weight_decay=0.01,
               warmup_ratio=0.06, max_grad_norm=1.0, seed=42, val_fraction=0.1, test_fraction=0.1)
RETRAIN_STEPS = 200
LOW_RANK = 64  # rank of every factorised Linear: attention 384x384 -> 64 x 768 (1/3), FFN 384x1536 -> 64 x 1920
SMOKE_SIZES = dict(limit=120, max_length=32, epochs=1, batch_size=8, val_fraction=0.02, test_fraction=0.02)
SMOKE_RETRAIN = 4


def variants(retrain: int) -> dict[str, list[str]]:
    """{folder name: `tunelab compress` options}: each a result in TEACHER/compressed/NAME."""
    r = ["--retrain-steps", str(retrain)]
    return {"structured-50+retrain": ["--prune", "structured", "--sparsity", "0.5", *r],
            "int8-dynamic": ["--quantize", "int8-dynamic"],
            f"lowrank-r{LOW_RANK}+retrain": ["--low-rank", str(LOW_RANK), *r],
            "structured-50+retrain+int8-dynamic": ["--prune", "structured", "--sparsity", "0.5", *r,
                                                   "--quantize", "int8-dynamic"],
            "int8-weight-only": ["--quantize", "int8-weight-only"],
            "magnitude-50+retrain": ["--prune", "magnitude", "--sparsity", "0.5", *r]}


def job(smoke: bool, fast_bf16: bool) -> dict:
    """The part's settings, as stored with its figures: training in bf16 where the CPU has it natively
    (tunelab's `auto`, written out), else fp32."""
    teacher = {**TEACHER, **(SMOKE_SIZES if smoke else {}), "precision": "bf16" if fast_bf16 else "fp32"}
    retrain = SMOKE_RETRAIN if smoke else RETRAIN_STEPS
    return {"teacher": teacher, "retrain_steps": retrain, "low_rank": LOW_RANK, "threads": THREADS,
            "student_layers": STUDENT_LAYERS, "distill": DISTILL, "variants": variants(retrain)}


def run_config(j: dict, out_dir: Path, method: dict) -> dict:
    """A run config (as YAML data): examples/bbc-news.yaml with the part's sizes and `method`."""
    t = j["teacher"]
    return {"task": "classification",
            "model": {"name": "builtin:minilm-l6", "max_length": t["max_length"]},
            "data": {"train": "builtin:bbc-news", "limit": t["limit"], "val_fraction": t["val_fraction"],
                     "test_fraction": t["test_fraction"]},
            "method": method,
            "train": {"epochs": t["epochs"], "batch_size": t["batch_size"], "lr": t["lr"], "optimizer": "adamw",
                      "weight_decay": t["weight_decay"], "scheduler": "linear", "warmup_ratio": t["warmup_ratio"],
                      "max_grad_norm": t["max_grad_norm"], "seed": t["seed"], "precision": t["precision"],
                      "early_stopping": {"metric": "f1_macro", "patience": 3}},
            "output_dir": str(out_dir)}


def tunelab(args: list[str], log_path: Path) -> dict:
    """Run `tunelab ARGS` in a child process (its output to log_path); its command line and wall seconds."""
    cmd = [sys.executable, "-m", "tunelab", *args]
    print("$ tunelab " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent).returncode
    seconds = round(time.perf_counter() - t0, 1)
    if code != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"tunelab {' '.join(args)} failed (exit {code}); {log_path}:\n{tail}")
    print(f"  {seconds:.0f} s", flush=True)
    return {"command": "tunelab " + " ".join(args), "seconds": seconds}


def train_run(name: str, cfg: dict, work: Path) -> dict:
    """`tunelab train` of one config written to WORK/NAME.yaml; the command and the run's eval.json facts."""
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    done = tunelab(["train", str(path), "--no-progress", "--overwrite"], work / f"{name}.log")
    ev = json.loads((Path(cfg["output_dir"]) / "eval.json").read_text())
    keep = ("steps", "best_step", "train_seconds", "train_tokens_per_s")
    return {**done, "config": cfg, **{k: ev.get(k) for k in keep}, "test": ev.get("test")}


def compress(teacher: Path, name: str, options: list[str], work: Path) -> dict:
    done = tunelab(["compress", str(teacher), *options, "--name", name, "--no-progress"], work / f"{name}.log")
    facts = json.loads((teacher / "compressed" / name / "compress.json").read_text())
    return {**done, "options": options, "compress": facts}


def run(smoke: bool = False) -> dict:
    """The whole part; stored as bench/out/compress[-smoke]-<stamp>.json (+ .png), returned."""
    machine = record.machine()
    j = job(smoke, machine["fast_bf16"])
    work = HERE / "out" / ("compress-smoke-work" if smoke else "compress-work")
    shutil.rmtree(work, ignore_errors=True)  # the part's own scratch folder: every run starts from nothing
    work.mkdir(parents=True)
    path = record.new_path("compress", smoke)
    rec = {"part": "compress", "smoke": smoke, "job": j, "started": record.utc_now(), "load_before": record.load(),
           "machine": machine, "commands": {}, "complete": False}
    teacher = work / "teacher"
    rec["commands"]["teacher"] = train_run("teacher", run_config(j, teacher, {"name": "full"}), work)
    record.save(path, rec)
    for name, options in j["variants"].items():
        rec["commands"][name] = compress(teacher, name, options, work)
        record.save(path, rec)
    students = {"student-3L-distilled": DISTILL, "student-3L-hard-labels": {**DISTILL, "alpha": 0.0}}
    for name, opts in students.items():
        method = {"name": "distill", "teacher": str(teacher), **opts, "student_layers": STUDENT_LAYERS}
        rec["commands"][name] = train_run(name, run_config(j, work / name, method), work)
        record.save(path, rec)
    compare = [a for name in students for a in ("--compare", str(work / name))]
    rec["commands"]["report"] = tunelab(["compress", str(teacher), "--report", *compare, "--threads",
                                         str(THREADS)], work / "report.log")
    report = json.loads((teacher / "compressed" / "tradeoff.json").read_text())
    png = path.with_suffix(".png")
    shutil.copyfile(teacher / "compressed" / "tradeoff.png", png)
    rec.update(report=report, plot=png.name, finished=record.utc_now(), load_after=record.load(), complete=True)
    record.save(path, rec)
    return rec


# ---------------------------------------------------------------------------------------------
# results.md


WHAT = {"base": "the teacher: MiniLM-L6, 6 layers, full fine-tuning",
        "structured-50+retrain": "half the attention heads and FFN neurons removed, retrained",
        "int8-dynamic": "int8 weights and int8 matrix products (activations quantized per batch)",
        f"lowrank-r{LOW_RANK}+retrain": f"every layer-stack Linear as two rank-{LOW_RANK} factors (SVD), retrained",
        "structured-50+retrain+int8-dynamic": "structured 50% + retraining, then int8 dynamic",
        "int8-weight-only": "int8 weights, dequantized to fp32 for each product",
        "magnitude-50+retrain": "50% smallest weights zeroed, retrained with the zeros kept (same shapes)",
        "student-3L-distilled": "teacher's layers 0, 2, 4, distilled from the teacher",
        "student-3L-hard-labels": "the same 3-layer student on the labels alone (control)"}


def speedup(row: dict, base: dict) -> str:
    return f"{base['latency_ms'] / row['latency_ms']:.2f}x / {row['throughput'] / base['throughput']:.2f}x"


def table(report: dict) -> list[str]:
    rows = report["rows"]
    base = rows[0]
    lines = ["| variant | what it is | parameters | weights (MB) | latency b1 (ms) | throughput b32 (ex/s) | "
             "speed-up b1 / b32 | test F1 macro | test accuracy | F1 % of teacher |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sparse = f" ({r['sparsity']:.0%} zeros)" if r.get("sparsity") else ""
        lines.append(f"| {r['variant']} | {WHAT.get(r['variant'], '')} | {r['parameters'] / 1e6:.2f}M{sparse} | "
                     f"{r['file_mb']:.1f} | {r['latency_ms']:.2f} | {r['throughput']:.1f} | {speedup(r, base)} | "
                     f"{r['value']:.4f} | {r['accuracy']:.4f} | {r['retained_percent']:.1f} |")
    return lines


def reading(rec: dict) -> list[str]:
    """What the figures can and cannot say: the test split's resolution, what distillation added over the
    control, why a variant can keep over 100%, and what no variant shrinks."""
    import math

    j, rows = rec["job"], {r["variant"]: r for r in rec["report"]["rows"]}
    base, teacher = rows["base"], rec["commands"]["teacher"]
    n, p = base["test_examples"], base["accuracy"]
    se = math.sqrt(p * (1 - p) / n)
    lines = [f"- Resolution: {n} test articles, one article = {1 / n:.4f} of accuracy; the binomial SE of the "
             f"teacher's accuracy is ± {se:.4f}, so differences under about {2 * se:.3f} are not resolved."]
    distilled, control = rows.get("student-3L-distilled"), rows.get("student-3L-hard-labels")
    if distilled and control:
        d = distilled["accuracy"] - control["accuracy"]
        lines.append(f"- What distillation added: the distilled student's test accuracy minus the hard-label "
                     f"control's = {d:+.4f} ({round(d * n):+d} articles): "
                     + ("not resolved." if abs(d) < 2 * se else "larger than 2 SE (one seed)."))
    if any((r["retained_percent"] or 0) > 100 for r in rows.values()):
        lines.append(f"- Over 100%: the teacher is tested at its best validation checkpoint, step "
                     f"{teacher['best_step']} of {teacher['steps']}; each retrained variant trained "
                     f"{j['retrain_steps']} more steps from it and each student {rec['commands']['student-3L-distilled']['steps']} "
                     "steps from its layers, on the same articles: more training, not a gain from compression.")
    lines.append("- What stays: every variant keeps MiniLM's word embeddings whole (30,522 x 384 = 11.7M of the "
                 "22.7M parameters; pruning and low rank act on the layer stack, int8 on Linear layers), which "
                 "bounds every cut in parameters and megabytes.")
    return lines


def timings(rec: dict) -> str:
    """Wall seconds of every command, in the order they ran."""
    return "; ".join(f"{name} {c['seconds']:.0f} s" for name, c in rec["commands"].items())


def markdown(rec: dict) -> list[str]:
    """results.md's section, from a stored measurement."""
    j, t, report = rec["job"], rec["job"]["teacher"], rec["report"]
    teacher, student = rec["commands"]["teacher"], rec["commands"]["student-3L-distilled"]
    flags = ", ".join(f for f, on in report["flags"].items() if on) or "none of the int8/bf16 flags"
    rows = report["rows"]
    return [
        "## Compression trade-off: MiniLM-L6 on BBC News", MARKER, "",
        f"The teacher: `tunelab train` of builtin:minilm-l6 (full fine-tuning) on builtin:bbc-news, "
        f"{t['limit']} training articles (validation {t['val_fraction']:.0%} and test "
        f"{t['test_fraction']:.0%} of all 2,225 articles, stratified, seed {t['seed']}), max_length "
        f"{t['max_length']}, {t['epochs']} epoch(s) = {teacher['steps']} steps of {t['batch_size']}, AdamW lr "
        f"{t['lr']}, linear schedule, {t['precision']}; the best validation F1 checkpoint "
        f"(step {teacher['best_step']}). Each variant is one `tunelab compress` call; the retrained ones train "
        f"{j['retrain_steps']} steps with the run's own loop and data. The students keep the teacher's layers "
        f"{', '.join(map(str, j['student_layers']))} (`method.student_layers`) and train {student['steps']} "
        f"steps on the same data: distilled with T {j['distill']['temperature']}, alpha "
        f"{j['distill']['alpha']}, and the control with alpha 0 (hard labels only).", "",
        f"Measured {rec['started']} to {rec['finished']} (UTC), load {rec['load_before'][0]:.2f} before and "
        f"{rec['load_after'][0]:.2f} after (the bench's own threads included), on {record.describe_machine(rec['machine'])}; CPU flags: {flags}. "
        f"Every variant measured in one process by `tunelab compress TEACHER --report --compare ... --threads "
        f"{report['threads']}` on the teacher's {rows[0]['test_examples']} test articles: latency = median of "
        "one forward pass over single articles at their real length; throughput = batches of 32; weights = "
        "the model folder's weight files; speed-up against the teacher. Figures: "
        f"`{rec['file']}`." + (" **Smoke run: tiny job, figures mean nothing.**" if rec.get("smoke") else ""), "",
        *table(report), "", *reading(rec), "",
        f"![latency against test F1](out/{rec['plot']})", "",
        "For scale, published reference points: DistilBERT, a 6-layer student of 12-layer BERT, keeps about 97% "
        "of BERT's GLUE score at 60% of its parameters (Sanh et al. 2019, arXiv:1910.01108); PyTorch's dynamic "
        "quantization tutorial reports int8 dynamic BERT about 1.7x faster on MRPC at an unchanged F1.", "",
        f"Wall time of each command (training, compressing and testing included): {timings(rec)}.", ""]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    rec = run(args.smoke)
    print("\n".join(markdown({**rec, "file": "bench/out/compress"})))


if __name__ == "__main__":
    main()
