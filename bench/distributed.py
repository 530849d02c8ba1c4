"""Distributed part of `make bench`: DDP with 2 processes x 1 thread against 1 process x 2 threads, the same
job on the same 2 cores.

Both sides are the tunelab CLI in a child process, on one MiniLM-L6 full fine-tuning job (a BBC News subset,
fp32, dropout 0, plainly random batches, no validation or test split: the part measures training) with the
same global batch: the DDP side gets `train.batch_size` b per process, the single side 2b. The DDP side is
launched the way users launch it,

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc-per-node 2 -m tunelab train CFG

with `train.distributed: ddp` and `train.threads: 1`; the single side is `python -m tunelab train CFG` with
`train.threads: 2`. Each side's tokens/s is tunelab's own (real tokens over seconds inside optimizer steps,
exchanges included). After the repeats, the equivalence of the two is measured on the last run of each: the
largest absolute difference of the final trainable weights (the last checkpoint's weights.safetensors) and of
the losses logged at every step. A launch that fails or outlives its time limit stops the bench with the
command and the last lines it printed (tunelab without distributed training refuses torchrun in one line).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import record
from run import MARKER  # bench/ is on sys.path when bench/run.py runs

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "distributed"
SMOKE = os.environ.get("BENCH_SMOKE") == "1"

# 320 articles x 1 epoch = 20 steps of 2 x 8 (about 40k real tokens at max_length 128): long enough that the
# processes' start and the first steps do not dominate, about a minute per run on 2 cores.
JOB = dict(limit=320, max_length=128, epochs=1, batch_size=8, processes=2, lr=1.0e-4, weight_decay=0.01,
           warmup_ratio=0.1, max_grad_norm=1.0, seed=42)
TIME_LIMIT_S = 1800  # one side's whole command; a launch past it is stopped (with its workers)
if SMOKE:
    JOB.update(limit=32, max_length=32, batch_size=4)
    TIME_LIMIT_S = 600
LAYOUTS = {"ddp-2x1": dict(processes=2, threads=1), "single-1x2": dict(processes=1, threads=2)}
NAMES = {"ddp-2x1": "DDP, 2 processes x 1 thread", "single-1x2": "1 process x 2 threads"}


def side_config(side: str, out_dir: Path) -> dict:
    """The run config (as a dict) of one side: the global batch is JOB's batch_size x processes on both."""
    j, lay = JOB, LAYOUTS[side]
    return {"task": "classification",
            "model": {"name": "builtin:minilm-l6", "max_length": j["max_length"], "dropout": 0.0},
            "data": {"train": "builtin:bbc-news", "limit": j["limit"], "val_fraction": 0.0, "test_fraction": 0.0},
            "method": {"name": "full"},
            "train": {"epochs": j["epochs"], "batch_size": j["batch_size"] * j["processes"] // lay["processes"],
                      "lr": j["lr"], "weight_decay": j["weight_decay"], "warmup_ratio": j["warmup_ratio"],
                      "max_grad_norm": j["max_grad_norm"], "seed": j["seed"], "scheduler": "linear",
                      "precision": "fp32", "threads": lay["threads"], "log_every": 1, "group_by_length": "never",
                      "distributed": "ddp" if lay["processes"] > 1 else "auto", "distributed_timeout": 120,
                      "early_stopping": {"patience": None}},
            "output_dir": str(out_dir)}


def command(side: str, config_path: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one side."""
    lay = LAYOUTS[side]
    tail = ["-m", "tunelab", "train", str(config_path), "--overwrite", "--no-progress"]
    if lay["processes"] > 1:
        tail = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(lay["processes"]), *tail]
    env = {**os.environ, "OMP_NUM_THREADS": str(lay["threads"]), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return [sys.executable, *tail], env


def launch(cmd: list[str], env: dict[str, str] | None, time_limit_s: float, what: str) -> float:
    """Run `cmd` in its own process group; its wall seconds. A non-zero exit or a run past `time_limit_s` is a
    SystemExit with the command and its last output lines; on the time limit the whole group (torchrun and
    its workers) is stopped, so nothing is left waiting at an exchange."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=time_limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        raise SystemExit(f"{what}: stopped after {time_limit_s:.0f} s (a process hung?): {' '.join(cmd)}\n"
                         f"{_tail(out)}") from None
    if proc.returncode != 0:
        raise SystemExit(f"{what}: exit {proc.returncode}: {' '.join(cmd)}\n{_tail(out)}")
    return time.perf_counter() - t0


def _tail(text: str | None, lines: int = 25) -> str:
    """What a failed command said: tunelab's one-line errors first (torchrun's report that follows them
    would push them out of a plain tail), then its last lines."""
    all_lines = (text or "").strip().splitlines()
    errors = list(dict.fromkeys(line for line in all_lines if line.startswith("error:")))
    return "\n".join([*errors, *(["..."] if errors else []), *all_lines[-lines:]])


def run_side(side: str) -> dict:
    """One run of a side through the CLI; what it trained, how fast, its logged losses and weights' hash."""
    from fair import tunelab_lrs
    from tunelab.config import config_from_dict, dump_config

    run_dir = OUT / side
    OUT.mkdir(parents=True, exist_ok=True)
    config_path = OUT / f"{side}.yaml"
    config_path.write_text(dump_config(config_from_dict(side_config(side, run_dir))))
    cmd, env = command(side, config_path)
    wall = launch(cmd, env, TIME_LIMIT_S, side)
    ev = json.loads((run_dir / "eval.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    weights = final_weights(run_dir)
    return {"tokens_per_s": ev["train_tokens_per_s"], "train_seconds": ev["train_seconds"],
            "train_tokens": ev["train_tokens"], "steps": ev["steps"], "lrs": tunelab_lrs(run_dir / "metrics.jsonl"),
            "losses": [r["loss"] for r in rows if r["kind"] == "train"], "wall_seconds": ev["wall_seconds"],
            "command_seconds": wall, "weights": os.path.relpath(weights, HERE.parent),
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), **LAYOUTS[side]}


def final_weights(run_dir: Path) -> Path:
    """The trainable weights after the last step: the newest checkpoint's (written at the last step)."""
    from tunelab.train.checkpoint import newest

    folder = newest(run_dir / "checkpoints")
    if folder is None:
        raise SystemExit(f"{run_dir}: no checkpoint to read the final weights from (train.checkpoint_every "
                         "must leave one at the last step)")
    return folder / "weights.safetensors"


def equivalence(rec: dict) -> dict:
    """Largest absolute differences between the sides' last runs: final trainable weights (and the tensor
    where it is) and per-step logged losses; with the weights' largest magnitude, for scale."""
    import torch
    from safetensors.torch import load_file

    last = {}
    for run in rec["runs"]:
        last[run["side"]] = run["result"]  # runs are stored in order: the last of each side wins
    a, b = (last[s] for s in LAYOUTS)
    wa, wb = (load_file(str(HERE.parent / r["weights"])) for r in (a, b))
    if set(wa) != set(wb):
        raise SystemExit(f"the sides' trainable weights differ in names: {sorted(set(wa) ^ set(wb))[:3]}")
    diffs = {n: float((wa[n] - wb[n]).abs().max()) for n in wa}
    worst = max(diffs, key=diffs.get)
    loss_diffs = [abs(x - y) for x, y in zip(a["losses"], b["losses"])]
    return {"weights_max_abs": diffs[worst], "weights_worst": worst,
            "weights_scale": max(float(t.abs().max()) for t in wa.values()),
            "tensors": len(wa), "params": sum(t.numel() for t in wa.values()),
            "losses_max_abs": max(loss_diffs) if loss_diffs else None, "losses_compared": len(loss_diffs),
            "same_weights_every_repeat": {s: len({r["result"]["weights_sha256"] for r in rec["runs"]
                                                  if r["side"] == s}) == 1 for s in LAYOUTS},
            "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# The section of results.md, from a stored measurement


def _e(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def markdown(rec: dict) -> list[str]:
    """The part's section of results.md."""
    import statistics

    from results import cell, measured, results_of

    j, res, eq = rec["job"], results_of(rec), rec.get("equivalence")
    ddp, one = res["ddp-2x1"], res["single-1x2"]
    per_round = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(ddp, one)]
    ratio = statistics.median(r["tokens_per_s"] for r in ddp) / statistics.median(r["tokens_per_s"] for r in one)
    rows = [("real tokens/s", "tokens_per_s", ".0f"), ("seconds in optimizer steps", "train_seconds", ".1f"),
            ("seconds of the whole command (start, load, train, save)", "command_seconds", ".1f")]
    lines = ["## Distributed data parallel: 2 processes x 1 thread against 1 process x 2 threads", MARKER, "",
             "The same MiniLM-L6 full fine-tuning job through the CLI: DDP launched with `torchrun --standalone "
             "--nproc-per-node 2` and `OMP_NUM_THREADS=1` (`train.distributed: ddp`, `train.threads: 1`), against "
             "one process with `train.threads: 2`. Same global batch: "
             f"{j['batch_size']} per process x {j['processes']} against {j['batch_size'] * j['processes']} in one "
             "process. Tokens/s: real tokens over seconds inside optimizer steps (gradient exchange included).", "",
             f"Data: `builtin:bbc-news`, limit {j['limit']} articles, max_length {j['max_length']}, "
             f"{j['epochs']} epoch(s) = {ddp[0]['steps']} steps, {ddp[0]['train_tokens']:,} real tokens; fp32, "
             f"dropout 0, plainly random batches (`group_by_length: never`), no validation or test split; AdamW lr {j['lr']}, weight decay {j['weight_decay']}, "
             f"linear schedule with warmup {j['warmup_ratio']}, clip {j['max_grad_norm']}, seed {j['seed']}.", "",
             *measured(rec, mfu=False),
             "| | " + " | ".join(NAMES[s] for s in res) + " |", "|---" * (len(res) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell([r[key] for r in rs], fmt) for rs in res.values()) + " |"
              for label, key, fmt in rows]
    lines += [f"| load (1 min) before the run | " + " | ".join(
        cell([r["_run"]["load_before"][0] for r in rs], ".2f") for rs in res.values()) + " |", "",
              f"- DDP over one process: **{ratio:.2f}x** tokens/s (per round {min(per_round):.2f}-"
              f"{max(per_round):.2f}x)"]
    if eq:
        same = [NAMES[s] for s, v in eq["same_weights_every_repeat"].items() if v]
        lines += [f"- equivalence (last run of each): final trainable weights differ by at most "
                  f"**{eq['weights_max_abs']:.2e}** (in `{eq['weights_worst']}`; {eq['params'] / 1e6:.2f}M weights "
                  f"in {eq['tensors']} tensors, largest |w| {eq['weights_scale']:.2f}); the losses logged at "
                  f"{eq['losses_compared']} steps differ by at most **{_e(eq['losses_max_abs'])}**",
                  f"- bit-identical final weights in every repeat: {', '.join(same) if same else 'neither side'}"]
    return lines + [""]
