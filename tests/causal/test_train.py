"""Training a tiny random Llama end to end: pinned losses, what each method trains, saving, merging,
reloading with plain transformers / peft, and the predict / eval / merge / chat / preview commands."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from causal_helpers import alpaca_records, chat_records, write_jsonl
from tunelab.config import config_from_dict
from tunelab.run import train

QUIET = lambda *a, **k: None  # noqa: E731


def make_cfg(model_dir: Path, data: Path, out: Path, **over) -> object:
    cfg = {"task": "causal_lm", "model": {"name": str(model_dir), "max_length": 128},
           "data": {"train": str(data)}, "method": {"name": "full"},
           "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "log_every": 1, "scheduler": "constant",
                     "device": "cpu",  # the pinned losses are CPU figures (tests/test_cuda.py covers GPUs)
                     "early_stopping": {"metric": "loss"}},
           "generate": {"max_new_tokens": 8, "samples_in_eval": 0}, "output_dir": str(out)}
    for key, value in over.items():
        section, name = key.split("__")
        cfg[section][name] = value
    if cfg["method"]["name"] == "freeze":  # method.trainable_layers applies to freeze only
        cfg["method"].setdefault("trainable_layers", 1)
    return config_from_dict(cfg)


def train_losses(run_dir: Path) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["kind"] == "train"]


@pytest.fixture(scope="module")
def alpaca_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "alpaca.jsonl", alpaca_records(40))


@pytest.mark.parametrize("packing,expected", [(False, [4.636341, 4.325615, 3.966472]),
                                              (True, [4.646402, 4.344911, 3.961477])])
def test_first_losses_are_pinned(tiny_dir, alpaca_file, tmp_path, packing, expected):
    run = train(make_cfg(tiny_dir, alpaca_file, tmp_path / "run", data__packing=packing), show_progress=False,
                log=QUIET)
    assert train_losses(run) == pytest.approx(expected, abs=2e-5)
    summary = json.loads((run / "eval.json").read_text())
    assert set(summary["best_validation"]) >= {"loss", "perplexity"}
    assert summary["test"]["perplexity"] == pytest.approx(2.718281828 ** summary["test"]["loss"], rel=1e-9)


def moved(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_freeze_trains_only_the_top_layer_and_final_norm(tiny_dir, alpaca_file, tmp_path):
    run = train(make_cfg(tiny_dir, alpaca_file, tmp_path / "run", method__name="freeze"), show_progress=False,
                log=QUIET)
    before = load_file(str(tiny_dir / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    top = {k for k in before if k.startswith("model.layers.1.") or k == "model.norm.weight"}
    assert moved(before, after) == top


def test_full_trains_every_parameter(tiny_dir, alpaca_file, tmp_path):
    run = train(make_cfg(tiny_dir, alpaca_file, tmp_path / "run"), show_progress=False, log=QUIET)
    before = load_file(str(tiny_dir / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    assert moved(before, after) == set(before)


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory) -> Path:
    """A multi-turn chat LoRA run with merge and generation metrics."""
    base = tmp_path_factory.mktemp("lora")
    data = write_jsonl(base / "chat.jsonl", chat_records(30))
    cfg = make_cfg(tiny_dir, data, base / "run", method__name="lora", method__merge=True,
                   method__target_modules="all-linear", generate__samples_in_eval=3)
    return train(cfg, show_progress=False, log=QUIET)


def logits_of(model, tok, texts=("<|im_start|>user\nCount to 3.<|im_end|>\n", "hello world")) -> torch.Tensor:
    batch = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits


def test_lora_run_writes_metrics_samples_report_and_a_merged_model(lora_run, tok):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    summary = json.loads((lora_run / "eval.json").read_text())
    test = summary["test"]
    assert {"loss", "perplexity", "exact_match", "token_f1", "rouge_l", "chrf", "generated"} <= set(test)
    assert test["generated"] == 3 and len(test["samples"]) == 3
    assert summary["merge_max_abs_logit_diff"] < 1e-4
    assert "Sample generations (test)" in (lora_run / "report.html").read_text()
    assert json.loads((lora_run / "data_format.json").read_text())["format"] == "messages"
    adapter = AutoPeftModelForCausalLM.from_pretrained(str(lora_run / "model")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(lora_run / "merged")).eval()
    a, m = logits_of(adapter, tok), logits_of(merged, tok)
    assert (a - m).abs().max() < 1e-4
    base = AutoModelForCausalLM.from_pretrained(str(lora_run / "base")).eval()
    assert (a - logits_of(base, tok)).abs().max() > 1e-4  # the adapter learned something


def test_adapter_reloads_identically(tiny_dir, alpaca_file, tmp_path):
    from peft import AutoPeftModelForCausalLM

    from tunelab.tasks.causal_lm import CausalLMJob

    cfg = make_cfg(tiny_dir, alpaca_file, tmp_path / "run", method__name="lora")
    job = CausalLMJob(cfg, torch.device("cpu"), QUIET)
    job.prepare()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in job.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # as if trained: LoRA B starts at zero
    (tmp_path / "run").mkdir()
    job.save(tmp_path / "run" / "model", tmp_path / "run")
    job.model.eval()
    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "run" / "model")).eval()
    assert torch.equal(logits_of(job.model, job.tokenizer), logits_of(reloaded, job.tokenizer))


def test_predict_eval_merge_commands(lora_run, tmp_path, capsys):
    from tunelab.cli import use
    from tunelab.runs import run_task

    inp = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Count to 2."},
                                              {"messages": [{"role": "user", "content": "hi"}]}][:1])
    out = tmp_path / "out.jsonl"
    assert run_task(str(lora_run)).name == "causal_lm"
    assert use.cmd_predict(argparse.Namespace(run_dir=str(lora_run), input=str(inp), output=str(out),
                                                        text=None)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["instruction"] == "Count to 2." and isinstance(rows[0]["generated"], str)
    assert use.cmd_predict(argparse.Namespace(run_dir=str(lora_run), input=None, output=None,
                                                        text=["Count to 4."])) == 0
    assert '"generated"' in capsys.readouterr().out
    assert use.cmd_eval(argparse.Namespace(run_dir=str(lora_run), data=None)) == 0
    metrics = json.loads((lora_run / "eval-test.json").read_text())
    assert metrics["loss"] == pytest.approx(json.loads((lora_run / "eval.json").read_text())["test"]["loss"],
                                            rel=1e-5)
    assert use.cmd_merge(argparse.Namespace(run_dir=str(lora_run))) == 0
    assert "max |logit difference|" in capsys.readouterr().out


def test_chat_loop_streams_and_keeps_history(lora_run, capsys):
    from tunelab.generation import chat_loop, generation_kwargs
    from tunelab.runs import load_run

    run = load_run(lora_run)
    model, tok = run.model, run.tokenizer
    kwargs = generation_kwargs(tok, model, max_new_tokens=5)
    messages = chat_loop(model, tok, kwargs, system="Be brief.", lines=["hi", "/reset", "again", "/exit", "x"],
                         write=QUIET)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "again"
    assert messages[2]["content"] in capsys.readouterr().out  # streamed as it was generated


def test_generation_is_greedy_by_default_and_deterministic(lora_run):
    from tunelab.generation import generate_texts, generation_kwargs
    from tunelab.runs import load_run

    run = load_run(lora_run)
    model, tok = run.model, run.tokenizer
    kwargs = generation_kwargs(tok, model, max_new_tokens=6)
    assert kwargs["do_sample"] is False and tok.eos_token_id in kwargs["eos_token_id"]
    prompts = [tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"], [5, 6, 7]]
    first = generate_texts(model, tok, prompts, kwargs, batch_size=2)
    alone = [generate_texts(model, tok, [p], kwargs)[0] for p in prompts]
    assert first == alone  # left padding in a batch does not change greedy answers
    assert generate_texts(model, tok, prompts, kwargs, batch_size=2) == first  # deterministic

    def argmax_decoding(prompt: list[int]) -> str:
        """Greedy by hand: append the most likely next token until an end token or max_new_tokens."""
        ids = list(prompt)
        for _ in range(6):
            with torch.no_grad():
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token in kwargs["eos_token_id"]:
                break
            ids.append(token)
        return tok.decode(ids[len(prompt):], skip_special_tokens=True).strip()

    assert first == [argmax_decoding(p) for p in prompts]
    assert any(first)  # something was generated, so the comparison says something
    sampled = generation_kwargs(tok, model, temperature=0.7, top_p=0.9, top_k=20)
    assert sampled["do_sample"] and sampled["top_k"] == 20


def test_data_preview_marks_trained_tokens_and_shows_lengths(tiny_dir, alpaca_file, tmp_path, capsys):
    from tunelab.cli import data

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"task: causal_lm\nmodel: {{name: {tiny_dir}, max_length: 128}}\n"
                        f"data: {{train: {alpaca_file}}}\n")
    parser = argparse.ArgumentParser()
    data.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "preview", str(cfg_path), "-n", "2", "--no-color"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "format alpaca" in out and out.count("--- example") == 2
    assert "[[" in out and "]]" in out and "tokens per example" in out and "#" in out


def test_text_corpus_of_one_file_is_split_by_chunks_and_packed(tiny_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Line {i}: the quick fox counts {i * 7 % 13} sheep.\n" for i in range(120)))
    logs: list[str] = []
    cfg = make_cfg(tiny_dir, corpus, tmp_path / "run", data__packing=True, data__format="text")
    run = train(cfg, show_progress=False, log=logs.append)
    assert any("splitting" in line and "chunks instead" in line for line in logs)
    counts = {line.split(":")[0]: int(line.split(":")[1].split()[0]) for line in logs
              if line.split(":")[0] in ("train", "validation", "test") and "examples" in line}
    assert counts["validation"] >= 1 and counts["test"] >= 1 and counts["train"] > counts["test"]
    # One document cut into 128-token chunks: packed rows of 128 tokens hold them, every row but the last full.
    packing = next(line for line in logs if line.startswith("packing:")).split()
    train_line = next(line for line in logs if line.startswith("train:"))
    tokens = int(train_line.split(",")[1].split()[0])
    assert int(packing[1]) == counts["train"] and int(packing[4]) == -(-tokens // 128)
    assert json.loads((run / "eval.json").read_text())["test"]["perplexity"] > 1


def test_head_method_is_refused_with_advice(tiny_dir, alpaca_file, tmp_path):
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="use full, freeze, lora or distill"):
        train(make_cfg(tiny_dir, alpaca_file, tmp_path / "run", method__name="head"), show_progress=False,
              log=QUIET)
