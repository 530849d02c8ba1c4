"""Checkpoint part of `make bench`: what writing checkpoints costs, in seconds, in megabytes and as a share
of a run's training time.

Two jobs, each in its own child process per run: MiniLM-L6 full fine-tuning on a BBC News subset (two epochs:
two evaluations) and SmolLM2-135M-Instruct LoRA on ShareGPT (LoRA settings of the lm part, evaluated twice).
Each job runs with `train.checkpoint_every` at its default (null: a checkpoint after each evaluation and at the
last step) and at 0 (no checkpoint), interleaved over the repeats like every part. Inside the child:

- `Checkpoints.save` (writing the files, fsync, the rename, pruning older checkpoints) is timed, and the new
  folder's size on disk (allocated blocks, as `du` counts) and its files' sizes are read right after it;
- the loop's `_checkpoint` is timed too: the save plus gathering the snapshot (copies of the trainable weights
  and the optimizer state, the random generators);
- `train_loop` as a whole is timed: steps, evaluations and checkpoints. The overhead of checkpointing is the
  difference of that time between the two settings, as a % of the time without checkpoints (medians), beside
  the direct figure: the checkpoints' own seconds over the loop's seconds in the same run.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import record
from run import MARKER, capture, peak_rss_mb, resolved_precision  # bench/ is on sys.path when run.py runs

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "checkpoint"
SMOKE = os.environ.get("BENCH_SMOKE") == "1"

# MiniLM: 120 training articles x 2 epochs = 30 steps of 8, one evaluation per epoch (on 2% of the data set:
# about 45 articles), so a run with the default writes 2 checkpoints (the second at the last step). Tested on
# nothing (test_fraction 0): the part measures training, and a test pass would only lengthen each run.
MINILM = dict(model="builtin:minilm-l6", train="builtin:bbc-news", method="full", limit=120, max_length=128,
              epochs=2, batch_size=8, lr=1.0e-4, warmup_ratio=0.1, val_fraction=0.02, test_fraction=0.0,
              seed=42, precision="auto")
# SmolLM2 LoRA as in the lm part (r, alpha, dropout, target modules, lr), 30 steps of 2 evaluated every 15:
# two evaluations, two checkpoints; the pool is large enough that one epoch holds the 30 steps.
LM = dict(model="builtin:smollm2-135m-instruct", train="builtin:sharegpt", method="lora", limit=160,
          max_length=128, max_steps=30, eval_every=15, batch_size=2, lr=1.0e-3, r=16, alpha=32, dropout=0.05,
          target_modules="all-linear", warmup_ratio=0.1, val_fraction=0.05, test_fraction=0.0, seed=42,
          precision="auto")
if SMOKE:
    MINILM.update(limit=24, max_length=32, batch_size=4)
    LM.update(limit=16, max_length=64, max_steps=4, eval_every=2, val_fraction=0.15)
JOBS = {"minilm": MINILM, "lm": LM}
NAMES = {"minilm": "MiniLM-L6 full fine-tuning", "lm": "SmolLM2-135M LoRA"}
SETTINGS = {"default": None, "off": 0}  # side suffix -> train.checkpoint_every


def job_config(job: str, every: int | None, out_dir: Path):
    """The run config of one job with `train.checkpoint_every: every`."""
    from tunelab.config import config_from_dict

    j = JOBS[job]
    method = {"name": j["method"]}
    if j["method"] == "lora":
        method.update(r=j["r"], alpha=j["alpha"], dropout=j["dropout"], target_modules=j["target_modules"])
    train = {"batch_size": j["batch_size"], "lr": j["lr"], "warmup_ratio": j["warmup_ratio"], "seed": j["seed"],
             "precision": j["precision"], "log_every": 1, "checkpoint_every": every, "keep_checkpoints": 1,
             "early_stopping": {"patience": None}}
    train.update({k: j[k] for k in ("epochs", "max_steps", "eval_every") if k in j})
    extra = {"generate": {"samples_in_eval": 0}} if job == "lm" else {}
    return config_from_dict({
        "task": "causal_lm" if job == "lm" else "classification",
        "model": {"name": j["model"], "max_length": j["max_length"]},
        "data": {"train": j["train"], "limit": j["limit"], "val_fraction": j["val_fraction"],
                 "test_fraction": j["test_fraction"], **({"format": "sharegpt"} if job == "lm" else {})},
        "method": method, "train": train, "output_dir": str(out_dir), **extra})


def folder_bytes(folder: Path) -> dict:
    """A checkpoint folder's size: on disk (allocated blocks, as `du` counts them) and each file's length."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    return {"disk_bytes": sum(p.stat().st_blocks * 512 for p in files),
            "files": {p.name: p.stat().st_size for p in files}}


@contextlib.contextmanager
def timed_checkpoints(saves: list[dict], loop_seconds: list[float]):
    """Time every `Checkpoints.save` and every checkpoint the loop takes (snapshot + save), size each folder
    after it is written (not timed), and time `train_loop` calls; the originals are put back on exit.

    tunelab's driver imports `train_loop` when it runs and the loop looks `_checkpoint` up when it calls it,
    so replacing the module attributes is enough."""
    from tunelab.train import checkpoint as ckpt
    from tunelab.train import loop

    save, snapshot, train_loop = ckpt.Checkpoints.save, loop._checkpoint, loop.train_loop

    def timed_save(self, snap):
        t0 = time.perf_counter()
        folder = save(self, snap)
        saves.append({"step": snap.state.step, "save_seconds": time.perf_counter() - t0, **folder_bytes(folder)})
        return folder

    def timed_snapshot(*args, **kwargs):
        t0, before = time.perf_counter(), len(saves)
        folder = snapshot(*args, **kwargs)
        if len(saves) > before:
            saves[-1]["checkpoint_seconds"] = time.perf_counter() - t0
        return folder

    def timed_loop(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return train_loop(*args, **kwargs)
        finally:
            loop_seconds.append(time.perf_counter() - t0)

    ckpt.Checkpoints.save, loop._checkpoint, loop.train_loop = timed_save, timed_snapshot, timed_loop
    try:
        yield
    finally:
        ckpt.Checkpoints.save, loop._checkpoint, loop.train_loop = save, snapshot, train_loop


def run_side(job: str, setting: str) -> dict:
    """One run of `job` with checkpoint_every set by `setting` ("default" or "off"), in this process."""
    from fair import tunelab_lrs
    from tunelab.run import train
    from tunelab.tasks.causal_lm import CausalLMJob
    from tunelab.tasks.classification import ClassificationJob

    factory, kept = capture(CausalLMJob if job == "lm" else ClassificationJob)
    saves, loop_seconds = [], []
    cfg = job_config(job, SETTINGS[setting], OUT / f"{job}-{setting}")
    with timed_checkpoints(saves, loop_seconds):
        run_dir = train(cfg, overwrite=True, show_progress=False, log=lambda m: None, job_factory=factory)
    ev = json.loads((run_dir / "eval.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    model = kept["job"].model
    return {"job_name": job, "checkpoint_every": SETTINGS[setting], "tokens_per_s": ev["train_tokens_per_s"],
            "train_seconds": ev["train_seconds"], "train_tokens": ev["train_tokens"], "steps": ev["steps"],
            "lrs": tunelab_lrs(run_dir / "metrics.jsonl"), "evaluations": sum(r["kind"] == "eval" for r in rows),
            "loop_seconds": loop_seconds[0], "checkpoints": saves,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "precision": resolved_precision(JOBS[job]["precision"]), "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------------------------------------
# The section of results.md, from a stored measurement


def by_job(rec: dict) -> dict[str, dict[str, list[dict]]]:
    """{job: {"default": [results by repeat], "off": [...]}} of a stored measurement."""
    out: dict[str, dict[str, list[dict]]] = {}
    for run in sorted(rec["runs"], key=lambda r: r["repeat"]):
        job, setting = run["side"].split("-")[1:]
        out.setdefault(job, {s: [] for s in SETTINGS})[setting].append({**run["result"], "_run": run})
    return out


def overhead(default: list[dict], off: list[dict]) -> dict:
    """What checkpoints add to the loop's time, in % of the loop without them: the ratio of medians, each
    round's ratio (runs paired by repeat), and the checkpoints' own seconds over their run's loop seconds."""
    import statistics

    with_, without = ([r["loop_seconds"] for r in rs] for rs in (default, off))
    rounds = [100 * (a - b) / b for a, b in zip(with_, without)]
    direct = [100 * sum(c["checkpoint_seconds"] for c in r["checkpoints"]) / r["loop_seconds"] for r in default]
    return {"median": 100 * (statistics.median(with_) - statistics.median(without)) / statistics.median(without),
            "rounds": rounds, "direct": direct}


def _mb(n: float) -> float:
    return n / 1e6


def job_rows(runs: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """(label, cell) rows of one job's column."""
    from results import cell

    default, off = runs["default"], runs["off"]
    ckpts = [c for r in default for c in r["checkpoints"]]
    files = ckpts[0]["files"] if ckpts else {}
    o = overhead(default, off)
    return [
        ("optimizer steps (evaluations)", f"{default[0]['steps']} ({default[0]['evaluations']})"),
        ("trainable parameters", f"{default[0]['trainable_params'] / 1e6:.2f}M"),
        ("precision", default[0]["precision"]),
        ("checkpoints per run (default)", cell([len(r["checkpoints"]) for r in default], ".0f")),
        ("MB per checkpoint on disk", cell([_mb(c["disk_bytes"]) for c in ckpts], ".1f")),
        ("of which weights / optimizer state (MB)",
         f"{_mb(files.get('weights.safetensors', 0)):.1f} / {_mb(files.get('training.pt', 0)):.1f}"),
        ("seconds per checkpoint: `Checkpoints.save`", cell([c["save_seconds"] for c in ckpts], ".2f")),
        ("seconds per checkpoint: snapshot + save", cell([c["checkpoint_seconds"] for c in ckpts], ".2f")),
        ("loop seconds, checkpoint_every null (default)", cell([r["loop_seconds"] for r in default], ".1f")),
        ("loop seconds, checkpoint_every 0", cell([r["loop_seconds"] for r in off], ".1f")),
        ("seconds in optimizer steps (null / 0)", f"{cell([r['train_seconds'] for r in default], '.1f')} / "
                                                  f"{cell([r['train_seconds'] for r in off], '.1f')}"),
        ("**overhead of the default, % of the loop without checkpoints**",
         f"**{o['median']:+.1f}%** (per round {min(o['rounds']):+.1f} to {max(o['rounds']):+.1f}%)"),
        ("checkpoint seconds / loop seconds, same run (%)", cell(o["direct"], ".1f")),
        ("load (1 min) before the runs", cell([r["_run"]["load_before"][0] for r in default + off], ".2f"))]


def describe_job(name: str, j: dict) -> str:
    length = (f"{j['epochs']} epochs (evaluated at each end)" if "epochs" in j else
              f"{j['max_steps']} steps (evaluated every {j['eval_every']})")
    method = (f"LoRA r={j['r']} alpha={j['alpha']} on {j['target_modules']}" if j["method"] == "lora" else
              "full fine-tuning")
    return (f"{NAMES[name]}: `{j['model']}` on `{j['train']}` (limit {j['limit']}, val_fraction "
            f"{j['val_fraction']}), max_length {j['max_length']}, batch {j['batch_size']}, {length}, "
            f"{method}, lr {j['lr']}, precision {j['precision']}, seed {j['seed']}.")


def markdown(rec: dict) -> list[str]:
    """The part's section of results.md."""
    from results import measured

    jobs = by_job(rec)
    columns = {name: dict(job_rows(runs)) for name, runs in jobs.items()}
    labels = list(next(iter(columns.values())))
    lines = ["## Checkpoint cost: seconds, megabytes and overhead", MARKER, "",
             "Each job runs with `train.checkpoint_every` at its default (null: a checkpoint after each evaluation "
             "and at the last step, `keep_checkpoints: 1`) and at 0 (none), in its own process. Inside it, every "
             "`Checkpoints.save` (files, fsync, rename, pruning the older checkpoint) is timed, and the loop's whole "
             "checkpoint (gathering weights, optimizer state and random generators, then the save); each folder's "
             "size on disk (allocated blocks) is read after it is written. The loop's time counts steps, "
             "evaluations and checkpoints; the overhead is the difference of its medians between the two settings, "
             "over the time without checkpoints. It depends on how long a run trains between checkpoints: the "
             "seconds and megabytes per checkpoint are the figures that carry over to other jobs.", "",
             *[f"- {describe_job(name, rec['job'][name])}" for name in jobs], "",
             *measured(rec, mfu=False),
             "| | " + " | ".join(NAMES[name] for name in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(col[label] for col in columns.values()) + " |" for label in labels]
    return lines + [""]
