"""Prompts at generation fit the MODEL's context, not the training `model.max_length`.

A tiny Llama with 64 positions, trained on 16-token examples, generating up to 16 new tokens: a 20-token
prompt must reach `generate` whole (it did not: it was cut to max_length - max_new_tokens -> 1 token), in
the test-split metrics, `predict`, `eval` and `chat`; a prompt longer than 64 - max_new_tokens is cut from
the left and counted; no room at all is a one-line error naming generate.max_new_tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from causal_helpers import write_jsonl
from causal_tiny import make_tokenizer
from tunelab.config import config_from_dict
from tunelab.errors import TunelabError

CONTEXT = 64
PROMPT = "Question: add 2 and 3"  # 21 characters: one token each with the tiny character tokenizer
QUIET = lambda *a, **k: None  # noqa: E731


def short_context_model(folder: Path) -> Path:
    """The tiny tokenizer + a 2-layer random Llama with only CONTEXT positions, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    return short_context_model(tmp_path_factory.mktemp("llama-64"))


@pytest.fixture
def seen(monkeypatch) -> list[list[int]]:
    """Every prompt handed to generation (the real generation still runs)."""
    import tunelab.generation as generation

    prompts: list[list[int]] = []
    real = generation.generate_texts

    def spy(model, tokenizer, batch, kwargs, *args, **kw):
        prompts.extend(list(p) for p in batch)
        return real(model, tokenizer, batch, kwargs, *args, **kw)

    monkeypatch.setattr(generation, "generate_texts", spy)
    return prompts


def prompt_ids() -> list[int]:
    ids = make_tokenizer()(PROMPT, add_special_tokens=True)["input_ids"]
    assert len(ids) == len(PROMPT) > 16
    return ids


def test_model_context_reads_the_config_then_the_tokenizer(small_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.generation import model_context

    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(str(small_dir))
    assert model_context(model, tok) == CONTEXT
    tok.model_max_length = 40
    assert model_context(object(), tok) == 40  # no config: the tokenizer's limit
    tok.model_max_length = int(1e30)  # transformers' "no limit stated"
    assert model_context(object(), tok) is None


def test_prompts_are_cut_from_the_left_counted_and_never_to_nothing():
    from tunelab.generation import fit_prompts, truncate_prompt

    ids = list(range(20))
    assert truncate_prompt(ids, CONTEXT, 16) == ids  # 20 + 16 <= 64: whole
    assert truncate_prompt(ids, CONTEXT, 50) == ids[-14:]  # the start goes, the question's end stays
    assert truncate_prompt(ids, None, 500) == ids  # no stated limit: nothing to cut
    fitted, cut = fit_prompts([ids, ids[:5]], CONTEXT, 50)
    assert fitted == [ids[-14:], ids[:5]] and cut == 1
    with pytest.raises(TunelabError, match=r"generate\.max_new_tokens: got 64.*below 64"):
        truncate_prompt(ids, CONTEXT, 64)


def test_generation_eval_sends_whole_prompts_and_counts_cut_ones(small_dir, seen):
    from transformers import AutoModelForCausalLM

    from tunelab.config import GenerateConfig
    from tunelab.data.encoding import encode_records
    from tunelab.tasks.causal_lm import generation_eval

    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(str(small_dir))
    records = [{"prompt": PROMPT, "completion": " 5"}] * 2
    data = encode_records(tok, records, "prompt_completion", max_length=16, train_on_prompt=True, source="t")
    metrics, samples = generation_eval(model, tok, data, gen_cfg=GenerateConfig(max_new_tokens=16),
                                       batch_size=2, device=torch.device("cpu"))
    assert seen == [prompt_ids()] * 2 and metrics["prompts_cut"] == 0 and len(samples) == 2
    seen.clear()
    logs: list[str] = []
    metrics, _ = generation_eval(model, tok, data, gen_cfg=GenerateConfig(max_new_tokens=50), batch_size=2,
                                 device=torch.device("cpu"), log=logs.append)
    assert seen == [prompt_ids()[-14:]] * 2 and metrics["prompts_cut"] == 2
    assert logs == ["generation: 2 of 2 prompts cut from the left to fit the model's context of 64 tokens "
                    "with generate.max_new_tokens 50"]


@pytest.fixture(scope="module")
def short_run(small_dir, tmp_path_factory) -> Path:
    """One step of training with model.max_length 16 and generate.max_new_tokens 16; test prompts of 21."""
    from tunelab.run import train

    base = tmp_path_factory.mktemp("short-run")
    train_file = write_jsonl(base / "train.jsonl", [{"prompt": f"{i}+1=", "completion": str(i + 1)}
                                                    for i in range(8)])
    test_file = write_jsonl(base / "test.jsonl", [{"prompt": PROMPT, "completion": " 5"}] * 2)
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(small_dir), "max_length": 16},
        "data": {"train": str(train_file), "test": str(test_file), "format": "prompt_completion",
                 "train_on_prompt": True},
        "method": {"name": "full"}, "train": {"max_steps": 1, "batch_size": 4},
        "generate": {"max_new_tokens": 16, "samples_in_eval": 2}, "output_dir": str(base / "run")})
    return train(cfg, show_progress=False, log=QUIET)


def test_test_split_predict_and_eval_generate_from_whole_prompts(short_run, seen):
    from tunelab.runs import evaluate_run, predict_records

    test = json.loads((short_run / "eval.json").read_text())["test"]
    assert test["prompts_cut"] == 0 and test["generated"] == 2
    assert test["samples"][0]["prompt"] == PROMPT
    out = predict_records(short_run, [{"prompt": PROMPT}], "t", log=QUIET)
    assert seen == [prompt_ids()] and isinstance(out[0]["generated"], str)
    seen.clear()
    metrics, _ = evaluate_run(short_run, log=QUIET)
    assert seen == [prompt_ids()] * 2 and metrics["prompts_cut"] == 0


def test_training_time_generation_gets_whole_prompts(small_dir, tmp_path, seen):
    """The test split of a run is generated from the same whole prompts (checked at the generate call)."""
    from tunelab.run import train

    train_file = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"{i}+1=", "completion": str(i + 1)}
                                                       for i in range(8)])
    test_file = write_jsonl(tmp_path / "test.jsonl", [{"prompt": PROMPT, "completion": " 5"}])
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(small_dir), "max_length": 16},
        "data": {"train": str(train_file), "test": str(test_file), "format": "prompt_completion",
                 "train_on_prompt": True},
        "method": {"name": "lora"}, "train": {"max_steps": 1, "batch_size": 4},
        "generate": {"max_new_tokens": 16, "samples_in_eval": 1}, "output_dir": str(tmp_path / "run")})
    train(cfg, show_progress=False, log=QUIET)
    assert seen == [prompt_ids()]


def test_chat_passes_the_model_context(small_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    import tunelab.generation as generation

    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(str(small_dir))
    sent: list[list[int]] = []
    monkeypatch.setattr(generation, "stream_reply", lambda m, t, prompt, kw, device="cpu": sent.append(prompt)
                        or "ok")
    kwargs = generation.generation_kwargs(tok, model, max_new_tokens=16)
    generation.chat_loop(model, tok, kwargs, max_length=16, lines=["what is two plus three?", "/exit"],
                         write=QUIET)
    text = tok.apply_chat_template([{"role": "user", "content": "what is two plus three?"}], tokenize=False,
                                   add_generation_prompt=True)
    whole = tok(text, add_special_tokens=False)["input_ids"]
    assert len(whole) > 16 and sent == [whole]


def test_no_room_to_generate_is_an_error_before_training_and_in_predict(small_dir, tmp_path):
    """max_new_tokens 64 fills the whole 64-position context: `train` refuses before training (nothing is
    left behind), `samples_in_eval: 0` trains, and predict on that run is a one-line error naming the setting."""
    from tunelab.runs import predict_records
    from tunelab.run import train

    train_file = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"{i}+1=", "completion": str(i + 1)}
                                                       for i in range(8)])
    data = {
        "task": "causal_lm", "model": {"name": str(small_dir), "max_length": 16},
        "data": {"train": str(train_file), "test": str(train_file), "format": "prompt_completion"},
        "method": {"name": "full"}, "train": {"max_steps": 1, "batch_size": 4},
        "generate": {"max_new_tokens": CONTEXT, "samples_in_eval": 2}, "output_dir": str(tmp_path / "run")}
    logs: list[str] = []
    with pytest.raises(TunelabError, match=r"generate\.max_new_tokens: got 64.*set generate\.max_new_tokens below 64"):
        train(config_from_dict(data), show_progress=False, log=logs.append)
    assert not any(line.startswith("training on") for line in logs)  # refused before the loop
    assert not (tmp_path / "run").exists()
    data["generate"]["samples_in_eval"] = 0
    run = train(config_from_dict(data), show_progress=False, log=QUIET)
    test = json.loads((run / "eval.json").read_text())["test"]
    assert "loss" in test and "exact_match" not in test
    with pytest.raises(TunelabError, match=r"set generate\.max_new_tokens below 64"):
        predict_records(run, [{"prompt": PROMPT}], "t", log=QUIET)
