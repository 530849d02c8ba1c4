"""bench part `augment`: does data.augment help a small training set? A learning curve of MiniLM on BBC News
at 50 / 100 / 200 / 400 training articles, each trained without augmentation and with EDA-edited copies.

The job is examples/bbc-news.yaml (builtin:minilm-l6, full fine-tuning, max_length 128, batch 16, AdamW lr 1e-4,
linear schedule with 6% warmup) with these choices, each for a reason:
- One held-out split for every point: builtin:bbc-news is split once (seed 42, 10% validation, 10% test: the
  223 test articles of the other BBC parts) and written to the work folder; every run reads the training pool
  and the test file, and draws its N training articles from the pool with `data.limit` (stratified, by the
  run's seed). The validation articles stay out of every run.
- Equal steps, not equal epochs: both sides of a point take the same optimizer steps, as many as two epochs
  of the augmented set (N x (1 + copies) records), so the side without augmentation makes 2 x (1 + copies)
  passes over its N articles. At equal epochs the augmented side would get (1 + copies) times the compute,
  and any gain could be the longer training; at equal steps the only difference is whether the extra steps
  see edited copies or the same articles again, which is the question augmentation answers. Same steps also
  means the same learning rate at every step on both sides.
- No checkpoint selection: the last weights are tested (no validation split in the runs). Picking the best of
  several evaluations would favour the side evaluated more often (evaluation follows epochs, which differ).
- Seeds vary the training articles drawn, the head's initial weights, the batch order, the dropout masks
  and the edits (data.augment.seed is null: train.seed); the test articles stay the same. Each seed's two
  sides share their articles, so their difference is paired.
- Augmentation: data.augment.copies 4 of all four EDA edits at rate 0.1, as a user sets it.

Every run is `tunelab.run.train` on a config written like a user's, in one child process (`--measure`, THREADS
torch threads) that runs the points one after another, the two sides of each point next to each other (their
order alternating), so a neighbour's load falls on both alike. Stored as bench/out/augment-<stamp>.json
(+ .png, the curve); `markdown()` renders results.md's section from that file alone.

    python bench/run.py --part augment            # the measurement (about 16 minutes on 2 idle cores)
    python bench/run.py --part augment --smoke    # a tiny job that checks the part end to end
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
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

THREADS = 2  # the machine's 2 cores
# 3 seeds at 50 and 100 articles, 2 at 200 and 400: a point's runs cost in proportion to its articles, and the
# spread over seeds is widest where the few articles drawn matter most. On 2 idle cores (AMD EPYC, AVX-512 bf16)
# MiniLM took 85 s for 250 steps of 16 x 128 tokens (6,000 tokens/s), so the 20 runs' 2,080 steps take about 12
# minutes, about 16 with model loads and test passes; the first measurement took 37 because the machine was
# shared (load up to 6).
JOB = dict(points=[{"n": 50, "seeds": [42, 1, 2]}, {"n": 100, "seeds": [42, 1, 2]},
                   {"n": 200, "seeds": [42, 1]}, {"n": 400, "seeds": [42, 1]}],
           copies=4, rate=0.1, edits=["synonym", "insert", "swap", "delete"], augmented_epochs=2,
           max_length=128, batch_size=16, lr=1.0e-4, weight_decay=0.01, warmup_ratio=0.06, max_grad_norm=1.0,
           split_seed=42, val_fraction=0.1, test_fraction=0.1)
SMOKE_JOB = dict(points=[{"n": 10, "seeds": [42]}, {"n": 20, "seeds": [42]}], copies=2, max_length=32,
                 val_fraction=0.02, test_fraction=0.02)


def job(smoke: bool, fast_bf16: bool) -> dict:
    """The part's settings, as stored with its figures: bf16 where the CPU has it natively (tunelab's `auto`,
    written out), else fp32."""
    return {**JOB, **(SMOKE_JOB if smoke else {}), "precision": "bf16" if fast_bf16 else "fp32",
            "threads": THREADS}


def steps_of(n: int, j: dict) -> int:
    """Optimizer steps of both sides of a point: `augmented_epochs` passes over N x (1 + copies) records."""
    return j["augmented_epochs"] * math.ceil(n * (1 + j["copies"]) / j["batch_size"])


def run(smoke: bool = False) -> dict:
    """The whole part; stored as bench/out/augment[-smoke]-<stamp>.json (+ .png), returned."""
    machine = record.machine()
    j = job(smoke, machine["fast_bf16"])
    work = HERE / "out" / ("augment-smoke-work" if smoke else "augment-work")
    shutil.rmtree(work, ignore_errors=True)  # the part's own scratch folder: every run starts from nothing
    work.mkdir(parents=True)
    path = record.new_path("augment", smoke)
    rec = {"part": "augment", "smoke": smoke, "job": j, "started": record.utc_now(), "load_before": record.load(),
           "machine": machine, "cpu_flags": cpu_flags(), "complete": False}
    rec["data"] = write_splits(work, j)
    record.save(path, rec)
    rec["runs"] = measure_child(work, j)
    check_pairs(rec["runs"])
    png = path.with_suffix(".png")
    plot_curve(rec, png)
    rec.update(plot=png.name, finished=record.utc_now(), load_after=record.load(), complete=True)
    record.save(path, rec)
    return rec


def write_splits(work: Path, j: dict) -> dict:
    """builtin:bbc-news split once (tunelab's stratified seeded carve, as every BBC part splits it): the training
    pool and the test articles as JSONL in the work folder; what they hold."""
    from tunelab.config import config_from_dict
    from tunelab.tasks.classification import split_records

    cfg = config_from_dict({"task": "classification",
                            "data": {"train": "builtin:bbc-news", "val_fraction": j["val_fraction"],
                                     "test_fraction": j["test_fraction"]}, "train": {"seed": j["split_seed"]}})
    splits = split_records(cfg, lambda _: None)
    facts = {}
    for name, file in (("train", "pool.jsonl"), ("test", "test.jsonl")):
        records = [{"text": r["text"], "label": r["label"]} for r in splits[name][0]]
        (work / file).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        facts[name] = {"file": file, "records": len(records),
                       "labels": dict(sorted(_count(r["label"] for r in records).items()))}
    facts["validation_held_out"] = len(splits["validation"][0])
    return facts


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def run_config(j: dict, work: Path, n: int, seed: int, augmented: bool) -> dict:
    """A run config (as YAML data): examples/bbc-news.yaml's job on the pool and test files, N training
    articles, the point's steps, with or without data.augment."""
    augment = {"copies": j["copies"], "rate": j["rate"], "edits": j["edits"]} if augmented else {"copies": 0}
    return {"task": "classification",
            "model": {"name": "builtin:minilm-l6", "max_length": j["max_length"]},
            "data": {"train": str(work / "pool.jsonl"), "test": str(work / "test.jsonl"), "val_fraction": 0.0,
                     "limit": n, "augment": augment},
            "method": {"name": "full"},
            "train": {"max_steps": steps_of(n, j), "batch_size": j["batch_size"], "lr": j["lr"],
                      "optimizer": "adamw", "weight_decay": j["weight_decay"], "scheduler": "linear",
                      "warmup_ratio": j["warmup_ratio"], "max_grad_norm": j["max_grad_norm"], "seed": seed,
                      "precision": j["precision"], "early_stopping": {"metric": "f1_macro", "patience": None}},
            "output_dir": str(work / "runs" / f"n{n}-seed{seed}-{'aug' if augmented else 'none'}")}


def measure_child(work: Path, j: dict) -> list[dict]:
    """`measure` in a fresh process; its runs, one JSON line each in WORK/runs.jsonl as they finish."""
    cmd = [sys.executable, __file__, "--measure", str(work), json.dumps(j)]
    total = sum(len(p["seeds"]) for p in j["points"]) * 2
    print(f"$ augment: {total} training runs in {work}", flush=True)
    log_path = work / "measure.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent, env=env).returncode
    if code != 0:
        raise SystemExit(f"augment measurement failed (exit {code}); {log_path}:\n{log_path.read_text()[-3000:]}")
    return [json.loads(line) for line in (work / "runs.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# The measurement (in the child)


def measure(work: str, j: dict) -> None:
    """Every point's runs, the two sides of a (size, seed) next to each other, order alternating."""
    import torch

    torch.set_num_threads(THREADS)
    work_dir = Path(work)
    (work_dir / "logs").mkdir(exist_ok=True)
    order = 0
    for seed in dict.fromkeys(s for p in j["points"] for s in p["seeds"]):
        for point in j["points"]:
            if seed not in point["seeds"]:
                continue
            for augmented in ((False, True) if order % 2 == 0 else (True, False)):
                result = train_one(j, work_dir, point["n"], seed, augmented)
                with open(work_dir / "runs.jsonl", "a") as out:
                    out.write(json.dumps(result) + "\n")
                print(f"n {point['n']} seed {seed} {'augmented' if augmented else 'plain'}: accuracy "
                      f"{result['accuracy']:.4f}, {result['train_examples']} training examples, "
                      f"{result['wall_seconds']:.0f} s", flush=True)
            order += 1


def train_one(j: dict, work: Path, n: int, seed: int, augmented: bool) -> dict:
    """One `tunelab.run.train` of the point: its test figures, what it trained on and what augmentation said."""
    from tunelab.config import config_from_dict
    from tunelab.run import make_job, train

    cfg = run_config(j, work, n, seed, augmented)
    lines: list[str] = []
    kept = {}

    def keep_job(c, device, log):  # the registered task's job, kept to read what it trained on
        kept["job"] = make_job(c, device, log)
        return kept["job"]

    t0 = time.perf_counter()
    run_dir = train(config_from_dict(cfg), overwrite=True, show_progress=False, log=lines.append,
                    job_factory=keep_job)
    wall = time.perf_counter() - t0
    name = Path(cfg["output_dir"]).name
    (work / "logs" / f"{name}.log").write_text("\n".join(lines) + "\n")
    ev = json.loads((run_dir / "eval.json").read_text())
    examples = kept["job"].examples
    test = examples["test"]
    probs = kept["job"]._test_probs
    return {"n": n, "seed": seed, "augmented": augmented, "steps": ev["steps"], "train_seconds": ev["train_seconds"],
            "wall_seconds": round(wall, 1), "train_examples": len(examples["train"]), "test_examples": len(test),
            "accuracy": ev["test"]["accuracy"], "f1_macro": ev["test"]["f1_macro"],
            "augment_log": [line for line in lines if line.startswith("data.augment")],
            "added": added_of(lines),
            "test_correct": [int(p == y) for p, y in zip(probs.argmax(1).tolist(), test.labels)]}


def added_of(lines: list[str]) -> dict[str, int]:
    """Edited copies added per edit, read from data.augment's log line ({} without augmentation)."""
    for line in lines:
        m = re.match(r"data\.augment: added \d+ edited copies of \d+ training records \(([^)]*)\)", line)
        if m:
            return {k: int(v) for k, v in re.findall(r"(synonym|insert|swap|delete) (\d+)", m.group(1))}
    return {}


def check_pairs(runs: list[dict]) -> None:
    """Fail loudly unless both sides of every point took the same steps on the same test articles, the plain
    side trained on its N articles and the augmented side on them plus the copies the log counted."""
    for r in runs:
        twin = next(o for o in runs if (o["n"], o["seed"]) == (r["n"], r["seed"]) and o["augmented"] != r["augmented"])
        if (r["steps"], r["test_examples"]) != (twin["steps"], twin["test_examples"]):
            raise SystemExit(f"the sides of n={r['n']} seed={r['seed']} differ in steps or test articles: "
                             f"{r['steps']}/{r['test_examples']} vs {twin['steps']}/{twin['test_examples']}")
        want = r["n"] + sum(r["added"].values())
        if r["train_examples"] != want or r["augmented"] != bool(r["added"]):
            raise SystemExit(f"n={r['n']} seed={r['seed']} augmented={r['augmented']}: trained on "
                             f"{r['train_examples']} examples, expected {want} ({r['augment_log']})")


# ---------------------------------------------------------------------------------------------
# The figures: per point mean and range over seeds, and the paired difference


def sides(runs: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(plain runs, augmented runs) of a point, paired by seed, the seeds in the order they were measured."""
    seeds = list(dict.fromkeys(r["seed"] for r in runs if r["n"] == n))
    plain = sorted((r for r in runs if r["n"] == n and not r["augmented"]), key=lambda r: seeds.index(r["seed"]))
    aug = sorted((r for r in runs if r["n"] == n and r["augmented"]), key=lambda r: seeds.index(r["seed"]))
    return plain, aug


def article_se(plain: list[dict], aug: list[dict]) -> float:
    """SE of the accuracy difference from the test articles' sampling: per article the mean over seeds of
    (right with augmentation - right without), its standard deviation over sqrt(articles)."""
    d = [statistics.fmean(a["test_correct"][i] - p["test_correct"][i] for p, a in zip(plain, aug))
         for i in range(len(plain[0]["test_correct"]))]
    return statistics.stdev(d) / math.sqrt(len(d))


def mean_range(values: list[float], fmt: str = ".4f") -> str:
    """Mean (min-max) of a point's seeds; the value alone for one seed or one value."""
    if len(set(values)) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(rec: dict) -> list[str]:
    runs, j = rec["runs"], rec["job"]
    lines = ["| training articles | seeds | steps (both sides) | examples with augmentation | test accuracy: plain "
             "| test accuracy: augmented | difference (per seed) | ± SE (articles) | macro-F1: plain | macro-F1: "
             "augmented | difference |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in j["points"]:
        plain, aug = sides(runs, p["n"])
        acc = [a["accuracy"] - b["accuracy"] for b, a in zip(plain, aug)]
        f1 = [a["f1_macro"] - b["f1_macro"] for b, a in zip(plain, aug)]
        lines.append(
            f"| {p['n']} | {len(plain)} | {plain[0]['steps']} "
            f"| {mean_range([r['train_examples'] for r in aug], '.0f')} "
            f"| {mean_range([r['accuracy'] for r in plain])} | {mean_range([r['accuracy'] for r in aug])} "
            f"| {statistics.fmean(acc):+.4f} ({', '.join(f'{d:+.3f}' for d in acc)}) | {article_se(plain, aug):.4f} "
            f"| {mean_range([r['f1_macro'] for r in plain])} | {mean_range([r['f1_macro'] for r in aug])} "
            f"| {statistics.fmean(f1):+.4f} |")
    return lines


def reading(rec: dict) -> list[str]:
    """What the curve can and cannot say, point by point."""
    out = []
    for p in rec["job"]["points"]:
        plain, aug = sides(rec["runs"], p["n"])
        diffs = [a["accuracy"] - b["accuracy"] for b, a in zip(plain, aug)]
        d, se = statistics.fmean(diffs), article_se(plain, aug)
        same_sign = all(x > 0 for x in diffs) or all(x < 0 for x in diffs)
        if len(diffs) < 3:  # two seeds agree in sign half the time by chance alone
            verdict = "too few seeds to call either way"
        elif same_sign and abs(d) > 2 * se:
            verdict = "resolved: every seed moved the same way and the mean is over 2 SE"
        else:
            verdict = "not resolved: no claim either way"
        out.append(f"- {p['n']} articles: augmentation {'+' if d >= 0 else '-'}{abs(d) * 100:.1f} points of test "
                   f"accuracy over {len(diffs)} seed(s), {verdict}.")
    return out


def plot_curve(rec: dict, png: Path) -> None:
    """Test accuracy against training articles, both sides: the mean over seeds, the seeds' range as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [p["n"] for p in rec["job"]["points"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for augmented, label in ((False, "plain"), (True, f"+ {rec['job']['copies']} EDA copies per article")):
        values = [[r["accuracy"] for r in sides(rec["runs"], n)[1 if augmented else 0]] for n in ns]
        means = [statistics.fmean(v) for v in values]
        err = [[m - min(v) for m, v in zip(means, values)], [max(v) - m for m, v in zip(means, values)]]
        ax.errorbar(ns, means, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()  # the log axis's own 6x10^1 ... between the sizes
    ax.set(xlabel="training articles", ylabel="test accuracy (223 articles)" if not rec.get("smoke") else
           "test accuracy", title="MiniLM on BBC News: same steps with and without augmentation")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def markdown(rec: dict) -> list[str]:
    """results.md's section, from a stored measurement."""
    j, data, runs = rec["job"], rec["data"], rec["runs"]
    aug = [r for r in runs if r["augmented"]]
    added = {k: sum(r["added"].get(k, 0) for r in aug) for k in j["edits"]}
    asked = sum(r["n"] * j["copies"] for r in aug)
    wall = sum(r["wall_seconds"] for r in runs)
    return [
        "## Augmentation: a learning curve on BBC News", MARKER, "",
        f"MiniLM-L6 full fine-tuning as examples/bbc-news.yaml (max_length {j['max_length']}, batch "
        f"{j['batch_size']}, AdamW lr {j['lr']}, linear schedule, warmup {j['warmup_ratio']}, {j['precision']}) on N "
        f"training articles drawn by each seed (`data.limit`, stratified) from a pool of {data['train']['records']:,}; "
        f"tested on the same {data['test']['records']} articles every time (builtin:bbc-news split once with seed "
        f"{j['split_seed']}; its {data['validation_held_out']} validation articles are used by no run). "
        f"Augmented: `data.augment.copies: {j['copies']}`, rate {j['rate']}, edits {', '.join(j['edits'])}. "
        f"Both sides of a point take the same optimizer steps, {j['augmented_epochs']} epochs of the augmented "
        f"set (so the plain side passes {j['augmented_epochs'] * (1 + j['copies'])} times over its articles): "
        "at equal epochs the augmented side would train longer and a gain could be that. The last weights are "
        "tested (no checkpoint chosen by validation, which would favour the side evaluated more often). Seeds "
        "vary the articles drawn, the head's initial weights, the batch order, dropout and the edits; both "
        "sides of a seed train on the same articles.", "",
        f"Measured {rec['started']} to {rec['finished']} (UTC), load {rec['load_before'][0]:.2f} before and "
        f"{rec['load_after'][0]:.2f} after, on {record.describe_machine(rec['machine'])}; CPU flags: "
        f"{flags_text(rec['cpu_flags'])}. Figures: `{rec['file']}`."
        + (" **Smoke run: tiny job, figures mean nothing.**" if rec.get("smoke") else ""), "",
        *table(rec), "",
        "Cells: mean over the seeds (range). Difference: augmented - plain, paired by seed. SE (articles): the "
        "part of the difference's uncertainty that comes from which test articles were drawn (per article, the "
        "mean over seeds of right-with minus right-without); the spread over seeds shows the training's.", "",
        *reading(rec), "",
        f"![test accuracy against training articles](out/{rec['plot']})", "",
        f"Copies: {sum(added.values()):,} of the {asked:,} asked for were added "
        f"({', '.join(f'{k} {v:,}' for k, v in added.items())}); the rest came out equal to their article or to an "
        f"earlier copy and were not added (tunelab.data.augment). Wall time of the {len(runs)} runs: "
        f"{wall / 60:.1f} minutes.", ""]


def flags_text(flags: dict[str, bool]) -> str:
    return ", ".join(f for f, on in flags.items() if on) or "none of " + ", ".join(flags)


def cpu_flags() -> dict:
    """Which of the flags that decide bf16 / int8 speed the CPU has (the compress report's reader)."""
    from tunelab.compress.report import cpu_flags as read

    return read()["flags"]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--measure", nargs=2, metavar=("WORK", "JOB_JSON"), help="the child: train every point")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.measure:
        measure(args.measure[0], json.loads(args.measure[1]))
        return
    rec = run(args.smoke)
    print("\n".join(markdown({**rec, "file": "bench/out/augment"})))


if __name__ == "__main__":
    main()
