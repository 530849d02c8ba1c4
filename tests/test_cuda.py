"""The CUDA path (skipped without a GPU; run them on one with `pytest -m cuda -s`): training on the GPU with
bf16 autocast, a saved model that reloads on the CPU, the CUDA random generator in checkpoints, and resume.

On a GPU a resumed run is not bit-identical to an uninterrupted one (atomic adds in some backward kernels run
in any order); the test prints the difference it measured and holds it to a tolerance.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _train(cfg, *args, **kwargs):
    from tunelab.cli import main
    from tunelab.config import dump_config

    path = Path(cfg.output_dir).with_suffix(".yaml")
    path.write_text(dump_config(cfg))
    return main(["train", str(path), "--no-progress", *args])


def test_auto_device_trains_on_the_gpu_in_bf16_and_the_model_reloads_on_the_cpu(make_config, capsys):
    from tunelab.runs import load_run, predict_records
    from tunelab.tasks.classification import make_examples, predict_proba

    cfg = make_config({"train.device": "auto", "train.precision": "auto", "train.max_steps": 30,
                       "train.lr": 3e-3})
    assert _train(cfg) == 0
    out = capsys.readouterr().out
    assert "training on cuda in bf16 mixed precision" in out
    summary = json.loads((Path(cfg.output_dir) / "eval.json").read_text())
    assert summary["test"]["accuracy"] > 0.5
    losses = [json.loads(line)["loss"] for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert losses[-1] < losses[0]
    run = load_run(cfg.output_dir)
    assert next(run.model.parameters()).device.type == "cpu"
    rows = predict_records(cfg.output_dir, None, "texts", texts=["goal match team player", "bread cheese soup"],
                           log=lambda *a: None)
    assert all(r["prediction"] in ("food", "sport", "tech") for r in rows)
    # the same weights give the same probabilities on the GPU and the CPU (fp32 evaluation on both)
    ex = make_examples(run.tokenizer, [{"text": "goal match team player", "label": "sport"}], text_field="text",
                       label_field="label", label2id={"food": 0, "sport": 1, "tech": 2}, max_length=16,
                       source="t")
    on_cpu = predict_proba(run.model, ex, 8, run.tokenizer.pad_token_id, torch.device("cpu"))
    on_gpu = predict_proba(run.model.to("cuda"), ex, 8, run.tokenizer.pad_token_id, torch.device("cuda"))
    assert torch.allclose(on_cpu, on_gpu.cpu(), atol=1e-4)


def test_checkpoints_carry_the_cuda_generator():
    from tunelab.train.checkpoint import restore_rng, rng_state

    torch.cuda.manual_seed(7)
    torch.rand(1, device="cuda")
    state = rng_state()
    assert "cuda" in state
    a = torch.rand(5, device="cuda")
    restore_rng(state)
    assert torch.equal(a, torch.rand(5, device="cuda"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resumed_gpu_run_matches_within_tolerance(make_config, tmp_path, precision):
    """8 steps, then 8 more (constant schedule) against 16 in one go, on the GPU."""
    settings = {"train.device": "cuda", "train.precision": precision, "train.scheduler": "constant",
                "train.checkpoint_every": 4, "train.eval_every": 4, "train.epochs": 10}
    short = make_config({**settings, "train.max_steps": 8, "output_dir": str(tmp_path / "run")})
    long = make_config({**settings, "train.max_steps": 16, "output_dir": str(tmp_path / "long")})
    assert _train(short) == 0
    assert _train(short, "--resume", "train.max_steps=16") == 0
    assert _train(long) == 0
    a = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "long" / "model" / "model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"\nGPU {precision}: resumed vs uninterrupted, max |weight difference| = {diff:.3e}", file=sys.stderr)
    assert diff <= (1e-5 if precision == "fp32" else 1e-3)


def test_lora_on_a_causal_lm_trains_and_generates_on_the_gpu(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "causal"))
    from causal_tiny import write_tiny_model

    from tunelab.config import config_from_dict

    model = write_tiny_model(tmp_path / "tiny-llama")
    rows = [{"instruction": f"say {w}", "output": f"{w} {w}!"} for w in ("cat", "dog", "owl", "emu") * 8]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(model), "max_length": 48},
        "data": {"train": str(tmp_path / "d.jsonl"), "format": "alpaca"},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 30, "batch_size": 8, "lr": 1e-2, "device": "cuda", "warmup_steps": 0},
        "generate": {"max_new_tokens": 6, "samples_in_eval": 4},
        "output_dir": str(tmp_path / "run")})
    assert _train(cfg) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < losses[0]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["test"]["samples"]
