"""`tunelab pretrain`: blocks, perplexity going down, the RUN_DIR, and the pretrained body fine-tuning."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunelab.errors import ConfigError, TunelabError
from tunelab.models.scratch import GPTClassifier, build_scratch_classifier, is_scratch_dir, load_scratch
from tunelab.cli.train import add_commands
from tunelab.data.corpus import make_blocks
from tunelab.data.splits import split_indices
from tunelab.tasks.pretrain import pretrain

BODY_PARAM = "decoder.layers.0.self_attn.q_proj.weight"
# Losses logged at steps 5, 10, 15 of `pretrained` (seed 0, lr 5e-3, BPE tokenizer), torch 2.13 CPU, one thread.
PINNED_LOSSES = [5.760531320879537, 4.380998111134036, 3.6085638377292097]


def test_blocks_predict_every_token_but_the_first_once():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    blocks = make_blocks(docs, eos_id=0, block_size=4)
    assert blocks == [[1, 2, 3, 0], [0, 4, 5, 0], [0, 6, 7, 8], [8, 9, 0]]
    targets = [t for b in blocks for t in b[1:]]
    assert targets == [2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0]  # the stream without its first token
    assert make_blocks([[5]], 0, 4) == [[5, 0]] and make_blocks([], 0, 4) == []


def test_document_splits_are_seeded_and_disjoint():
    def split_documents(n, val, test, seed):  # how pretraining splits its documents
        return split_indices(n, val, test, seed, draw="once")

    parts = split_documents(20, 0.1, 0.2, seed=3)
    assert [len(parts[n]) for n in ("train", "validation", "test")] == [14, 2, 4]
    assert sorted(sum(parts.values(), [])) == list(range(20))
    assert split_documents(20, 0.1, 0.2, seed=3) == parts != split_documents(20, 0.1, 0.2, seed=4)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, story_corpus, bpe_dir, configs, helpers):
    """40 steps of a 2-layer GPT on the story corpus: (RUN_DIR, spy dict)."""
    cfg = configs.pretrain(story_corpus, bpe_dir, tmp_path_factory.mktemp("pretrain") / "run")
    with pytest.MonkeyPatch.context() as mp:
        seen = helpers.spy_on_training(mp)
        run_dir = pretrain(cfg, show_progress=False, log=helpers.quiet)
    return run_dir, seen


def test_first_losses_are_pinned(pretrained, helpers):
    losses = [r["loss"] for r in helpers.read_metrics(pretrained[0], "train")][:3]
    assert losses == pytest.approx(PINNED_LOSSES, abs=1e-4)


def test_pretraining_lowers_validation_perplexity(pretrained, helpers):
    run_dir, _ = pretrained
    evals = helpers.read_metrics(run_dir, "eval")
    assert {10, 20, 30, 40} <= {e["step"] for e in evals}  # eval_every 10, and at each epoch's end
    perplexity = [e["perplexity"] for e in evals]
    assert perplexity == sorted(perplexity, reverse=True)
    assert perplexity[-1] < 0.2 * perplexity[0] and perplexity[-1] < 12  # 300 tokens: a uniform guess is 300
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["test"]["perplexity"] < 12 and summary["test"]["tokens"] > 0
    assert len(summary["samples"]) == 3 and all(s["generated"] for s in summary["samples"])


def test_the_run_dir_holds_a_reloadable_scratch_gpt(pretrained):
    run_dir, seen = pretrained
    assert all((run_dir / f).is_file() for f in ("config.yaml", "metrics.jsonl", "eval.json", "report.html"))
    assert is_scratch_dir(run_dir / "model") and "Samples" in (run_dir / "report.html").read_text()
    model, tokenizer = load_scratch(run_dir / "model")
    ids = tokenizer("the cat chases the", return_tensors="pt")["input_ids"]
    seen["model"].eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, seen["model"](ids).logits)


def test_the_pretrained_body_fine_tunes_as_a_classifier(pretrained, scratch_data, configs, helpers, tmp_path):
    run_dir, _ = pretrained
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    cfg = configs.classify(str(run_dir / "model"), scratch_data / "train.jsonl", tmp_path / "clf",
                           overrides={"model.max_length": 32, "train.max_steps": 3})
    clf_dir, seen = helpers.train_and_capture(cfg)
    assert isinstance(seen["model"], GPTClassifier)
    before = seen["before"]
    assert set(before) == {n for n in saved if n != "lm_head.weight"} | {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(before[n], saved[n]) for n in saved if n in before)  # the body was loaded, not random
    assert not torch.equal(seen["model"].state_dict()[BODY_PARAM], saved[BODY_PARAM])  # and it trained
    model, _ = load_scratch(clf_dir / "model")
    assert isinstance(model, GPTClassifier) and model.config["num_labels"] == 3


def test_freeze_trains_only_the_top_layers_of_the_pretrained_body(pretrained, scratch_data, configs, helpers,
                                                                  tmp_path):
    run_dir, _ = pretrained
    cfg = configs.classify(str(run_dir / "model"), scratch_data / "train.jsonl", tmp_path / "clf",
                           overrides={"model.max_length": 32, "train.max_steps": 2, "method.name": "freeze",
                                      "method.trainable_layers": 1})
    _, seen = helpers.train_and_capture(cfg)
    moved = {n for n, p in seen["model"].named_parameters() if not torch.equal(p.detach(), seen["before"][n])}
    assert moved and all(n.startswith(("decoder.layers.1.", "decoder.norm.", "classifier.")) for n in moved)


@pytest.mark.parametrize("overrides, message", [
    ({"model.max_length": 64}, "64 exceeds the 32 positions"),
    ({"model.tokenizer": "builtin:minilm-l6"}, "keeps its own tokenizer; remove model.tokenizer"),
])
def test_a_saved_model_refuses_what_does_not_fit_it(pretrained, configs, tmp_path, overrides, message):
    cfg = configs.classify(str(pretrained[0] / "model"), tmp_path, tmp_path, overrides=overrides)
    with pytest.raises(TunelabError, match=message):
        build_scratch_classifier(cfg.model, ["x", "y"])


def test_pretraining_goes_on_from_a_saved_gpt(pretrained, story_corpus, configs, helpers, tmp_path):
    run_dir, _ = pretrained
    cfg = configs.pretrain(story_corpus, None, tmp_path / "more",
                           {"model.name": str(run_dir / "model"), "train.max_steps": 1})
    with pytest.MonkeyPatch.context() as mp:
        seen = helpers.spy_on_training(mp)
        pretrain(cfg, show_progress=False, log=helpers.quiet)
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    assert torch.equal(seen["before"][BODY_PARAM], saved[BODY_PARAM])


def test_a_single_text_file_is_split_by_blocks(tmp_path, bpe_dir, configs, helpers):
    (tmp_path / "one.txt").write_text(" ".join(configs.stories(30)))
    logs = []
    cfg = configs.pretrain(tmp_path / "one.txt", bpe_dir, tmp_path / "run", {"train.max_steps": 1})
    run_dir = pretrain(cfg, show_progress=False, log=logs.append)
    assert any("splitting" in m and "blocks instead" in m for m in logs)
    assert json.loads((run_dir / "eval.json").read_text())["test"]["tokens"] > 0


def test_config_mistakes_are_reported_together(story_corpus, configs, tmp_path):
    cfg = configs.pretrain(story_corpus, None, tmp_path / "run",
                           {"task": "classification", "method.name": "lora", "train.early_stopping.metric": "f1_macro"})
    with pytest.raises(ConfigError) as err:
        pretrain(cfg, show_progress=False)
    assert [p.split(":")[0] for p in err.value.problems] == ["task", "method.name", "train.early_stopping.metric"]
    assert not (tmp_path / "run").exists()
    cfg = configs.pretrain(story_corpus, None, tmp_path / "run", {"model.name": "scratch:lstm"})
    with pytest.raises(TunelabError, match="model.name: got 'scratch:lstm'"):
        pretrain(cfg, show_progress=False)


def test_the_command_line(story_corpus, bpe_dir, configs, tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(configs.pretrain(story_corpus, bpe_dir, tmp_path / "unused").to_dict()))
    parser = argparse.ArgumentParser(prog="tunelab")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pretrain", str(config), "train.max_steps=1", "train.eval_every=null",
                              "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert args.func(args) == 0
    assert is_scratch_dir(tmp_path / "run" / "model")


def test_tunelab_train_pretrains_a_scratch_gpt_too(story_corpus, bpe_dir, configs, helpers, tmp_path):
    cfg = configs.pretrain(story_corpus, bpe_dir, tmp_path / "run",
                           {"train.max_steps": 1, "train.early_stopping.metric": None})
    run_dir = helpers.train_quietly(cfg)
    assert is_scratch_dir(run_dir / "model") and "perplexity" in json.loads((run_dir / "eval.json").read_text())["test"]


def test_eval_or_predict_on_a_pretrain_run_says_how_to_use_it(pretrained):
    from tunelab.errors import TunelabError
    from tunelab.runs import evaluate_run, load_run, predict_records

    run_dir, _ = pretrained
    assert load_run(run_dir).task.name == "pretrain"  # any finished run loads
    for use in (lambda: evaluate_run(run_dir), lambda: predict_records(run_dir, None, "--text", texts=["x"])):
        with pytest.raises(TunelabError, match="fine-tune it with model.name"):
            use()


def test_lora_on_a_scratch_model_is_a_clear_error():
    from tunelab.errors import TunelabError
    from tunelab.methods import apply_method
    from tunelab.nn import build_scratch_model

    model = build_scratch_model("lstm", vocab_size=50, num_labels=2)
    with pytest.raises(TunelabError, match="lora needs a Hugging Face model"):
        apply_method("lora", model, {"classifier.weight"})


def test_pretraining_evaluation_shows_progress(monkeypatch, capsys):
    """The scratch GPT's validation (evaluate_blocks) reports batches like every other long step."""
    import torch

    from tunelab.nn.models import GPT
    from tunelab.tasks.pretrain import evaluate_blocks
    from tunelab.train import logging as tl_logging

    for name, value in (("PLAIN_MIN_S", 0.0), ("PLAIN_MAX_S", 0.0), ("_enabled", True)):
        monkeypatch.setattr(tl_logging, name, value)  # every line, even for millisecond batches
    torch.manual_seed(0)
    model = GPT(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, max_position=16)
    rows = [[(i * 7 + j) % 50 for j in range(12)] for i in range(5)]
    metrics = evaluate_blocks(model, rows, 2, 0, torch.device("cpu"))
    assert metrics["tokens"] == 5 * 11
    err = capsys.readouterr().err
    assert "evaluate: 1/3 batches (33%)" in err and "evaluate: 3/3 batches in " in err and "\r" not in err
