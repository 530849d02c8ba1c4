"""The real SmolLM2-135M-Instruct: conversion from the packaged GGUF, a greedy answer, a few LoRA steps.

Uses the default cache ($TUNELAB_HOME or ~/.cache/tunelab): the first run converts (~30-40 s), later runs
load the cached safetensors in about a second.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    from tunelab.models.build import load_causal_lm_and_tokenizer

    t0 = time.perf_counter()
    model, tok = load_causal_lm_and_tokenizer("builtin:smollm2-135m-instruct")
    print(f"SmolLM2 ready in {time.perf_counter() - t0:.1f}s")
    return model.eval(), tok


def test_converted_model_answers_greedily(smollm2):
    from tunelab.generation import generate_texts, generation_kwargs

    model, tok = smollm2
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    answer = generate_texts(model, tok, [prompt], generation_kwargs(tok, model, max_new_tokens=12))[0]
    assert "Paris" in answer


def test_cached_conversion_loads_fast(smollm2):
    from transformers import AutoModelForCausalLM

    from tunelab.models.registry import resolve_model

    t0 = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(str(resolve_model("builtin:smollm2-135m-instruct")))
    assert time.perf_counter() - t0 < 15  # ~1 s on an idle machine; generous for a busy CI box


def test_a_few_lora_steps_then_predict(smollm2, tmp_path):
    from tunelab.config import load_config
    from tunelab.runs import predict_records
    from tunelab.run import train

    cfg = load_config(ROOT / "examples" / "smollm2-lora-alpaca.yaml", [
        f"data.train={ROOT / 'examples/data/tiny-instructions.jsonl'}", "data.limit=12",
        "data.val_fraction=0.05", "data.test_fraction=0.05", "model.max_length=96", "train.max_steps=3",
        "train.batch_size=4", "train.epochs=1", "generate.max_new_tokens=8", "generate.samples_in_eval=1",
        "method.merge=false", f"output_dir={tmp_path / 'run'}"])
    run = train(cfg, show_progress=False)
    summary = json.loads((run / "eval.json").read_text())
    assert summary["steps"] == 3 and summary["test"]["perplexity"] < 20
    out = predict_records(run, [{"instruction": "What is 2 plus 3?"}], "test")
    assert out[0]["generated"]
    print(f"generated: {out[0]['generated']!r}")
