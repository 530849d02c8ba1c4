"""Distributed training under torchrun with gloo on the CPU: N processes x batch b equal 1 process x batch N*b.

Each test launches real process groups (`python -m torch.distributed.run --standalone -m tunelab train`), so
they are few and tiny. Dropout is off: each process draws its own masks, so only dropout-free runs can match.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.train.checkpoint import complete_steps

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch(nproc: int, *args: str) -> subprocess.Popen:
    """`tunelab ARGS` in `nproc` processes (torchrun), or in this interpreter's plain process for 1."""
    runner = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    return subprocess.Popen([sys.executable, *runner, "-m", "tunelab", *args, "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def as_overrides(settings: dict) -> list[str]:
    return [f"{k}={v}" for k, v in settings.items()]


def train_both(helpers, tmp_path: Path, cfg, per_process: dict, single: dict, nproc: int = 2) -> tuple[Path, Path]:
    """Train `cfg` with `nproc` processes (with `per_process` overrides) and with one (`single` overrides)."""
    from tunelab.config import dump_config

    config = tmp_path / "c.yaml"
    config.write_text(dump_config(cfg))
    many, one = tmp_path / "many", tmp_path / "one"
    procs = [launch(nproc, "train", str(config), "--output-dir", str(many), *as_overrides(per_process)),
             launch(1, "train", str(config), "--output-dir", str(one), *as_overrides(single))]
    for proc in procs:
        code, out = finish(proc)
        assert code == 0, out
    return many, one


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run_dir / "model").glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def logged(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same_training(many: Path, one: Path, weight_tol: float) -> None:
    assert max_weight_diff(many, one) <= weight_tol
    a, b = logged(many, "train"), logged(one, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) <= 1e-5
    ea, eb = logged(many, "eval"), logged(one, "eval")
    assert [r["step"] for r in ea] == [r["step"] for r in eb]
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(ea, eb)) <= 1e-5
    ta, tb = (json.loads((r / "eval.json").read_text())["test"] for r in (many, one))
    assert ta["accuracy"] == tb["accuracy"] and abs(ta["f1_macro"] - tb["f1_macro"]) <= 1e-6


@pytest.fixture
def cfg(make_config):
    # SGD: AdamW divides each gradient by its own magnitude, so where a gradient is ~0 (below its eps) float
    # noise of 1e-8 moves a weight by up to lr; with SGD the weights differ as little as the gradients do
    # fp32: `auto` would pick bf16 on a CPU with native bf16 (the in-process tests pin fp32 in conftest.py)
    return make_config({"model.dropout": 0.0, "train.max_steps": 12, "train.eval_every": 4, "train.lr": 0.05,
                        "train.optimizer": "sgd", "train.grad_accum": 2, "train.log_every": 1,
                        "train.precision": "fp32"})


def test_ddp_two_processes_equal_one_with_the_global_batch(cfg, helpers, tmp_path):
    many, one = train_both(helpers, tmp_path, cfg, {"train.batch_size": 4}, {"train.batch_size": 8})
    assert_same_training(many, one, weight_tol=2e-5)
    # only the main process wrote: one log line per step, and the run says how it was trained
    assert len(logged(many, "train")) == 12


def test_ddp_with_a_process_left_without_rows(cfg, helpers, tmp_path):
    # 63 training examples in global batches of 2: the epoch's last batch has one row, so one process has none
    many, one = train_both(helpers, tmp_path, cfg, {"train.batch_size": 1, "train.max_steps": "null",
                                                    "train.epochs": 1, "train.grad_accum": 1},
                           {"train.batch_size": 2, "train.max_steps": "null", "train.epochs": 1,
                            "train.grad_accum": 1})
    assert len(logged(many, "train")) == 32
    assert_same_training(many, one, weight_tol=2e-5)


def test_fsdp_two_processes_equal_one(cfg, helpers, tmp_path):
    many, one = train_both(helpers, tmp_path, cfg, {"train.batch_size": 4, "train.distributed": "fsdp"},
                           {"train.batch_size": 8})
    assert_same_training(many, one, weight_tol=2e-5)
    step = complete_steps(many / "checkpoints")[-1]
    saved = load_file(str(many / "checkpoints" / f"step-{step}" / "weights.safetensors"))
    assert len(saved) == len(load_file(str(one / "checkpoints" / f"step-{step}" / "weights.safetensors")))


def test_lora_on_fsdp_saves_the_trained_adapter(cfg, helpers, tmp_path):
    lora = {"method.name": "lora", "method.r": 4, "method.alpha": 8}
    many, one = train_both(helpers, tmp_path, cfg, {**lora, "train.batch_size": 4, "train.distributed": "fsdp"},
                           {**lora, "train.batch_size": 8})
    adapter = load_file(str(many / "model" / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in adapter)
    assert all(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # trained (B starts at 0)
    # the saved adapter is exactly the best weights the run kept (gathered from the shards in its checkpoint)
    from tunelab.runs import load_run

    best = json.loads((many / "eval.json").read_text())["best_step"]
    kept = load_file(str(many / "checkpoints" / f"step-{best}" / "weights.safetensors"))
    loaded = dict(load_run(many).model.named_parameters())
    assert kept and all(torch.equal(loaded[k], v) for k, v in kept.items())
    assert_same_training(many, one, weight_tol=2e-5)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_run_stopped_by_sigterm_resumes_to_the_uninterrupted_run(cfg, helpers, tmp_path, mode):
    from tunelab.config import dump_config

    config = tmp_path / "c.yaml"
    config.write_text(dump_config(cfg))
    args = ["train.batch_size=4", "train.max_steps=40", "train.checkpoint_every=0", f"train.distributed={mode}"]
    reference = launch(2, "train", str(config), "--output-dir", str(tmp_path / "ref"), *args)
    assert finish(reference)[0] == 0, "reference run failed"
    run_dir = tmp_path / "run"
    proc = launch(2, "train", str(config), "--output-dir", str(run_dir), *args)
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").is_file() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 4:
        assert time.monotonic() < deadline and proc.poll() is None, finish(proc)[1]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does: every process of the job gets it
    code, out = finish(proc)
    assert code != 0  # torchrun reports the workers' 143 as a failure
    (step,) = complete_steps(run_dir / "checkpoints")
    assert 0 < step < 40 and "resume with: torchrun --nproc-per-node 2 -m tunelab resume" in out, out
    code, out = finish(launch(2, "resume", str(run_dir)))
    assert code == 0, out
    assert max_weight_diff(run_dir, tmp_path / "ref") == 0.0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows]  # noqa
    assert strip(logged(run_dir, "train")) == strip(logged(tmp_path / "ref", "train"))


def test_resuming_with_another_number_of_processes_is_refused(cfg, helpers, tmp_path):
    from tunelab.config import dump_config

    config = tmp_path / "c.yaml"
    config.write_text(dump_config(cfg))
    code, out = finish(launch(2, "train", str(config), "--output-dir", str(tmp_path / "run"), "train.batch_size=4"))
    assert code == 0, out
    code, out = finish(launch(1, "resume", str(tmp_path / "run"), "train.max_steps=20"))
    assert code == 2 and "trained by 2 process(es)" in out and "--nproc-per-node 2" in out


def test_a_process_that_dies_ends_the_job_naming_it(cfg, helpers, tmp_path):
    import psutil

    from tunelab.config import dump_config

    config = tmp_path / "c.yaml"
    config.write_text(dump_config(cfg))
    run_dir = tmp_path / "run"
    proc = launch(2, "train", str(config), "--output-dir", str(run_dir), "train.batch_size=4",
                  "train.max_steps=400", "train.checkpoint_every=5")
    deadline = time.monotonic() + 120
    while not complete_steps(run_dir / "checkpoints"):
        assert time.monotonic() < deadline and proc.poll() is None, finish(proc)[1]
        time.sleep(0.01)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "tunelab" in " ".join(p.cmdline())]
    assert len(workers) == 2
    victim = next(w for w in workers if "LOCAL_RANK" in w.environ() and w.environ()["LOCAL_RANK"] == "1")
    killed_at = time.monotonic()
    victim.kill()
    code, out = finish(proc, timeout=120)
    assert code != 0 and time.monotonic() - killed_at < 60  # ended, not hung until some long timeout
    # torchrun's summary names it, and so does tunelab's own line from the process that survived
    assert "exitcode  : -9" in out and "rank      : 1" in out, out[-3000:]
    assert "error: process 0 of 2: an exchange with the other processes failed" in out, out[-3000:]
    assert "stopped: rank 1 (process" in out and "exited" in out, out[-3000:]
    assert complete_steps(run_dir / "checkpoints")  # the last checkpoint stays for a resume
