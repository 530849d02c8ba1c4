"""Attention weights and maps of finished runs: eager weights that are real (rows sum to 1 over the unmasked
keys), their shapes, rollout scores, the PNG heatmaps, a causal LM's lower-triangular maps, scratch models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.explain import attention
from tunelab.runs import load_run

TEXT = "the team player score a goal today"  # 7 words of tiny_bert's vocabulary: 9 tokens with [CLS] and [SEP]


@pytest.fixture(scope="module")
def bert_run(tiny_bert, data_dir, tmp_path_factory, helpers):
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp("cls") / "run")
    return load_run(helpers.train_quietly(cfg))


@pytest.fixture(scope="module")
def llama_run(llama_run_dir):
    """The tiny Llama causal_lm run of conftest.py, loaded."""
    return load_run(llama_run_dir)


def scratch_run(kind: str, tiny_bert, data_dir, tmp_path, helpers):
    overrides = {"model.name": f"scratch:{kind}", "model.tokenizer": str(tiny_bert), "model.layers": 2,
                 "model.hidden_size": 16, "model.heads": 2, "model.ffn_size": 32, "train.max_steps": 2}
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "run", overrides)
    return load_run(helpers.train_quietly(cfg))


def test_sdpa_returns_no_weights_so_an_eager_copy_is_used(bert_run):
    # the trap this module exists for: the run's own model (SDPA) silently returns no attention weights
    enc = bert_run.tokenizer(TEXT, return_tensors="pt")
    assert bert_run.model.config._attn_implementation == "sdpa"
    assert not bert_run.model(**enc, output_attentions=True).attentions
    model = attention.eager_model(bert_run)
    assert model is not bert_run.model and model.config._attn_implementation == "eager"
    assert attention.eager_model(bert_run) is model  # cached on the run: many texts, one copy
    assert bert_run.model.config._attn_implementation == "sdpa"  # the other methods' model is left alone
    with torch.no_grad():  # the copy computes the same outputs
        assert torch.allclose(model(**enc).logits, bert_run.model(**enc).logits, atol=1e-5)


def test_weights_have_one_map_per_layer_and_head_and_rows_sum_to_one(bert_run):
    tokens, weights = attention.attention_weights(bert_run, TEXT)
    assert tokens == ["[CLS]", *TEXT.split(), "[SEP]"]
    assert weights.shape == (2, 2, 9, 9)  # (layers, heads, T, T) of the 2-layer, 2-head tiny BERT
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 9), atol=1e-5)
    assert weights.min() >= 0 and weights.std() > 0  # real, varying weights, not a placeholder


def test_rows_sum_to_one_over_the_unmasked_keys_of_a_padded_row(bert_run):
    enc = bert_run.tokenizer(TEXT, return_tensors="pt", padding="max_length", max_length=12)
    assert enc["attention_mask"][0].tolist() == [1] * 9 + [0] * 3
    weights = attention.weights_of(attention.eager_model(bert_run), enc)  # (2, 2, 12, 12)
    assert torch.allclose(weights[..., :9].sum(-1), torch.ones(2, 2, 12), atol=1e-5)
    assert weights[..., 9:].abs().max() == 0  # padding keys get no attention


def hand_rollout(weights: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema's rollout, written again with numpy loops."""
    t = weights.shape[-1]
    flow = np.eye(t)
    for layer in weights:
        a = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(t)
        a = a / a.sum(axis=1, keepdims=True)
        flow = a @ flow
    return flow


def test_attention_scores_are_the_rollout_from_cls_with_special_tokens_at_zero(bert_run):
    enc = bert_run.tokenizer(TEXT, return_special_tokens_mask=True)
    encoded = type("Encoded", (), {"ids": enc["input_ids"], "mask": enc["attention_mask"], "type_ids": None,
                                   "special": [bool(s) for s in enc["special_tokens_mask"]]})()
    scores = attention.attention_scores(bert_run, encoded)
    _, weights = attention.attention_weights(bert_run, TEXT)
    expected = hand_rollout(weights.double().numpy())[0]  # the [CLS] row
    assert scores[0] == scores[-1] == 0.0
    assert scores[1:-1] == pytest.approx(expected[1:-1].tolist(), abs=1e-6)
    assert all(s > 0 for s in scores[1:-1]) and sum(scores) < 1
    assert scores[1:-1] == pytest.approx([0.0836867, 0.0838627, 0.0827652, 0.0837991, 0.0834545, 0.0827802,
                                          0.0834808], abs=1e-6)


def test_maps_write_two_readable_pngs_per_layer(bert_run, tmp_path):
    from PIL import Image

    paths = attention.attention_maps(bert_run, TEXT, tmp_path / "maps")
    assert [p.name for p in paths] == ["attention-layer01-heads.png", "attention-layer01-mean.png",
                                       "attention-layer02-heads.png", "attention-layer02-mean.png"]
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert min(pixels.shape) > 300 and pixels.std() > 20  # a picture, not a blank page
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [p.name for p in paths]  # no temp files
    with pytest.raises(TunelabError, match="exists .*--overwrite"):
        attention.attention_maps(bert_run, TEXT, tmp_path / "maps", layers=[2])
    assert attention.attention_maps(bert_run, TEXT, tmp_path / "maps", layers=[2], overwrite=True) == paths[2:]
    with pytest.raises(TunelabError, match=r"layers \[3\]: this model has layers 1..2"):
        attention.attention_maps(bert_run, TEXT, tmp_path / "other", layers=[3])


def test_a_long_text_is_shown_truncated(bert_run, tmp_path, monkeypatch):
    monkeypatch.setattr(attention, "MAP_TOKENS", 4)
    seen = []
    real = attention._mean_figure

    def spy(mean, labels, title):
        seen.append((mean.shape, labels, title))
        return real(mean, labels, title)

    monkeypatch.setattr(attention, "_mean_figure", spy)
    attention.attention_maps(bert_run, TEXT, tmp_path, layers=[1])
    assert seen == [((4, 4), ["[CLS]", "the", "team", "player"], "layer 1, mean over 2 heads (first 4 of 9 tokens)")]


def test_a_causal_lm_map_is_lower_triangular_and_its_readout_is_the_last_token(llama_run):
    tokens, weights = attention.attention_weights(llama_run, "Add 2 and 3.")
    assert len(tokens) == 12 and weights.shape == (2, 4, 12, 12)  # one character per token; 4 heads
    assert torch.triu(weights, diagonal=1).abs().max() == 0  # no token sees a later one
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 12), atol=1e-5)
    assert torch.equal(weights[:, :, 0, 0], torch.ones(2, 4))  # the first token sees only itself
    assert attention.is_causal(weights)
    ids = llama_run.tokenizer("Add 2 and 3.")["input_ids"]
    encoded = type("Encoded", (), {"input_ids": ids, "special": [False] * len(ids)})()
    scores = attention.attention_scores(llama_run, encoded)
    assert scores == pytest.approx(hand_rollout(weights.double().numpy())[-1].tolist(), abs=1e-6)


def test_scratch_transformer_weights_are_read_per_head(tiny_bert, data_dir, tmp_path, helpers):
    import tunelab.nn.attention as nn_attention

    run = scratch_run("transformer", tiny_bert, data_dir, tmp_path, helpers)
    real = nn_attention.scaled_dot_product_attention
    tokens, weights = attention.attention_weights(run, TEXT)
    assert nn_attention.scaled_dot_product_attention is real  # the recorder is taken off again
    assert len(tokens) == 9 and weights.shape == (2, 2, 9, 9)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 9), atol=1e-5) and weights.std() > 0
    # the head mean equals what the module itself returns with need_weights
    enc = run.tokenizer(TEXT, return_tensors="pt")
    layer = run.model.encoder.layers[0]
    with torch.no_grad():
        x = layer.norm1(run.model.embeddings(enc["input_ids"]))
        _, mean = layer.self_attn(x, key_padding_mask=enc["attention_mask"] == 0, need_weights=True)
    assert torch.allclose(weights[0].mean(0), mean[0], atol=1e-6)


def test_a_mean_pooled_scratch_classifier_reads_the_mean_of_the_real_rows(tiny_bert, data_dir, tmp_path, helpers):
    """TransformerClassifier averages its real tokens (no [CLS] to read): the readout is the mean of their
    rollout rows, not row 0; a pooling "last" classifier reads the last real token."""
    from types import SimpleNamespace

    from tunelab.explain.faithfulness import explain_any

    run = scratch_run("transformer", tiny_bert, data_dir, tmp_path, helpers)
    enc = run.tokenizer(TEXT, return_special_tokens_mask=True)
    encoded = SimpleNamespace(ids=enc["input_ids"], mask=enc["attention_mask"], type_ids=None,
                              special=[bool(s) for s in enc["special_tokens_mask"]])
    scores = attention.attention_scores(run, encoded)
    _, weights = attention.attention_weights(run, TEXT)
    flow = hand_rollout(weights.double().numpy())
    assert scores[1:-1] == pytest.approx(flow.mean(axis=0)[1:-1].tolist(), abs=1e-6)
    assert scores[1:-1] != pytest.approx(flow[0][1:-1].tolist(), abs=1e-3)
    assert "averaged" in explain_any(run, TEXT, "attention").settings["scores"]
    real = torch.tensor([True] * 4 + [False])
    last = SimpleNamespace(config={"pooling": "last"}, classifier=None)
    assert attention.readout(last, real, causal=False).tolist() == [0, 0, 0, 1, 0]
    assert attention.readout(run.model, real, causal=False).tolist() == [0.25] * 4 + [0]
    assert attention.readout(object(), real, causal=False).tolist() == [1, 0, 0, 0, 0]


def test_attention_on_an_empty_text_has_nothing_to_explain(bert_run):
    from tunelab.explain.faithfulness import explain_any

    with pytest.raises(TunelabError, match="nothing to explain"):
        explain_any(bert_run, "   ", "attention")


def test_a_recurrent_scratch_model_is_one_clear_error(tiny_bert, data_dir, tmp_path, helpers):
    run = scratch_run("lstm", tiny_bert, data_dir, tmp_path, helpers)
    with pytest.raises(TunelabError, match="no attention layers .*--method ig or occlusion"):
        attention.attention_weights(run, TEXT)


def test_a_lora_run_gets_an_eager_copy_of_its_adapter_model(tiny_bert, data_dir, tmp_path, helpers):
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "run",
                              {"method.name": "lora", "train.max_steps": 2})
    run = load_run(helpers.train_quietly(cfg))
    assert hasattr(run.model, "get_base_model")  # a peft model
    _, weights = attention.attention_weights(run, TEXT)
    assert weights.shape == (2, 2, 9, 9) and torch.allclose(weights.sum(-1), torch.ones(2, 2, 9), atol=1e-5)
    assert run.model.get_base_model().config._attn_implementation == "sdpa"
    enc = run.tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(attention.eager_model(run)(**enc).logits, run.model(**enc).logits, atol=1e-5)
