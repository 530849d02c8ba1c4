"""bench part `explain`: how faithful each attribution method is on the BBC News MiniLM run, and what one
explanation costs on this CPU.

1. The run: `tunelab train` of examples/bbc-news.yaml (builtin:minilm-l6, full fine-tuning, 600 training
   articles, 2 epochs, max_length 128, seed 42; the test split is 10% of all 2,225 articles) in a child
   process, in a fresh work folder (bench/out/explain-work/, smoke: explain-smoke-work/).
2. In a second child (`--measure RUN_DIR`, THREADS torch threads): the run's first N_TEXTS test articles
   (`tunelab.explain.faithfulness.test_texts`, what `tunelab explain RUN --evaluate` takes), each explained
   by every method of tunelab.explain.METHODS with the settings in EVAL, interleaved (per article, the methods
   in turn, the order reversed every other article, so a neighbour's load falls on every method alike). Each
   explanation is timed alone (`explain_any`, what the command times); its deletion curve and the article's
   random-deletion curve come from tunelab.explain.faithfulness with the command's seeds, so the mean AOPC
   per method is the figure `tunelab explain RUN --evaluate -n N_TEXTS` prints. The per-article figures give
   medians, paired differences with their standard errors, and the mean curves (plotted).
3. --smoke also runs that command on the smoke run and fails unless its AOPCs equal the part's.

Stored as bench/out/explain-<stamp>.json (+ .png); `markdown()` renders results.md's section from that
file alone.

    python bench/run.py --part explain            # the measurement (about 15 minutes on 2 idle cores)
    python bench/run.py --part explain --smoke    # a tiny job that checks the part end to end
"""
from __future__ import annotations

import json
import math
import os
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

THREADS = 2  # torch threads of the explanations: the machine's 2 cores
# examples/bbc-news.yaml, as a user trains it (about 3 minutes on 2 idle cores)
RUN = dict(limit=600, max_length=128, epochs=2, batch_size=16, lr=1.0e-4, weight_decay=0.01, warmup_ratio=0.06,
           max_grad_norm=1.0, seed=42, val_fraction=0.1, test_fraction=0.1)
# tunelab explain's defaults on 80 articles. Measured on 2 idle cores (2026-11-26, AVX-512 + AMX): an article
# takes about 10 s for the five methods and its curves at 128 tokens (LIME and KernelSHAP 200 forward passes
# each, occlusion one per token, IG 50 forward + backward) and training 1 minute, so the part takes about 15
# minutes (a first run on 24 articles took 5).
EVAL = dict(n=80, steps=50, window=3, samples=200, seed=0)
SMOKE_RUN = dict(limit=48, max_length=32, epochs=1, batch_size=8, val_fraction=0.02, test_fraction=0.02)
SMOKE_EVAL = dict(n=3, steps=8, window=3, samples=24, seed=0)


def job(smoke: bool, fast_bf16: bool) -> dict:
    """The part's settings, as stored with its figures: training in bf16 where the CPU has it natively
    (tunelab's `auto`, written out), else fp32; explanations always in the run's saved fp32 weights."""
    from tunelab.explain import METHODS

    run = {**RUN, **(SMOKE_RUN if smoke else {}), "precision": "bf16" if fast_bf16 else "fp32"}
    return {"run": run, "eval": {**(SMOKE_EVAL if smoke else EVAL), "methods": list(METHODS)},
            "threads": THREADS}


def run_config(j: dict, out_dir: Path) -> dict:
    """examples/bbc-news.yaml with the part's sizes (the compress part's config builder, full fine-tuning)."""
    import tradeoff

    return tradeoff.run_config({"teacher": j["run"]}, out_dir, {"name": "full"})


def run(smoke: bool = False) -> dict:
    """The whole part; stored as bench/out/explain[-smoke]-<stamp>.json (+ .png), returned."""
    import tradeoff

    machine = record.machine()
    j = job(smoke, machine["fast_bf16"])
    work = HERE / "out" / ("explain-smoke-work" if smoke else "explain-work")
    shutil.rmtree(work, ignore_errors=True)  # the part's own scratch folder: every run starts from nothing
    work.mkdir(parents=True)
    path = record.new_path("explain", smoke)
    rec = {"part": "explain", "smoke": smoke, "job": j, "started": record.utc_now(), "load_before": record.load(),
           "machine": machine, "cpu_flags": cpu_flags()["flags"], "complete": False}
    run_dir = work / "bbc-news"
    rec["train"] = tradeoff.train_run("bbc-news", run_config(j, run_dir), work)
    record.save(path, rec)
    rec["measure"] = measure_child(run_dir, j["eval"], work / "measure.log")
    record.save(path, rec)
    if smoke:
        rec["cli_check"] = cli_check(run_dir, j["eval"], rec["measure"], work)
    png = path.with_suffix(".png")
    plot_curves(rec["measure"], png)
    rec.update(plot=png.name, finished=record.utc_now(), load_after=record.load(), complete=True)
    record.save(path, rec)
    return rec


def measure_child(run_dir: Path, ev: dict, log_path: Path) -> dict:
    """`measure` in a fresh process (its own threads and memory); the result is its last line of output."""
    cmd = [sys.executable, __file__, "--measure", str(run_dir), json.dumps(ev)]
    print(f"$ explain {len(ev['methods'])} methods x {ev['n']} articles of {run_dir}", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    with open(log_path, "w") as log:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=HERE.parent, env=env)
    if out.returncode != 0:
        raise SystemExit(f"explain measurement failed (exit {out.returncode}); {log_path}:\n"
                         f"{log_path.read_text()[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  {result['wall_seconds']:.0f} s", flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# The measurement (in the child)


def measure(run_dir: str, ev: dict) -> dict:
    """Every method on each of the run's first n test articles: per article and method the AOPC, the seconds
    of the explanation and IG's convergence delta; per article the random-deletion AOPC; the mean curves."""
    import torch

    from tunelab.explain import faithfulness as F
    from tunelab.runs import load_run

    torch.set_num_threads(THREADS)
    run = load_run(run_dir)
    texts, source = F.test_texts(run, None, ev["n"])
    labels = [r.get(run.cfg.data.label_field) for r in _test_records(run)[:len(texts)]]
    methods = ev["methods"]
    per = {m: {"aopc": [], "seconds": [], "delta": [], "curves": [], "settings": None} for m in methods}
    articles = []
    for i, text in enumerate(texts):
        enc, done = _encode(run, text), {}
        for method in (methods if i % 2 == 0 else methods[::-1]):  # A B C, C B A: drift hits every method
            seconds, expl = _timed(F.explain_any, run, text, method, **settings_of(method, ev))
            done[method] = seconds, expl, F.deletion_curve(run, enc, F.position_scores(enc, expl), expl.target,
                                                           F.FRACTIONS)
        target = done[methods[0]][1].target  # every method explains the predicted topic
        reference = F.random_curve(run, enc, target, F.FRACTIONS, seed=ev["seed"] + i)  # the command's seed
        for method, (seconds, expl, curve) in done.items():
            p = per[method]
            p["aopc"].append(F.aopc(curve))
            p["seconds"].append(seconds)
            p["curves"].append(curve)
            p["settings"] = p["settings"] or expl.settings
            if expl.delta is not None:
                p["delta"].append(expl.delta)
        articles.append({"tokens": len(enc.ids), "target": target, "label": labels[i],
                         "probability": reference[0], "random_aopc": F.aopc(reference), "random_curve": reference})
        print(f"article {i + 1}/{len(texts)}: {len(enc.ids)} tokens", file=sys.stderr, flush=True)
    for p in per.values():
        p["curve"] = _mean_curve(p.pop("curves"))
    return {"data": source, "n": len(texts), "fractions": list(F.FRACTIONS), "random_draws": F.RANDOM_DRAWS,
            "threads": torch.get_num_threads(), "articles": articles, "methods": per,
            "random_curve": _mean_curve([a["random_curve"] for a in articles]), "peak_rss_mb": resource_mb()}


def settings_of(method: str, ev: dict) -> dict:
    """The part's settings as the command passes them (attention takes none)."""
    return {} if method == "attention" else {k: ev[k] for k in ("steps", "window", "samples", "seed")}


def _encode(run, text: str):
    from tunelab.explain.attribute import encode

    return encode(run, text)


def _test_records(run) -> list[dict]:
    from tunelab.tasks.classification import split_records

    return split_records(run.cfg, lambda _: None)["test"][0]


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [sum(c[j] for c in curves) / len(curves) for j in range(len(curves[0]))]


def resource_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# The smoke check against the command, and the plot


def cli_check(run_dir: Path, ev: dict, measured: dict, work: Path) -> dict:
    """`tunelab explain RUN --evaluate` with the part's settings: its AOPCs must equal the part's (same
    functions, same seeds), so the section's figures are the command's."""
    import tradeoff

    args = ["explain", str(run_dir), "--evaluate", "-n", str(ev["n"]), "--methods", ",".join(ev["methods"]),
            "--steps", str(ev["steps"]), "--window", str(ev["window"]), "--samples", str(ev["samples"]),
            "--seed", str(ev["seed"])]
    done = tradeoff.tunelab(args, work / "cli-check.log")
    from tunelab.explain.faithfulness import result_path

    rows = json.loads(result_path(run_dir, None).read_text())["methods"]
    diffs = {r["method"]: abs(r["aopc"] - statistics.fmean(measured["methods"][r["method"]]["aopc"]))
             for r in rows}
    diffs["random"] = abs(rows[0]["random_aopc"] - statistics.fmean(a["random_aopc"] for a in measured["articles"]))
    if max(diffs.values()) > 1e-4:
        raise SystemExit(f"the part's AOPCs differ from `tunelab explain --evaluate`'s: {diffs}")
    return {**done, "max_abs_diff": max(diffs.values())}


def plot_curves(measured: dict, png: Path) -> None:
    """The mean deletion curve of every method and of random deletion (the AOPC is the area above each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [100 * f for f in measured["fractions"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for method, m in measured["methods"].items():
        ax.plot(x, m["curve"], marker="o", label=method)
    ax.plot(x, measured["random_curve"], color="black", linestyle="--", label="random")
    ax.set(xlabel="tokens deleted (%, top-attributed first)", ylabel="probability of the predicted topic",
           title=f"Deletion curves, MiniLM on BBC News (mean of {measured['n']} test articles)", ylim=(0, 1.02))
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# results.md


def paired(values: list[float], reference: list[float]) -> tuple[float, float]:
    """Mean of the per-article differences and its standard error (articles as the sampling unit)."""
    d = [a - b for a, b in zip(values, reference)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return statistics.fmean(d), se


def table(measured: dict) -> list[str]:
    rand = [a["random_aopc"] for a in measured["articles"]]
    lines = ["| method | settings | AOPC | random AOPC | difference ± SE | articles above random | "
             "s / explanation: median (min-max) |", "|---|---|---:|---:|---:|---:|---:|"]
    for method, m in measured["methods"].items():
        diff, se = paired(m["aopc"], rand)
        above = sum(a > r for a, r in zip(m["aopc"], rand))
        s = m["seconds"]
        lines.append(f"| {method} | {settings_text(m['settings'])} | {statistics.fmean(m['aopc']):.4f} | "
                     f"{statistics.fmean(rand):.4f} | {diff:+.4f} ± {se:.4f} | {above}/{len(rand)} | "
                     f"{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f}) |")
    return lines


def settings_text(settings: dict) -> str:
    """A method's own settings in a few words (the baseline is stated once, under the table)."""
    if "scores" in settings:  # attention: what its scores are, not settings
        return settings["scores"].split(" (")[0]
    facts = ("method", "baseline", "features", "truncated_at")  # said once under the table, or per article
    own = {k: v for k, v in settings.items() if k not in facts}
    return ", ".join(f"{k} {v}" for k, v in own.items()) or "-"


def reading(measured: dict) -> list[str]:
    """What the figures can and cannot say: the best method and whether its lead is resolved, IG's deltas,
    how often the model was right on the explained articles."""
    rand = [a["random_aopc"] for a in measured["articles"]]
    ranked = sorted(measured["methods"], key=lambda m: -statistics.fmean(measured["methods"][m]["aopc"]))
    best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
    lines = []
    if second:
        d, se = paired(measured["methods"][best]["aopc"], measured["methods"][second]["aopc"])
        lines.append(f"- Highest AOPC: {best}; its lead over {second} is {d:+.4f} ± {se:.4f} (paired over the "
                     f"articles): " + ("resolved (over 2 SE)." if abs(d) > 2 * se else "not resolved (under 2 SE)."))
    worst = [m for m in ranked if paired(measured["methods"][m]["aopc"], rand)[0]
             <= 2 * paired(measured["methods"][m]["aopc"], rand)[1]]
    lines.append("- Not resolved above random deletion: " + (", ".join(worst) if worst else "none") + ".")
    deltas = measured["methods"].get("ig", {}).get("delta")
    if deltas:
        lines.append(f"- Integrated gradients' convergence delta |sum of attributions - (F(x) - F(baseline))|: "
                     f"median {statistics.median(abs(x) for x in deltas):.2g}, largest "
                     f"{max(abs(x) for x in deltas):.2g} (F = probability of the predicted topic).")
    arts = measured["articles"]
    right = sum(a["target"] == a["label"] for a in arts)
    tokens = [a["tokens"] for a in arts]
    lines.append(f"- The explained articles: {len(arts)}, {right} predicted right; {min(tokens)}-{max(tokens)} "
                 f"tokens (median {statistics.median(tokens):.0f}) with [CLS]/[SEP]; the predicted topic's "
                 f"probability before any deletion: median {statistics.median(a['probability'] for a in arts):.3f}.")
    return lines


def markdown(rec: dict) -> list[str]:
    """results.md's section, from a stored measurement."""
    j, r, ev, m = rec["job"], rec["job"]["run"], rec["job"]["eval"], rec["measure"]
    train = rec["train"]
    return [
        "## Explanations: faithfulness on the BBC News MiniLM run", MARKER, "",
        f"The run: `tunelab train` of builtin:minilm-l6 (full fine-tuning) on builtin:bbc-news as "
        f"examples/bbc-news.yaml: {r['limit']} training articles, max_length {r['max_length']}, {r['epochs']} "
        f"epoch(s) = {train['steps']} steps of {r['batch_size']}, {r['precision']}, seed {r['seed']}; test F1 "
        f"macro {train['test']['f1_macro']:.4f}. Explained: its first {m['n']} test articles ({m['data']}), "
        f"the predicted topic, every method on every article, methods interleaved, {m['threads']} torch "
        "threads, one explanation at a time (the time of `explain_any`, as `tunelab explain` takes it).", "",
        f"Deletion: the top-attributed {', '.join(f'{f:.0%}' for f in m['fractions'])} of an article's tokens "
        "removed from the sequence ([CLS]/[SEP] kept); AOPC = mean drop of the predicted topic's probability "
        f"over those points; random = {m['random_draws']} seeded random orders per article, the same for every "
        "method. Baseline of IG, occlusion, LIME and SHAP: the pad token in place of the attributed tokens "
        "(LIME and SHAP perturb whole words). The mean AOPCs are what `tunelab explain RUN --evaluate -n "
        f"{m['n']} --steps {ev['steps']} --window {ev['window']} --samples {ev['samples']}` prints.", "",
        f"Measured {rec['started']} to {rec['finished']} (UTC), load {rec['load_before'][0]:.2f} before and "
        f"{rec['load_after'][0]:.2f} after (the bench's own threads included), on {record.describe_machine(rec['machine'])}; CPU flags: "
        f"{flags_text(rec['cpu_flags'])}. Figures: `{rec['file']}`."
        + (" **Smoke run: tiny job, figures mean nothing.**" if rec.get("smoke") else ""), "",
        *table(m), "", *reading(m), "",
        f"![mean deletion curves](out/{rec['plot']})", "",
        f"Wall time: training {train['seconds']:.0f} s, explanations and curves {m['wall_seconds']:.0f} s "
        f"(peak RSS {m['peak_rss_mb']:.0f} MB).", ""]


def flags_text(flags: dict[str, bool]) -> str:
    return ", ".join(f for f, on in flags.items() if on) or "none of " + ", ".join(flags)


def cpu_flags() -> dict:
    """Which of the flags that decide int8 / bf16 speed the CPU has (the compress report's reader)."""
    from tunelab.compress.report import cpu_flags as read

    return read()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--measure", nargs=2, metavar=("RUN_DIR", "EVAL_JSON"), help="the child: measure and print JSON")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], json.loads(args.measure[1]))))
        return
    rec = run(args.smoke)
    print("\n".join(markdown({**rec, "file": "bench/out/explain"})))


if __name__ == "__main__":
    main()
