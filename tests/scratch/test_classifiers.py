"""Scratch classifiers through the real pipeline: `tunelab.run.train` -> RUN_DIR -> reload -> predict."""
from __future__ import annotations

import json

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.runs import predict_records
from tunelab.models.scratch import GPTClassifier, build_scratch_classifier, load_scratch

KINDS = ("lstm", "gru", "rnn", "transformer", "gpt")
RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.json", "report.html")
MODEL_FILES = ("scratch_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "labels.json")


# First three logged losses (seed 0, batch 8, lr 1e-2, BPE tokenizer), torch 2.13 CPU, one thread, with
# train.fast_dropout's masks.
PINNED_LOSSES = {"lstm": [1.136703610420227, 1.0875434875488281, 1.1248221397399902],
                 "transformer": [1.0820057392120361, 1.348111867904663, 1.1636340618133545]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scratch_data, bpe_dir, configs, helpers) -> dict:
    """Each kind trained for 12 steps on the synthetic topics: kind -> (RUN_DIR, spy dict).

    With the BPE tokenizer: its training is deterministic, so the losses can be pinned (see tokenizer_train).
    """
    runs = {}
    for kind in KINDS:
        cfg = configs.classify(f"scratch:{kind}", scratch_data / "train.jsonl",
                               tmp_path_factory.mktemp("runs") / kind, tokenizer=bpe_dir)
        runs[kind] = helpers.train_and_capture(cfg)
    return runs


@pytest.mark.parametrize("kind", KINDS)
def test_run_dir_is_complete_and_every_parameter_trained(trained, kind):
    run_dir, seen = trained[kind]
    assert all((run_dir / name).is_file() for name in RUN_FILES)
    assert all((run_dir / "model" / name).is_file() for name in MODEL_FILES)
    assert json.loads((run_dir / "model" / "scratch_config.json").read_text())["kind"] == seen["model"].scratch_kind
    moved = {n for n, p in seen["model"].named_parameters() if not torch.equal(p.detach(), seen["before"][n])}
    assert moved == set(seen["before"])  # method full: the embedding, the body and the head all train


@pytest.mark.parametrize("kind", sorted(PINNED_LOSSES))
def test_first_losses_are_pinned(trained, kind, helpers):
    losses = [r["loss"] for r in helpers.read_metrics(trained[kind][0], "train")][:3]
    assert losses == pytest.approx(PINNED_LOSSES[kind], abs=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_saved_model_reloads_with_identical_logits(trained, kind, helpers):
    run_dir, seen = trained[kind]
    model, tokenizer = load_scratch(run_dir / "model")
    assert not model.training
    batch = tokenizer([r["text"] for r in helpers.synthetic_records(2, seed=5)], padding=True, truncation=True,
                      max_length=16, return_tensors="pt")
    seen["model"].eval()
    with torch.no_grad():
        expected = seen["model"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_records_uses_the_saved_scratch_model(trained, kind, helpers, tmp_path):
    """The scores are the trained model's (not those of its initial weights), and they come from the run's saved
    file: a copy of the run whose saved classifier bias favours one class predicts that class everywhere."""
    import copy
    import shutil

    from safetensors.torch import load_file, save_file

    run_dir, seen = trained[kind]
    records = helpers.synthetic_records(1, seed=6)
    out = predict_records(run_dir, records, "test")
    assert [set(r) for r in out] == [{"text", "label", "prediction", "scores"}] * len(records)
    assert all(r["prediction"] in helpers.LABELS and sum(r["scores"].values()) == pytest.approx(1, abs=1e-4)
               for r in out)
    _, tokenizer = load_scratch(run_dir / "model")
    batch = tokenizer([r["text"] for r in records], padding=True, truncation=True, max_length=16, return_tensors="pt")
    initial = copy.deepcopy(seen["model"])
    initial.load_state_dict(seen["before"])
    with torch.no_grad():
        trained_probs, initial_probs = (m.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                                        .logits.softmax(-1) for m in (seen["model"], initial))  # (N, C) each
    scores = torch.tensor([list(r["scores"].values()) for r in out])  # rounded to 6 decimals
    torch.testing.assert_close(scores, trained_probs, atol=2e-6, rtol=0)
    assert float((scores - initial_probs).abs().max()) > 1e-3
    copied = shutil.copytree(run_dir, tmp_path / "copy")
    weights = load_file(str(copied / "model" / "model.safetensors"))
    favoured = list(out[0]["scores"]).index(min(out[0]["scores"], key=out[0]["scores"].get))
    weights["classifier.bias"][favoured] += 100.0
    save_file(weights, str(copied / "model" / "model.safetensors"))
    assert {r["prediction"] for r in predict_records(copied, records, "test")} == {list(out[0]["scores"])[favoured]}


def test_a_scratch_classifier_learns_the_topics(scratch_data, bpe_dir, configs, helpers, tmp_path):
    cfg = configs.classify("scratch:transformer", scratch_data / "train.jsonl", tmp_path / "run",
                           tokenizer=bpe_dir, overrides={"train.max_steps": 40, "model.dropout": 0.0})
    run_dir = helpers.train_quietly(cfg)
    first_eval = helpers.read_metrics(run_dir, "eval")[0]
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert first_eval["accuracy"] < 0.9 <= test["accuracy"]  # chance is 1/3


def test_head_method_trains_only_the_classifier(scratch_data, wordpiece_dir, configs, helpers, tmp_path):
    cfg = configs.classify("scratch:lstm", scratch_data / "train.jsonl", tmp_path / "run",
                           tokenizer=wordpiece_dir, overrides={"method.name": "head", "train.max_steps": 2})
    _, seen = helpers.train_and_capture(cfg)
    moved = {n for n, p in seen["model"].named_parameters() if not torch.equal(p.detach(), seen["before"][n])}
    assert moved == {"classifier.weight", "classifier.bias"}


def test_sizes_come_from_the_model_config(wordpiece_dir, configs, tmp_path):
    cfg = configs.classify("scratch:transformer", tmp_path / "unused.jsonl", tmp_path / "run", wordpiece_dir,
                           {"model.layers": 3, "model.hidden_size": 24, "model.heads": 3, "model.max_length": 20,
                            "model.position": "rotary"})
    model, tokenizer, head = build_scratch_classifier(cfg.model, ["x", "y"])
    assert model.config == dict(vocab_size=len(tokenizer), num_labels=2, hidden_size=24, num_layers=3, num_heads=3,
                                ffn_size=32, max_position=20, dropout=0.1, position="rotary", norm_first=True,
                                pad_token_id=tokenizer.pad_token_id)
    assert head == {"classifier.weight", "classifier.bias"}
    lstm, _, _ = build_scratch_classifier(configs.classify("scratch:lstm", tmp_path, tmp_path, wordpiece_dir,
                                                           {"model.bidirectional": False}).model, ["x", "y"])
    assert (lstm.config["embed_dim"], lstm.config["num_layers"], lstm.config["bidirectional"]) == (16, 1, False)


def test_the_default_tokenizer_is_minilm(configs, tmp_path):
    cfg = configs.classify("scratch:gru", tmp_path, tmp_path)
    model, tokenizer, _ = build_scratch_classifier(cfg.model, ["x", "y"])
    assert len(tokenizer) == 30522 and tokenizer.pad_token == "[PAD]"
    assert model.config["vocab_size"] == 30522 and model.config["pad_token_id"] == tokenizer.pad_token_id


def test_gpt_classifier_ignores_padding():
    torch.manual_seed(0)
    model = GPTClassifier(vocab_size=30, num_labels=3, hidden_size=16, num_layers=2, num_heads=2, max_position=16,
                          dropout=0.0).eval()
    ids = torch.randint(1, 30, (2, 6))
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 4)], dim=1).long()
    for pooling in ("mean", "last"):
        model.config["pooling"] = pooling
        torch.testing.assert_close(model(padded, mask).logits, model(ids).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("overrides, message", [
    ({"model.name": "scratch:seq2seq"}, "scratch:lstm"),
    ({"model.name": "scratch:transformer", "model.hidden_size": 30, "model.heads": 4}, "not divisible by model.heads"),
    ({"model.tokenizer": "no/such/folder"}, "tunelab tokenizer train"),
    ({"model.tokenizer": "builtin:nope"}, "model.tokenizer: unknown built-in model"),
])
def test_mistakes_are_one_line_errors(configs, tmp_path, overrides, message):
    cfg = configs.classify("scratch:lstm", tmp_path, tmp_path, overrides=overrides)
    with pytest.raises(TunelabError, match=message):
        build_scratch_classifier(cfg.model, ["x", "y"])
