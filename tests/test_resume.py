"""Checkpoint and resume: a run killed at an arbitrary step and resumed ends bit-identical to one that was not.

The proof runs real child processes (`python -m tunelab`), kills one with SIGKILL once it has written a few
checkpoints, resumes it with `tunelab resume`, and compares the final weights, every logged loss, learning
rate and gradient norm, and the test metrics with an uninterrupted run (CPU, fp32, one thread each; the child
processes do not see conftest.py's fp32 pin, so the configs say `train.precision: fp32`).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunelab.errors import TunelabError
from tunelab.resume import marker_status
from tunelab.train.checkpoint import complete_steps

sys.path.insert(0, str(Path(__file__).parent / "causal"))
from causal_tiny import write_tiny_model  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
VOLATILE = {"time", "tokens_per_s"}  # wall-clock figures: the only logged values allowed to differ


def tunelab(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab", *args, "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def write_config(path: Path, cfg) -> Path:
    from tunelab.config import dump_config

    path.write_text(dump_config(cfg))
    return path


def stop_once_checkpointed(proc: subprocess.Popen, run_dir: Path, step: int, sig: int) -> int:
    """Send `sig` once RUN_DIR holds a complete checkpoint at `step` or later; the newest step then."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        steps = complete_steps(run_dir / "checkpoints")
        if steps and steps[-1] >= step:
            proc.send_signal(sig)
            return steps[-1]
        time.sleep(0.005)
    raise AssertionError(f"the run ended (or hung) before its checkpoint of step {step}: {finish(proc)[1]}")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run_dir / "model").glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    assert out, f"no weights in {run_dir / 'model'}"
    return out


def logged(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


def assert_same_run(resumed: Path, reference: Path) -> None:
    a, b = weights(resumed), weights(reference)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert logged(resumed) == logged(reference)  # every step once, the same numbers
    test = [json.loads((r / "eval.json").read_text())["test"] for r in (resumed, reference)]
    assert test[0] == test[1]


def kill_and_resume(config: Path, tmp_path: Path, at_step: int) -> tuple[Path, Path, int]:
    """(resumed run, reference run, step of the newest checkpoint when killed)."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref_proc = tunelab("train", str(config), "--output-dir", str(reference))
    proc = tunelab("train", str(config), "--output-dir", str(killed))
    newest = stop_once_checkpointed(proc, killed, at_step, signal.SIGKILL)
    code, out = finish(proc)
    assert code == -signal.SIGKILL, out
    assert marker_status(killed) == "training"  # killed mid-run, not after it finished
    code, out = finish(tunelab("resume", str(killed)))
    assert code == 0 and f"resuming from {killed}/checkpoints/step-" in out, out
    assert finish(ref_proc)[0] == 0
    assert marker_status(killed) == "finished"
    return killed, reference, newest


# ---------------------------------------------------------------------------------------------
# The proof, for classification, causal-LM LoRA, pretraining and seq2seq


def test_killed_classification_run_resumes_bit_identical(make_config, tmp_path):
    # full fine-tuning with dropout (its masks come from the restored generator), evaluations and early
    # stopping state, every 2 steps a checkpoint
    cfg = make_config({"train.max_steps": 40, "train.eval_every": 6, "train.checkpoint_every": 2,
                       "train.threads": 1, "train.log_every": 1, "train.keep_checkpoints": 2,
                       "train.precision": "fp32"})
    config = write_config(tmp_path / "c.yaml", cfg)
    resumed, reference, newest = kill_and_resume(config, tmp_path, at_step=10)
    assert_same_run(resumed, reference)
    # the newest two checkpoints and the best one are kept
    steps = complete_steps(resumed / "checkpoints")
    best = json.loads((resumed / "eval.json").read_text())["best_step"]
    assert steps[-2:] == [38, 40] and set(steps) <= {38, 40, best}


def test_killed_lora_causal_lm_run_resumes_bit_identical(tmp_path):
    from tunelab.config import config_from_dict

    model = write_tiny_model(tmp_path / "tiny-llama")
    rows = [{"instruction": f"say {w}", "output": f"{w} {w}!"} for w in
            ("cat", "dog", "owl", "emu", "yak", "elk", "bee", "ant", "cow", "pig") * 4]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(model), "max_length": 48, "dropout": 0.1},
        "data": {"train": str(tmp_path / "d.jsonl"), "format": "alpaca", "val_fraction": 0.1,
                 "test_fraction": 0.1},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 36, "batch_size": 4, "lr": 5e-3, "log_every": 1, "eval_every": 9, "seed": 3,
                  "threads": 1, "device": "cpu", "checkpoint_every": 3, "precision": "fp32"},
        "generate": {"max_new_tokens": 4, "samples_in_eval": 2},
        "output_dir": str(tmp_path / "unused")})
    config = write_config(tmp_path / "c.yaml", cfg)
    resumed, reference, _ = kill_and_resume(config, tmp_path, at_step=9)
    assert_same_run(resumed, reference)
    assert set(weights(resumed)) == {k for k in weights(resumed) if k.startswith("adapter_model")}
    saved = load_file(str(resumed / "checkpoints" / "step-36" / "weights.safetensors"))
    assert saved and all("lora_" in k for k in saved)  # only the adapter is checkpointed


def test_killed_pretraining_run_resumes_bit_identical(tmp_path):
    from tunelab.config import config_from_dict
    from tunelab.tokenizer_train import train_tokenizer

    words = "the cat dog bird sees chases sings to a tree house river".split()
    docs = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(30)) for i in range(60)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = train_tokenizer([str(tmp_path / "corpus.jsonl")], 300, tmp_path / "bpe", kind="bpe")
    cfg = config_from_dict({
        "task": "pretrain",
        "model": {"name": "scratch:gpt", "max_length": 16, "layers": 2, "hidden_size": 32, "heads": 2,
                  "ffn_size": 64, "dropout": 0.1, "tokenizer": str(tok)},
        "data": {"train": str(tmp_path / "corpus.jsonl"), "val_fraction": 0.1, "test_fraction": 0.1},
        # logs every 5 steps, checkpoints every 4: a checkpoint holds a loss window not yet logged
        "train": {"max_steps": 40, "batch_size": 8, "lr": 5e-3, "log_every": 5, "eval_every": 10, "seed": 0,
                  "threads": 1, "device": "cpu", "checkpoint_every": 4, "precision": "fp32"},
        "output_dir": str(tmp_path / "unused")})
    config = write_config(tmp_path / "c.yaml", cfg)
    resumed, reference, _ = kill_and_resume(config, tmp_path, at_step=12)
    assert_same_run(resumed, reference)


def test_killed_seq2seq_run_resumes_bit_identical(tmp_path):
    # the scratch encoder-decoder with dropout; evaluations generate (greedy) between checkpoints
    from tunelab.config import config_from_dict
    from tunelab.tokenizer_train import train_tokenizer

    words = "red blue green cat dog sun moon tree fish bird".split()
    rows = [[words[(i * 3 + j * 7) % len(words)] for j in range(2 + i % 3)] for i in range(48)]
    pairs = [{"source": " ".join(r), "target": " ".join(reversed(r))} for r in rows]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp_path / "sides.txt").write_text("".join(f"{p['source']}\n{p['target']}\n" for p in pairs))
    tok = train_tokenizer([str(tmp_path / "sides.txt")], 300, tmp_path / "bpe", kind="bpe")
    cfg = config_from_dict({
        "task": "seq2seq",
        "model": {"name": "scratch:transformer-seq2seq", "tokenizer": str(tok), "max_length": 16, "layers": 1,
                  "hidden_size": 32, "heads": 2, "ffn_size": 64, "dropout": 0.1},
        "data": {"train": str(tmp_path / "pairs.jsonl"), "val_fraction": 0.1, "test_fraction": 0.1},
        "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "log_every": 1, "eval_every": 10, "seed": 1,
                  "threads": 1, "device": "cpu", "checkpoint_every": 3, "precision": "fp32"},
        "generate": {"max_new_tokens": 8, "samples_in_eval": 4},
        "output_dir": str(tmp_path / "unused")})
    config = write_config(tmp_path / "c.yaml", cfg)
    resumed, reference, _ = kill_and_resume(config, tmp_path, at_step=9)
    assert_same_run(resumed, reference)


# ---------------------------------------------------------------------------------------------
# Signals, refusals, training further, disk trouble


def test_killed_extractive_qa_run_resumes_bit_identical(tmp_path):
    # the span head on a tiny word-level BERT with dropout; long contexts read in windows; evaluations
    # between checkpoints choose the no-answer threshold on validation
    sys.path.insert(0, str(Path(__file__).parent / "extractive"))
    from extractive_helpers import qa_config, reading_records, write_jsonl, write_tiny_bert

    model = write_tiny_bert(tmp_path / "bert")
    data = write_jsonl(tmp_path / "qa.jsonl", reading_records(120))
    cfg = qa_config(model, data, tmp_path / "unused", **{"train.max_steps": 30, "train.eval_every": 10,
                                                         "train.checkpoint_every": 3, "train.batch_size": 8,
                                                         "model.dropout": 0.1})
    config = write_config(tmp_path / "c.yaml", cfg)
    resumed, reference, _ = kill_and_resume(config, tmp_path, at_step=9)
    assert_same_run(resumed, reference)
    assert json.loads((resumed / "qa.json").read_text()) == json.loads((reference / "qa.json").read_text())


def test_killed_retrieval_run_resumes_bit_identical(tiny_bert, tmp_path):
    # in-batch negatives with hard negatives, the tiny BERT's dropout on, exact-search evaluations between
    # checkpoints
    sys.path.insert(0, str(Path(__file__).parent / "retrieval_task"))
    from retrieval_data import coded_pairs
    from tunelab.config import config_from_dict

    pairs = coded_pairs(64)
    for i, p in enumerate(pairs):
        p["negative"] = pairs[(i + 1) % len(pairs)]["positive"]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    cfg = config_from_dict({
        "task": "retrieval", "model": {"name": str(tiny_bert), "max_length": 16},
        "data": {"train": str(tmp_path / "pairs.jsonl"), "negative_field": "negative", "val_fraction": 0.15,
                 "test_fraction": 0.15},
        "retrieval": {"temperature": 0.1},
        "train": {"max_steps": 24, "batch_size": 8, "lr": 3e-3, "log_every": 1, "eval_every": 6, "seed": 1,
                  "threads": 1, "device": "cpu", "checkpoint_every": 3, "precision": "fp32"},
        "output_dir": str(tmp_path / "unused")})
    config = write_config(tmp_path / "c.yaml", cfg)
    resumed, reference, _ = kill_and_resume(config, tmp_path, at_step=9)
    assert_same_run(resumed, reference)


def test_killed_token_classification_run_resumes_bit_identical(tmp_path):
    # a token head on a tiny word-level BERT with dropout; sentences longer than the 12-token rows read in
    # overlapping windows; entity-F1 evaluations between checkpoints
    sys.path.insert(0, str(Path(__file__).parent / "token_tagging"))
    from token_helpers import ner_config, ner_records, write_jsonl, write_tiny_bert

    model = write_tiny_bert(tmp_path / "bert")
    data = write_jsonl(tmp_path / "ner.jsonl", ner_records(120))
    cfg = ner_config(model, data, tmp_path / "unused", **{"model.max_length": 12, "train.max_steps": 30,
                                                          "train.eval_every": 10, "train.checkpoint_every": 3,
                                                          "train.batch_size": 8, "model.dropout": 0.1})
    config = write_config(tmp_path / "c.yaml", cfg)
    resumed, reference, _ = kill_and_resume(config, tmp_path, at_step=9)
    assert_same_run(resumed, reference)
    assert (json.loads((resumed / "tagging.json").read_text())
            == json.loads((reference / "tagging.json").read_text()))


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(make_config, tmp_path):
    cfg = make_config({"train.max_steps": 400, "train.checkpoint_every": 0, "train.threads": 1,
                       "train.eval_every": 1000})
    config = write_config(tmp_path / "c.yaml", cfg)
    run_dir = tmp_path / "run"
    proc = tunelab("train", str(config), "--output-dir", str(run_dir))
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 143, out
    (step,) = complete_steps(run_dir / "checkpoints")  # checkpoint_every 0: only the one the signal asked for
    assert 0 < step < 400
    assert f"stopped after step {step}" in out and f"resume with: tunelab resume {run_dir}" in out
    assert "Traceback" not in out
    # the logs end at the checkpoint; `train` without --resume refuses to start over silently
    assert max(r["step"] for r in logged(run_dir)) <= step
    code, out = finish(tunelab("train", str(config), "--output-dir", str(run_dir)))
    assert code == 2 and f"tunelab resume {run_dir}" in out and len(out.strip().splitlines()) == 1
    # nor is an unfinished run used as if it were one
    code = subprocess.run([sys.executable, "-m", "tunelab", "eval", str(run_dir)], env=ENV, capture_output=True,
                          text=True)
    assert code.returncode == 2 and "has not finished training" in code.stderr


def test_resume_refuses_a_change_of_meaning_and_names_the_key(make_config, tmp_path, capsys):
    from tunelab.cli import main

    cfg = make_config({"train.max_steps": 6, "train.checkpoint_every": 2})
    config = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", str(config), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", str(config), "--resume", "--no-progress", "train.batch_size=4",
                 "train.max_steps=9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.batch_size: 8 -> 4" in err and "max_steps" not in err.split(
        "would change")[0]
    assert main(["resume", cfg.output_dir, "--no-progress"]) == 2  # nothing left to train
    assert "raise train.max_steps" in capsys.readouterr().err


def test_a_finished_run_trained_further_equals_a_longer_run(make_config, tmp_path, capsys):
    """With a constant schedule, 12 steps then 8 more are the same training as 20 steps in one go."""
    from tunelab.cli import main

    settings = {"train.scheduler": "constant", "train.warmup_steps": 0, "train.eval_every": 4,
                "train.checkpoint_every": 4, "train.log_every": 1, "train.epochs": 10}
    short = write_config(tmp_path / "short.yaml", make_config({**settings, "train.max_steps": 12,
                                                               "output_dir": str(tmp_path / "run")}))
    long = write_config(tmp_path / "long.yaml", make_config({**settings, "train.max_steps": 20,
                                                             "output_dir": str(tmp_path / "long")}))
    assert main(["train", str(short), "--no-progress"]) == 0
    before = (tmp_path / "run" / "eval.json").read_text()
    assert main(["resume", str(tmp_path / "run"), "train.max_steps=20", "--no-progress"]) == 0
    assert main(["train", str(long), "--no-progress"]) == 0
    assert (tmp_path / "run" / "eval.json").read_text() != before
    assert_same_run(tmp_path / "run", tmp_path / "long")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["max_steps"] == 20


def test_a_full_disk_at_a_checkpoint_is_one_error_and_the_previous_checkpoint_stays(make_config, tmp_path,
                                                                                  monkeypatch, capsys):
    import tunelab.train.checkpoint as checkpoint
    from tunelab.cli import main

    real, calls = checkpoint.atomic_write_bytes, []

    def full_on_the_second_checkpoint(path, data):
        calls.append(Path(path))
        if "step-4" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_on_the_second_checkpoint)
    cfg = make_config({"train.max_steps": 8, "train.checkpoint_every": 2, "train.keep_checkpoints": 3})
    config = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    run_dir = Path(cfg.output_dir)
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "step-2" in err
    assert complete_steps(run_dir / "checkpoints") == [2]
    assert not list((run_dir / "checkpoints").glob(".step-*"))  # the half-written one is gone
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)  # space freed
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    assert marker_status(run_dir) == "finished"


def test_an_incomplete_checkpoint_folder_is_never_loaded(make_config, tmp_path, capsys):
    import shutil

    from tunelab.cli import main
    from tunelab.resume import find_resume

    cfg = make_config({"train.max_steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 5})
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--no-progress"]) == 0
    run_dir = Path(cfg.output_dir)
    shutil.copytree(run_dir / "checkpoints" / "step-6", run_dir / "checkpoints" / "step-9")
    (run_dir / "checkpoints" / "step-9" / "complete.json").unlink()  # cut off while being written
    assert find_resume(run_dir).checkpoint.name == "step-6"
    with pytest.raises(TunelabError, match="not a complete checkpoint"):
        from tunelab.train.checkpoint import load

        load(run_dir / "checkpoints" / "step-9")


def test_a_run_being_trained_by_another_process_is_not_replaced(make_config, tmp_path, capsys):
    import fcntl

    from tunelab.cli import main

    cfg = make_config({"train.max_steps": 4, "train.checkpoint_every": 2})
    config = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", str(config), "--no-progress"]) == 0
    run_dir = Path(cfg.output_dir)
    marker = json.loads((run_dir / "tunelab-run.json").read_text())
    (run_dir / "tunelab-run.json").write_text(json.dumps({**marker, "status": "training"}))  # as while training
    fd = os.open(run_dir, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what the training process holds
    try:
        capsys.readouterr()
        assert main(["train", str(config), "--no-progress", "--overwrite"]) == 2
        assert "being trained by another tunelab process" in capsys.readouterr().err
        assert main(["resume", str(run_dir), "--no-progress", "train.max_steps=6"]) == 2
        assert "being trained by another tunelab process" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert main(["resume", str(run_dir), "--no-progress", "train.max_steps=6"]) == 0


# ---------------------------------------------------------------------------------------------
# Cases a review found


def test_an_early_stopped_run_stays_stopped(make_config, tmp_path, capsys):
    from tunelab.cli import main

    cfg = make_config({"train.max_steps": 40, "train.eval_every": 2, "train.lr": 1e-5,
                       "train.early_stopping.patience": 1, "train.early_stopping.metric": "loss"})
    config = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", str(config), "--no-progress"]) == 0
    run_dir = Path(cfg.output_dir)
    first = json.loads((run_dir / "eval.json").read_text())
    assert first["stopped_early"] and first["steps"] < 40
    # training it further is refused, and the refusal leaves nothing beside the run
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--no-progress"]) == 2
    assert "stopped early" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "run"]
    # a crash after the stop (while saving): the resume finishes the same run, it does not train on
    (run_dir / "tunelab-run.json").write_text(json.dumps({"status": "training"}))
    for name in ("eval.json", "report.html"):
        (run_dir / name).unlink()
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    again = json.loads((run_dir / "eval.json").read_text())
    assert (again["steps"], again["best_step"], again["stopped_early"], again["test"]) == \
           (first["steps"], first["best_step"], True, first["test"])


def test_an_abandoned_overwrite_is_superseded_by_the_run_that_finished(make_config, tmp_path, monkeypatch, capsys):
    """An interrupted `--overwrite` run (in a hidden staging folder), then a fresh `--overwrite` that finished:
    the finished run is what a resume goes on from, never the abandoned one (also with [] in the name)."""
    import tunelab.run as run
    from tunelab.cli import main

    run_dir = tmp_path / "exp[1]"
    config = write_config(tmp_path / "c.yaml", make_config({"train.max_steps": 4, "train.checkpoint_every": 2,
                                                            "output_dir": str(run_dir)}))
    assert main(["train", str(config), "--no-progress"]) == 0
    real = run._finish_run

    def crash(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(run, "_finish_run", crash)
    assert main(["train", str(config), "--no-progress", "--overwrite", "train.lr=2e-3"]) == 2
    (abandoned,) = tmp_path.glob(".exp[[]1].staging-*")
    from tunelab.resume import find_resume

    assert find_resume(run_dir.resolve()).home == abandoned  # an interrupted run is found (glob-escaped name)
    monkeypatch.setattr(run, "_finish_run", real)
    assert main(["train", str(config), "--no-progress", "--overwrite", "train.lr=5e-3"]) == 0
    assert not abandoned.exists()  # superseded
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 5e-3
    assert main(["resume", str(run_dir), "--no-progress", "train.max_steps=6"]) == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 5e-3


def test_train_resume_takes_the_default_metric_the_run_resolved(make_config, tmp_path):
    from tunelab.cli import main

    cfg = make_config({"train.max_steps": 4, "train.checkpoint_every": 2, "train.early_stopping.metric": None})
    config = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", str(config), "--no-progress"]) == 0
    assert main(["train", str(config), "--no-progress", "--resume", "train.max_steps=6"]) == 0


def test_a_second_ctrl_c_after_training_without_checkpoints_keeps_the_trained_model(make_config, tmp_path,
                                                                                    monkeypatch, capsys):
    import tunelab.tasks.classification as classification
    from tunelab.cli import main

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(classification.ClassificationJob, "test", interrupted)
    cfg = make_config({"train.max_steps": 3, "train.checkpoint_every": 0})
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--no-progress"]) == 130
    (rescued,) = tmp_path.glob("run.rescued-*")
    assert (rescued / "model" / "model.safetensors").is_file()
    assert str(rescued / "model") in capsys.readouterr().out


def test_prune_keeps_every_checkpoint_a_kept_one_takes_its_best_weights_from(tmp_path):
    from tunelab.train.checkpoint import Checkpoints, Snapshot, load
    from tunelab.train.state import LoopState

    root = Checkpoints(tmp_path, keep=2, config_text="task: classification\n")
    w = {"w": torch.zeros(2)}

    def save(step: int, best_step: int) -> None:
        state = LoopState(step=step, best_step=best_step, best_metric=1.0)
        root.save(Snapshot(state=state, weights=w, best_weights=w, optimizer={}, scheduler={}, rng=[{}],
                           loss_window=(0.0, 0)))

    save(4, 4)  # best here
    save(6, 4)  # takes its best weights from step-4
    save(8, 8)  # a new best: step-6 (kept, newest two) still needs step-4
    assert complete_steps(tmp_path) == [4, 6, 8]
    load(tmp_path / "step-6")  # loadable
    save(10, 8)  # now step-6 is beyond the newest two, and step-4 is needed by nothing kept
    assert complete_steps(tmp_path) == [8, 10]


def test_a_longer_run_follows_its_new_schedule_from_the_first_new_step(make_config, tmp_path):
    from tunelab.cli import main

    cfg = make_config({"train.max_steps": 6, "train.scheduler": "linear", "train.warmup_steps": 0,
                       "train.checkpoint_every": 3, "train.epochs": 10})
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--no-progress"]) == 0
    assert main(["resume", cfg.output_dir, "--no-progress", "train.max_steps=12"]) == 0
    lrs = {r["step"]: r["lr"] for r in logged(Path(cfg.output_dir)) if r["kind"] == "train"}
    assert lrs[7] == pytest.approx(1e-3 * (1 - 6 / 12))  # step 7 of 12 on the linear schedule, not 0


def test_a_damaged_checkpoint_file_is_one_line(make_config, tmp_path, capsys):
    from tunelab.cli import main

    cfg = make_config({"train.max_steps": 4, "train.checkpoint_every": 2, "train.keep_checkpoints": 2})
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--no-progress"]) == 0
    weights_file = Path(cfg.output_dir) / "checkpoints" / "step-4" / "weights.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    capsys.readouterr()
    assert main(["resume", cfg.output_dir, "--no-progress", "train.max_steps=6"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step-4 cannot be read" in err and "delete it" in err
