"""Pruning (tunelab.compress.prune) on tiny random models built from configs.

The invariant: a structurally pruned model computes exactly what the original computes with the removed heads
and neurons masked out (their columns of the output / down projection zeroed), for BERT and for Llama-family
decoders with grouped-query attention, under SDPA and eager attention.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from tunelab.compress import prune as P
from tunelab.errors import TunelabError

H, LAYERS, FFN, VOCAB = 48, 2, 64, 40  # hidden size 48: 4 BERT heads of 12, 6 Llama heads of 8


def bert(attn="sdpa", seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=4,
                     intermediate_size=FFN, max_position_embeddings=32, num_labels=3, pad_token_id=0,
                     initializer_range=0.2,  # larger than the default 0.02: removing a unit shows in the logits
                     attn_implementation=attn)
    return BertForSequenceClassification(cfg).eval()


def llama(attn="sdpa", seed=0, kv_heads=2, kind="llama"):
    """6 query heads on `kv_heads` key/value heads (2: groups of 3, as SmolLM2's 9 on 3); qwen2 has q/k/v biases."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    cfg = config_class(vocab_size=VOCAB, hidden_size=H, intermediate_size=FFN, num_hidden_layers=LAYERS,
                       num_attention_heads=6, num_key_value_heads=kv_heads, max_position_embeddings=64,
                       pad_token_id=0, initializer_range=0.2, attn_implementation=attn)
    return AutoModelForCausalLM.from_config(cfg).eval()


MODELS = {"bert": bert, "llama-gqa": llama, "llama-mha": lambda attn="sdpa", seed=0: llama(attn, seed, kv_heads=6),
          "qwen2-gqa": lambda attn="sdpa", seed=0: llama(attn, seed, kind="qwen2")}


def inputs(seed=1, batch=3, length=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 7:] = 0  # padding, so the attention mask path is exercised
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def logits(model, batch=None):
    return model(**(batch or inputs())).logits


def random_importance(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = P._blocks(model)
    return {"heads": [torch.rand(b.n_heads, generator=g) for b in blocks],
            "ffn": [torch.rand(b.n_ffn, generator=g) for b in blocks]}


def masked(model, step):
    """A copy of `model` with the heads and neurons `step` removes zeroed where their outputs are read."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for b, keep in zip(P._blocks(model), step["layers"]):
            gone_heads = [h for h in range(b.n_heads) if h not in keep["heads"]]
            if gone_heads:
                P._linear(b.o).weight[:, P._rows(gone_heads, b.head_dim)] = 0
            gone = [n for n in range(b.n_ffn) if n not in keep["ffn"]]
            P._linear(b.ffn_out).weight[:, gone] = 0
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def loss_fn(model, batch):
    """A TaskJob-style loss: (sum over the batch, count); classification or next-token."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if out.dim() == 2:
        return torch.nn.functional.cross_entropy(out, batch["labels"], reduction="sum"), len(out)
    target = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    loss = torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), target.flatten(), reduction="sum")
    return loss, int((target != -100).sum())


def batches(n=2):
    out = []
    for i in range(n):
        b = inputs(seed=10 + i)
        b["labels"] = torch.tensor([0, 1, 2])
        out.append(b)
    return out


# ---------------------------------------------------------------------------------------------
# Structured: the invariant, the arithmetic, the rebuild


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_model_equals_the_masked_original(name, attn):
    model = MODELS[name](attn)
    step = P.plan_structured(model, 0.5, random_importance(model))
    reference = logits(masked(model, step))
    assert not torch.allclose(reference, logits(model), atol=1e-3)  # the masking matters: this can fail
    pruned = P.apply_prune_structured(copy.deepcopy(model), step)
    assert n_params(pruned) < n_params(model)
    torch.testing.assert_close(logits(pruned), reference, atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("name", ["llama-gqa", "llama-mha"])
def test_pruned_decoder_generates_with_its_kv_cache_as_the_masked_original(name):
    """The KV cache takes the pruned shapes (fewer key/value heads without grouping; config.json says more)."""
    model = MODELS[name]()
    step = P.plan_structured(model, 0.5, random_importance(model))
    prompt = torch.tensor([[5, 6, 7, 8]])
    pruned = P.apply_prune_structured(copy.deepcopy(model), step)
    out = pruned.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(out, masked(model, step).generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0))

def test_plan_keeps_the_most_important_and_groups_query_heads_evenly():
    model = llama()
    imp = {"heads": [torch.tensor([.1, .9, .8, .7, .2, .3])] * LAYERS, "ffn": [torch.arange(FFN) % 7] * LAYERS}
    step = P.plan_structured(model, 0.5, imp)
    # groups of 3 (heads 0-2 on key/value head 0, 3-5 on 1): round(1.5) = 2 of each group stay
    assert step["layers"][0]["heads"] == [1, 2, 3, 5]
    assert len(step["layers"][0]["ffn"]) == 32 and all(n % 7 >= 3 for n in step["layers"][0]["ffn"])
    assert json.loads(json.dumps(step)) == step and step["op"] == "prune_structured" and step["score"] == "taylor"
    flat = P.plan_structured(bert(), 0.75, {"heads": [torch.tensor([.4, .1, .3, .2])] * LAYERS,
                                            "ffn": [torch.ones(FFN)] * LAYERS})
    assert flat["layers"][1]["heads"] == [0] and flat["layers"][1]["ffn"] == list(range(16))  # ties: low index
    almost_all = P.plan_structured(bert(), 0.99, random_importance(bert()))
    assert all(len(layer["heads"]) == 1 and len(layer["ffn"]) == 1 for layer in almost_all["layers"])


def test_parameter_counts_follow_the_arithmetic():
    model = bert()
    pruned = P.apply_prune_structured(copy.deepcopy(model), P.plan_structured(model, 0.5, random_importance(model)))
    # per layer: 2 of 4 heads (12 wide) go: Q, K, V lose 2*12 rows of H weights + 1 bias, the output 2*12
    # columns; 32 of 64 neurons go: intermediate rows (H + 1), output columns (H)
    per_layer = 3 * 24 * (H + 1) + 24 * H + 32 * (H + 1) + 32 * H
    assert n_params(model) - n_params(pruned) == LAYERS * per_layer == 15_568
    attn = pruned.bert.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size) == (2, 24)
    assert pruned.config.num_attention_heads == 4 and pruned.config.intermediate_size == FFN  # config: original

    model = llama()
    pruned = P.apply_prune_structured(copy.deepcopy(model), P.plan_structured(model, 0.5, random_importance(model)))
    # GQA: 2 of 6 query heads (8 wide) go from q (rows) and o (columns); both key/value heads stay;
    # 32 of 64 neurons: gate and up rows, down columns; no biases
    assert n_params(model) - n_params(pruned) == LAYERS * (2 * 16 * H + 3 * 32 * H) == 12_288
    attn = pruned.model.layers[0].self_attn
    assert attn.num_key_value_groups == 2 and attn.k_proj.out_features == 16
    assert pruned.model.layers[0].mlp.intermediate_size == 32

    model = MODELS["llama-mha"]()
    pruned = P.apply_prune_structured(copy.deepcopy(model), P.plan_structured(model, 0.5, random_importance(model)))
    # without grouping each head goes with its key and value: 3 of 6 heads from q, k, v and o
    assert n_params(model) - n_params(pruned) == LAYERS * (4 * 24 * H + 3 * 32 * H) == 18_432


@pytest.mark.parametrize("name", ["bert", "llama-gqa"])
def test_sparsity_zero_keeps_everything(name):
    model = MODELS[name]()
    step = P.plan_structured(model, 0, random_importance(model))
    pruned = P.apply_prune_structured(copy.deepcopy(model), step)
    assert n_params(pruned) == n_params(model)
    assert torch.equal(logits(pruned), logits(model))


@pytest.mark.parametrize("name", ["bert", "qwen2-gqa"])
def test_reapplying_without_weights_rebuilds_the_pruned_model(name):
    model = MODELS[name]()
    step = json.loads(json.dumps(P.plan_structured(model, 0.5, random_importance(model))))
    pruned = P.apply_prune_structured(copy.deepcopy(model), step)

    fresh = P.apply_prune_structured(MODELS[name](seed=7), step, weights=False)  # other random values
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(fresh) == shapes(pruned)
    assert not torch.allclose(logits(fresh), logits(pruned))
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    assert torch.equal(logits(fresh), logits(pruned))


def test_a_step_for_another_model_or_uneven_groups_is_refused():
    model = llama()
    step = P.plan_structured(model, 0.5, random_importance(model))
    uneven = copy.deepcopy(step)
    uneven["layers"][0]["heads"] = [0, 1, 2, 3]  # 3 heads on key/value head 0, 1 on key/value head 1
    with pytest.raises(TunelabError, match="same number of query heads"):
        P.apply_prune_structured(copy.deepcopy(model), uneven)
    with pytest.raises(TunelabError, match="has 1 layers; the model has 2"):
        P.apply_prune_structured(model, {**step, "layers": step["layers"][:1]})
    with pytest.raises(TunelabError, match=r"--sparsity must be a number in \[0, 1\) \(.*\); got 1.5"):
        P.plan_structured(model, 1.5, random_importance(model))


# ---------------------------------------------------------------------------------------------
# Importance


def test_importance_is_the_taylor_estimate_of_a_head_gate():
    """|dL/dxi| for a gate xi on one head's output equals the importance (finite differences, float64)."""
    model = bert().double()
    batch = batches(1)[0]
    imp = P.structured_importance(model, [batch], loss_fn)
    o = model.bert.encoder.layer[1].attention.output.dense.weight
    cols = P._rows([2], 12)

    def loss_at(gate):
        with torch.no_grad():
            saved = o[:, cols].clone()
            o[:, cols] *= gate
            loss, n = loss_fn(model, batch)
            o[:, cols] = saved
        return float(loss / n)

    eps = 1e-4
    derivative = (loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
    assert float(imp["heads"][1][2]) == pytest.approx(abs(derivative), rel=1e-5)


@pytest.mark.parametrize("name", ["bert", "llama-gqa"])
def test_a_dead_unit_scores_zero_is_pruned_first_and_nothing_is_changed(name):
    model = MODELS[name]()
    b = P._blocks(model)[0]
    with torch.no_grad():  # head 1 and neuron 5 of layer 0 are dead: all their weights zero
        head = P._rows([1], b.head_dim)
        P._linear(b.q).weight[head] = 0
        P._linear(b.o).weight[:, head] = 0
        for ref in b.ffn_in:
            P._linear(ref).weight[5] = 0
        P._linear(b.ffn_out).weight[:, 5] = 0
    model.get_input_embeddings().weight.requires_grad_(False)  # a frozen part must stay frozen
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}

    imp = P.structured_importance(model, batches(), loss_fn)

    assert float(imp["heads"][0][1]) == 0 and float(imp["ffn"][0][5]) == 0
    assert (imp["heads"][0] > 0).sum() == b.n_heads - 1 and (imp["ffn"][0] > 0).sum() == FFN - 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters()) and model.training
    step = P.plan_structured(model, 1 / 64, imp)  # keeps round(63/64 * 64) neurons: only the weakest goes
    assert step["layers"][0]["ffn"] == [n for n in range(FFN) if n != 5]
    heads = P.plan_structured(model, 0.25, imp)["layers"][0]["heads"]  # BERT: 3 of 4; Llama: 2 of each 3
    assert heads[:2] == [0, 2] and len(heads) == {"bert": 3, "llama-gqa": 4}[name]


def test_importance_pins_on_bert():
    imp = P.structured_importance(bert(), batches(), loss_fn)
    assert [len(h) for h in imp["heads"]] == [4, 4] and [len(f) for f in imp["ffn"]] == [FFN, FFN]
    assert imp["heads"][0].tolist() == pytest.approx([0.3308, 0.4724, 0.2809, 0.4703], abs=1e-4)
    assert imp["heads"][1].tolist() == pytest.approx([0.2439, 0.2215, 0.3602, 0.1672], abs=1e-4)
    assert float(sum(f.sum() for f in imp["ffn"])) == pytest.approx(7.5517, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Magnitude


def stack_weights(model):
    return [m.weight for m in P._stack_linears(model)]


def test_magnitude_zeroes_the_smallest_fraction_of_the_layer_stack():
    model = bert()
    original = copy.deepcopy(model)
    step = P.plan_magnitude(0.3)
    assert step == {"op": "prune_magnitude", "sparsity": 0.3, "scope": "global"}
    assert P.sparsity_of(model) == 0
    P.apply_prune_magnitude(model, step)

    total = sum(w.numel() for w in stack_weights(model))
    assert P.sparsity_of(model) == round(0.3 * total) / total
    removed = torch.cat([o[w == 0].abs() for o, w in zip(stack_weights(original), stack_weights(model))])
    kept = torch.cat([w[w != 0].abs() for w in stack_weights(model)])
    assert removed.max() <= kept.min()  # ranked over all layers at once, smallest first
    for name in ("bert.embeddings.word_embeddings.weight", "classifier.weight", "bert.pooler.dense.weight"):
        assert torch.equal(model.state_dict()[name], original.state_dict()[name])
    assert [k for k, _ in model.named_parameters()] != [] and \
        {k for k, _ in model.named_parameters()} == {k for k, _ in original.named_parameters()}

    untouched = P.apply_prune_magnitude(copy.deepcopy(original), step, weights=False)
    assert P.sparsity_of(untouched) == 0


def test_keep_zeros_retrains_the_survivors_and_keeps_the_zeros():
    model = P.apply_prune_magnitude(bert(), P.plan_magnitude(0.5))
    names = {k for k, _ in model.named_parameters()}
    zeros = [w == 0 for w in stack_weights(model)]
    before = [w.detach().clone() for w in stack_weights(model)]
    model.train()
    with P.keep_zeros(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        for batch in batches(3):
            loss, n = loss_fn(model, batch)
            (loss / n).backward()
            optimizer.step()
            optimizer.zero_grad()
    after = stack_weights(model)
    assert all(torch.all(w[z] == 0) for w, z in zip(after, zeros))
    moved = sum(int((w != b)[~z].sum()) for w, b, z in zip(after, before, zeros))
    assert moved / sum(int((~z).sum()) for z in zeros) > 0.99
    assert P.sparsity_of(model) == 0.5
    assert {k for k, _ in model.named_parameters()} == names
    assert not [k for k in model.state_dict() if k.endswith(("_orig", "_mask"))]
    # the optimizer built inside holds the model's weights themselves: it can go on training them
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(w) in held for w in stack_weights(model))


# ---------------------------------------------------------------------------------------------
# What is not supported


def test_structured_pruning_refuses_other_models_and_magnitude_takes_them():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    message = (r"structured pruning supports BERT-family \(bert, .*\) and Llama-family \(llama, mistral, qwen2\) "
               r"models; gpt2 is not one: --prune magnitude, --low-rank and --quantize work on any model")
    with pytest.raises(TunelabError, match=message):
        P.structured_importance(gpt2, batches(1), loss_fn)
    with pytest.raises(TunelabError, match=message):
        P.apply_prune_structured(gpt2, {"op": "prune_structured", "layers": []})
    P.apply_prune_magnitude(gpt2, P.plan_magnitude(0.25))  # GPT-2's Conv1D layers count as Linear
    assert P.sparsity_of(gpt2) == pytest.approx(0.25, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The real model


@pytest.mark.integration
def test_minilm_half_pruned_with_the_classification_loss():
    """builtin:minilm-l6 (6 layers, 12 heads of 32, 1536 FFN neurons): Taylor scores from the classification
    task's own loss, half of every layer removed, the invariant holds and the size follows the arithmetic."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.models.registry import resolve_model
    from tunelab.tasks.classification import loss_sum

    folder = resolve_model("builtin:minilm-l6")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    texts = ["Shares rose after the merger was announced", "The striker scored twice in the final",
             "A new chip doubles battery life", "Parliament passed the budget late on Tuesday"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"), labels=torch.tensor([0, 1, 0, 1]))
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    step = P.plan_structured(model, 0.5, P.structured_importance(model, [batch], loss_sum))
    assert [(len(layer["heads"]), len(layer["ffn"])) for layer in step["layers"]] == [(6, 768)] * 6
    inputs_only = {k: batch[k] for k in ("input_ids", "attention_mask")}
    reference = logits(masked(model, step), inputs_only)
    pruned = P.apply_prune_structured(copy.deepcopy(model), step)
    torch.testing.assert_close(logits(pruned, inputs_only), reference, atol=1e-4, rtol=1e-4)
    # per layer: 6 heads of 32 leave Q, K, V (rows of 384 + bias) and the output (columns); 768 neurons leave
    # the intermediate (rows of 384 + bias) and the output (columns)
    per_layer = 3 * 192 * 385 + 192 * 384 + 768 * 385 + 768 * 384
    assert n_params(model) - n_params(pruned) == 6 * per_layer == 5_316_480
