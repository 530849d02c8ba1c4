"""Causal LM attributions: which prompt tokens drove each generated token (captum's LLM attribution) on a tiny
Llama run: the matrix's shape and tokens, ablation scores against a hand computation, IG's completeness, the
chat template's tokens held fixed, the CPU caps."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.explain.generative import baseline_id, explain_generation, greedy_tokens, prompt_ids
from tunelab.runs import load_run

PROMPT = "Add 2 and 3."  # the tiny tokenizer has one token per character: 12 prompt tokens


@pytest.fixture(scope="module")
def chat_run(llama_run_dir):
    """The tiny Llama causal_lm run of conftest.py (alpaca records: a chat format, prompts go through its
    template), loaded."""
    run = load_run(llama_run_dir)
    assert run.meta["format"] == "alpaca"
    return run


def log_probs(model, ids: list[int], new: list[int]) -> torch.Tensor:
    """log p(new_i | ids, new_<i) for each i, from one forward pass over ids + new."""
    with torch.no_grad():
        logits = model(torch.tensor([ids + new])).logits[0]  # (T, V)
    rows = logits[len(ids) - 1: len(ids) - 1 + len(new)].log_softmax(-1)  # (G, V)
    return rows[torch.arange(len(new)), torch.tensor(new)]


def test_a_chat_prompt_attributes_the_users_tokens_only(chat_run):
    p = prompt_ids(chat_run, PROMPT)
    text = "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n"  # the tiny ChatML template
    assert chat_run.tokenizer.decode(p.ids) == text and p.chat
    user = [i for i, a in enumerate(p.attributed) if a]
    assert user == list(range(6, 18))  # after <|im_start|> u s e r \n; the rest of the template is fixed
    assert [PROMPT[a:b] for a, b in p.offsets] == ["A", "d", "d", "", "2", "", "a", "n", "d", "", "3", "."]


def test_ablation_matrix_is_generated_by_prompt_and_matches_a_hand_computation(chat_run):
    expl = explain_generation(chat_run, PROMPT, max_new_tokens=4)
    p = prompt_ids(chat_run, PROMPT)
    new = greedy_tokens(chat_run.model, chat_run.tokenizer, p.ids, 4)
    assert expl.generated_tokens == chat_run.tokenizer.convert_ids_to_tokens(new) and len(new) == 4
    assert len(expl.scores) == 4 and all(len(row) == 12 for row in expl.scores)  # (generated, prompt)
    assert [t.text for t in expl.prompt_tokens] == ["A", "d", "d", "", "2", "", "a", "n", "d", "", "3", "."]
    assert expl.method == "ablation" and expl.seconds > 0
    assert expl.settings == {"target": "greedy", "max_new_tokens": 4, "baseline": "<|pad|>", "chat_template": True,
                             "fixed_tokens": 19, "units": "log-probability"}
    # score[i][j] = log p(g_i) - log p(g_i) with prompt token j replaced by the pad token, for the "2" (j = 4)
    position = [i for i, a in enumerate(p.attributed) if a][4]
    ablated = list(p.ids)
    ablated[position] = chat_run.tokenizer.pad_token_id
    drop = log_probs(chat_run.model, p.ids, new) - log_probs(chat_run.model, ablated, new)
    assert [row[4] for row in expl.scores] == pytest.approx(drop.tolist(), abs=1e-5)
    assert any(abs(d) > 1e-4 for d in drop.tolist())  # the token matters at all: the check can fail
    # a prompt token's own score is its column's sum (the whole generated text)
    assert expl.prompt_tokens[4].score == pytest.approx(sum(drop.tolist()), abs=1e-5)


def test_ig_scores_are_finite_and_add_up_to_the_log_probability_change(chat_run):
    expl = explain_generation(chat_run, PROMPT, max_new_tokens=3, method="ig", steps=32)
    scores = torch.tensor(expl.scores)
    assert scores.shape == (3, 12) and torch.isfinite(scores).all() and scores.abs().max() > 0
    assert expl.settings["steps"] == 32
    p = prompt_ids(chat_run, PROMPT)
    new = chat_run.tokenizer.convert_tokens_to_ids(expl.generated_tokens)
    baseline = [chat_run.tokenizer.pad_token_id if a else t for t, a in zip(p.ids, p.attributed)]
    change = log_probs(chat_run.model, p.ids, new) - log_probs(chat_run.model, baseline, new)
    # completeness: each row sums to log p(g_i | prompt) - log p(g_i | baseline prompt), within IG's error
    assert scores.sum(dim=1).tolist() == pytest.approx(change.tolist(), abs=1e-4)
    assert change.abs().min() > 5e-3  # so 1e-4 is a real check


def test_a_given_target_is_explained_instead_of_generating(chat_run):
    expl = explain_generation(chat_run, PROMPT, target="2 + 3 = 5")
    assert expl.generated == "2 + 3 = 5" and len(expl.generated_tokens) == 9
    assert len(expl.scores) == 9 and expl.settings["target"] == "given"


def test_a_plain_prompt_run_attributes_every_token_but_the_special_ones(chat_run):
    run = dataclasses.replace(chat_run, meta={"format": "prompt_completion"})
    p = prompt_ids(run, PROMPT)
    assert not p.chat and p.ids == chat_run.tokenizer(PROMPT)["input_ids"] and all(p.attributed)
    expl = explain_generation(run, PROMPT, max_new_tokens=2, method="occlusion")  # = ablation, one token
    assert expl.method == "ablation" and expl.settings["fixed_tokens"] == 0
    assert len(expl.scores) == 2 and len(expl.scores[0]) == 12


def test_the_cpu_caps_are_one_clear_error(chat_run):
    with pytest.raises(TunelabError, match=r"prompt has 12 tokens to attribute, over the cap of 8 .*"
                                           r"prompt tokens x generated tokens .*--max-prompt-tokens 12"):
        explain_generation(chat_run, PROMPT, max_prompt_tokens=8)
    with pytest.raises(TunelabError, match=r"max_new_tokens 40 is over the cap of 32 generated tokens .*"
                                           r"--max-generated-tokens 40"):
        explain_generation(chat_run, PROMPT, max_new_tokens=40)
    with pytest.raises(TunelabError, match="target's token count 9 is over the cap of 4"):
        explain_generation(chat_run, PROMPT, target="2 + 3 = 5", max_generated_tokens=4)
    with pytest.raises(TunelabError, match=r"explained by ablation or ig \(occlusion = ablation\); got .lime."):
        explain_generation(chat_run, PROMPT, method="lime")


def test_a_classification_run_is_refused(tiny_bert, data_dir, tmp_path, helpers):
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "run")
    run = load_run(helpers.train_quietly(cfg))
    with pytest.raises(TunelabError, match="is a classification run; explaining generated tokens needs a causal"):
        explain_generation(run, "the team")


def test_the_baseline_is_the_pad_token_unless_it_is_the_end_of_sequence():
    from types import SimpleNamespace

    assert baseline_id(SimpleNamespace(pad_token_id=0, eos_token_id=3, unk_token_id=1)) == 0
    # SmolLM2: no pad token of its own, so tunelab pads with <|im_end|> (2); <|endoftext|> (0) stands in
    assert baseline_id(SimpleNamespace(pad_token_id=2, eos_token_id=2, unk_token_id=0)) == 0
    assert baseline_id(SimpleNamespace(pad_token_id=2, eos_token_id=2, unk_token_id=None)) == 2
