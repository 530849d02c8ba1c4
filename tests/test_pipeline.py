"""Pipeline-parallel pretraining (`train.distributed: pipeline`): 2 gloo processes equal 1 process.

The split itself is checked in this process (stages chained by hand equal the whole GPT); the runs are real
process groups (`python -m torch.distributed.run --standalone -m tunelab train`), one after another, on a tiny
GPT with dropout 0, fp32 (the child processes do not see conftest.py's pin) and SGD, whose weights differ as
little as the gradients do. The corpus gives 7 micro-batches of 8 rows per epoch (the last of 4 rows), so with
grad_accum 2 every epoch ends with a window of one short micro-batch.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.errors import TunelabError
from tunelab.nn.models import GPT
from tunelab.train.checkpoint import complete_steps
from tunelab.train.pipeline import build_stage, check_config, layer_bounds, stage_parameters

from test_distributed import finish, launch  # noqa: E402 - the same torchrun launcher
WORDS = "the cat dog bird sees chases sings to a tree house river".split()


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def logged(run_dir: Path, kind: str) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows if r["kind"] == kind]


# ---------------------------------------------------------------------------------------------
# The split, in this process


def test_layers_are_split_as_evenly_as_possible():
    assert layer_bounds(4, 2) == [(0, 2), (2, 4)]
    assert layer_bounds(5, 2) == [(0, 3), (3, 5)]  # the stage without the head takes the one left over
    assert layer_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert layer_bounds(3, 3) == [(0, 1), (1, 2), (2, 3)]


@pytest.mark.parametrize("tied", [True, False])
def test_three_stages_chained_equal_the_whole_gpt(tied):
    torch.manual_seed(0)
    gpt = GPT(40, hidden_size=16, num_layers=5, num_heads=2, max_position=12, dropout=0.0, tie_embeddings=tied)
    ids = torch.randint(0, 40, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, :] = 0, 0  # a padded row and an all-padding row (the pipeline's filler)
    stages = [build_stage(gpt, i, 3) for i in range(3)]
    x = ids
    for stage in stages:
        x = stage(x, mask == 0)
    expected = gpt(ids, attention_mask=mask).logits  # (B, T, V)
    real = mask.bool()
    assert torch.equal(x[real], expected[real]) and torch.isfinite(x).all()
    # every parameter has exactly one stage; the head is the tied matrix's copy or the GPT's own head
    placed = [p for params in stage_parameters(gpt, 3) for p in params]
    assert len(placed) == len({id(p) for p in placed}) == len(list(gpt.parameters()))
    assert (stages[2].head is gpt.lm_head) == (not tied)
    assert torch.equal(stages[2].head.weight, gpt.lm_head.weight)


def test_a_model_that_is_not_a_scratch_gpt_is_refused_before_it_loads():
    from tunelab.config import config_from_dict

    cfg = config_from_dict({"task": "classification", "model": {"name": "builtin:minilm-l6"},
                            "data": {"train": "train.jsonl"}, "output_dir": "run"})
    with pytest.raises(TunelabError, match="pipeline is for scratch GPTs .* model is 'builtin:minilm-l6': use "
                                           "train.distributed: ddp or fsdp"):
        check_config(cfg)


# ---------------------------------------------------------------------------------------------
# Real process groups


@pytest.fixture(scope="module")
def corpus_config(tmp_path_factory) -> Path:
    """c.yaml: a 3-layer GPT (2 + 1 layers over 2 stages) pretrained for 10 epochs of 4 steps."""
    from tunelab.config import config_from_dict, dump_config
    from tunelab.tokenizer_train import train_tokenizer

    folder = tmp_path_factory.mktemp("pipeline")
    docs = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20 + i % 7)) for i in range(40)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = train_tokenizer([str(folder / "corpus.jsonl")], 300, folder / "bpe", kind="bpe")
    cfg = config_from_dict({
        "task": "pretrain",
        "model": {"name": "scratch:gpt", "max_length": 16, "layers": 3, "hidden_size": 32, "heads": 2,
                  "ffn_size": 64, "dropout": 0.0, "tokenizer": str(tokenizer)},
        "data": {"train": str(folder / "corpus.jsonl"), "val_fraction": 0.1, "test_fraction": 0.1},
        "train": {"epochs": 10, "batch_size": 8, "grad_accum": 2, "optimizer": "sgd", "lr": 0.1,
                  "log_every": 1, "eval_every": 6, "seed": 0, "threads": 1, "device": "cpu", "precision": "fp32"},
        "output_dir": str(folder / "unused")})
    (folder / "c.yaml").write_text(dump_config(cfg))
    return folder / "c.yaml"


@pytest.fixture(scope="module")
def pipeline_run(corpus_config) -> tuple[Path, str]:
    """(RUN_DIR, output) of the config trained by 2 pipeline processes, uninterrupted."""
    run_dir = corpus_config.parent / "pipeline"
    code, out = finish(launch(2, "train", str(corpus_config), "--output-dir", str(run_dir),
                              "train.distributed=pipeline"))
    assert code == 0, out
    return run_dir, out


def test_two_pipeline_processes_equal_one_process(corpus_config, pipeline_run):
    many, out = pipeline_run
    one = corpus_config.parent / "one"
    code, single_out = finish(launch(1, "train", str(corpus_config), "--output-dir", str(one)))
    assert code == 0, single_out
    assert "in 2 processes (pipeline): 40 optimizer steps, batch 8 x accum 2;" in out
    assert len(logged(many, "train")) == 40  # only the main process logs
    a, b = weights(many), weights(one)
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    for kind in ("train", "eval"):
        x, y = logged(many, kind), logged(one, kind)
        assert [r["step"] for r in x] == [r["step"] for r in y]
        assert max(abs(p["loss"] - q["loss"]) for p, q in zip(x, y)) <= 1e-5
    test = [json.loads((r / "eval.json").read_text())["test"] for r in (many, one)]
    assert test[0]["tokens"] == test[1]["tokens"] and abs(test[0]["loss"] - test[1]["loss"]) <= 1e-5
    # checkpoints name the weights as one process does (the tied head once, as the embedding)
    step = complete_steps(many / "checkpoints")[-1]
    saved = [load_file(str(r / "checkpoints" / f"step-{step}" / "weights.safetensors")) for r in (many, one)]
    assert saved[0].keys() == saved[1].keys() and "lm_head.weight" not in saved[0]


def test_a_pipeline_run_stopped_by_sigterm_resumes_to_the_uninterrupted_run(corpus_config, pipeline_run):
    reference, _ = pipeline_run
    run_dir = corpus_config.parent / "stopped"
    args = ["train.distributed=pipeline", "train.checkpoint_every=0"]  # only the checkpoint the signal asks for
    proc = launch(2, "train", str(corpus_config), "--output-dir", str(run_dir), *args)
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").is_file() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 4:
        assert time.monotonic() < deadline and proc.poll() is None, finish(proc)[1]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)  # every process of the job gets it, as from a scheduler
    code, out = finish(proc)
    (step,) = complete_steps(run_dir / "checkpoints")
    assert 0 < step < 40 and "resume with: torchrun --nproc-per-node 2 -m tunelab resume" in out, out
    code, out = finish(launch(2, "resume", str(run_dir)))
    assert code == 0, out
    a, b = weights(run_dir), weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged(run_dir, "train") == logged(reference, "train")
    assert logged(run_dir, "eval") == logged(reference, "eval")


def test_a_model_that_is_not_a_gpt_is_one_clear_error(corpus_config, helpers, tmp_path):
    # a scratch:gpt classification run builds a GPTClassifier: past the config check, refused at the split
    from tunelab.config import config_from_dict, dump_config

    data = helpers.write_jsonl(tmp_path / "train.jsonl", helpers.synthetic_records(6))
    cfg = config_from_dict({
        "task": "classification",
        "model": {"name": "scratch:gpt", "max_length": 16, "layers": 2, "hidden_size": 16, "heads": 2,
                  "tokenizer": str(corpus_config.parent / "bpe")},
        "data": {"train": str(data), "val_fraction": 0.2, "test_fraction": 0.2},
        "train": {"max_steps": 2, "device": "cpu", "precision": "fp32", "distributed": "pipeline"},
        "output_dir": str(tmp_path / "run")})
    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    code, out = finish(launch(2, "train", str(tmp_path / "c.yaml")))
    assert code != 0
    line = ("train.distributed: pipeline is for scratch GPTs (task: pretrain, model.name: scratch:gpt or a "
            "scratch GPT folder); this run's model is a GPTClassifier: use train.distributed: ddp or fsdp")
    assert f"error: {line}" in out and not re.search(r'File ".*/tunelab/', out), out  # no traceback of ours
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing left behind
