"""Fine-tuning methods on the tiny BERT: exactly the right parameters train, and only they change.

After a few real training steps every trainable parameter has moved and every frozen one is bit-identical.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tunelab.errors import TunelabError
from tunelab.methods.common import count_parameters

HIDDEN, FFN, LAYERS, LABELS, LORA_R = 32, 64, 2, 3, 8


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


HEAD = linear(HIDDEN, LABELS)
BERT_LAYER = 4 * linear(HIDDEN, HIDDEN) + linear(HIDDEN, FFN) + linear(FFN, HIDDEN) + 2 * (2 * HIDDEN)  # + 2 norms
LORA = LAYERS * 2 * LORA_R * (HIDDEN + HIDDEN)  # query and value in each layer: A (r x in) + B (out x r)

# method -> (method overrides, which parameter names train, how many trainable parameters)
METHODS = {
    "head": ({}, lambda n: n.startswith("classifier."), HEAD),
    "freeze": ({"trainable_layers": 1}, lambda n: n.startswith(("bert.encoder.layer.1.", "classifier.")),
               BERT_LAYER + HEAD),
    "lora": ({}, lambda n: "lora_A" in n or "lora_B" in n or ".modules_to_save." in n, LORA + HEAD),
    "full": ({}, lambda n: True, None),  # None: every parameter
}


@pytest.fixture(scope="module")
def trained(tiny_bert, data_dir, tmp_path_factory, helpers):
    """trained(method) -> (RUN_DIR, spy dict with 'model' and 'before'); each method trains once."""
    cache: dict = {}

    def get(method: str):
        if method not in cache:
            overrides = {"method.name": method, **{f"method.{k}": v for k, v in METHODS[method][0].items()}}
            cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp(method) / "run",
                                      overrides)
            cache[method] = helpers.train_and_capture(cfg)
        return cache[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_exactly_the_expected_parameters(trained, method):
    model = trained(method)[1]["model"]
    is_trainable = METHODS[method][1]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    assert trainable == {n for n, _ in model.named_parameters() if is_trainable(n)}


def test_lora_trains_both_adapter_matrices_and_the_head(trained):
    model = trained("lora")[1]["model"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum("lora_A" in n for n in trainable) == sum("lora_B" in n for n in trainable) == 2 * LAYERS
    assert sum(".modules_to_save." in n for n in trainable) == 2  # classifier weight and bias


@pytest.mark.parametrize("method", METHODS)
def test_trainable_parameter_count(trained, method):
    model = trained(method)[1]["model"]
    trainable, total = count_parameters(model)
    assert trainable == (METHODS[method][2] or total)


@pytest.mark.parametrize("method", METHODS)
def test_training_moves_every_trainable_parameter_and_no_frozen_one(trained, method):
    seen = trained(method)[1]
    after = dict(seen["model"].named_parameters())
    for name, before in seen["before"].items():
        if after[name].requires_grad:
            assert not torch.equal(after[name], before), f"trainable {name} did not move"
        else:
            assert torch.equal(after[name], before), f"frozen {name} changed"


def test_head_method_saves_the_pretrained_body_unchanged(trained, tiny_bert):
    run_dir = trained("head")[0]
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    pretrained = load_file(str(tiny_bert / "model.safetensors"))
    assert {k for k in saved if not k.startswith("classifier.")} == {f"bert.{k}" for k in pretrained}
    for key, value in pretrained.items():
        assert torch.equal(saved[f"bert.{key}"], value), key


@pytest.mark.parametrize("method", ["head", "freeze"])
def test_continuing_from_a_finished_run_still_trains_the_head(trained, make_config, helpers, capture_trained_model,
                                                              method):
    # RUN_DIR/model already has a classifier for these labels, so no parameter is newly initialised.
    options = {"method.trainable_layers": 1} if method == "freeze" else {}  # applies to freeze only
    cfg = make_config({"model.name": str(trained("full")[0] / "model"), "method.name": method, **options})
    run_dir = helpers.train_quietly(cfg)
    trainable = {n for n, p in capture_trained_model["model"].named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    saved, previous = (load_file(str(d / "model" / "model.safetensors")) for d in (run_dir, trained("full")[0]))
    assert torch.equal(capture_trained_model["before"]["classifier.weight"], previous["classifier.weight"])
    assert not torch.equal(saved["classifier.weight"], previous["classifier.weight"])  # trained, not just unfrozen


def test_freeze_more_layers_than_the_model_has_is_an_error(make_config, helpers):
    with pytest.raises(TunelabError, match="method.trainable_layers: got 5; the model has only 2 layers"):
        helpers.train_quietly(make_config({"method.name": "freeze", "method.trainable_layers": 5}))


def test_cls_only_last_layer_gives_the_same_logits_and_gradients():
    """The speed-up that computes only [CLS] in the last layer changes no number the loss sees."""
    from transformers import BertConfig, BertForSequenceClassification

    from tunelab.models.speedups import cls_only_last_layer

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     num_labels=3)).eval()
    ids = torch.randint(1, 100, (4, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0

    def logits_and_grads():
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits.square().sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_logits, ref_grads = logits_and_grads()
    assert cls_only_last_layer(model)
    logits, grads = logits_and_grads()
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=0, msg=name)
