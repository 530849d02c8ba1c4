"""Low rank, int8 and the stored form of a compressed model, on tiny random models built from configs.

The invariants: low rank at full rank computes what the original computes; int8 stays within a stated
tolerance of fp32 with int8 weights really stored; save -> load gives the very same outputs (bit for bit:
the same fp32 tensors, the same int8 values and scales) for every op and their combination, through the
run loaders too; the folder holds no pickle; an op or format this tunelab does not know is one TunelabError.
"""
from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent.parent / "causal"))  # the tiny Llama of the causal-LM tests

from causal_tiny import make_tokenizer  # noqa: E402
from tunelab.compress import prune, quantize, store  # noqa: E402
from tunelab.compress.low_rank import LowRankLinear, apply_low_rank, energy_rank, plan_low_rank, stack_linears  # noqa: E402
from tunelab.compress.quantize import Int8Linear, apply_quantize  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402

H, FFN, VOCAB = 32, 64, 60
DYNAMIC = {"op": "quantize", "scheme": "int8-dynamic"}
WEIGHT_ONLY = {"op": "quantize", "scheme": "int8-weight-only"}
APPLY = {"prune_structured": prune.apply_prune_structured, "prune_magnitude": prune.apply_prune_magnitude,
         "low_rank": apply_low_rank, "quantize": apply_quantize}


def bert(seed=0, hidden=H, ffn=FFN):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=ffn, max_position_embeddings=16, num_labels=3, pad_token_id=0)
    return BertForSequenceClassification(cfg).eval()


def llama(seed=0, tie=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=FFN, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def inputs(seed=1, batch=4, length=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=g)


@torch.no_grad()
def logits(model, ids=None):
    ids = inputs() if ids is None else ids
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def compressed(model, steps):
    model = copy.deepcopy(model)
    for step in steps:
        APPLY[step["op"]](model, step)
    return model.eval()


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------------ low rank

def test_low_rank_at_full_rank_computes_the_original():
    model = bert()
    full = {"op": "low_rank", "rank": None, "energy": None,
            "modules": {name: min(m.weight.shape) for name, m in stack_linears(model).items()}}
    low = compressed(model, [full])
    assert sum(isinstance(m, LowRankLinear) for m in low.modules()) == 12  # 2 layers x q, k, v, o, up, down
    err = rel_err(logits(low), logits(model))
    assert err < 1e-5, err  # the SVD is taken in float64: what is left is fp32 rounding of the two products


def test_plan_rank_leaves_out_layers_it_would_not_shrink_and_counts_add_up():
    model = bert()
    before = store.count_parameters(model)
    step = plan_low_rank(model, rank=8)
    assert len(step["modules"]) == 12 and set(step["modules"].values()) == {8}
    # per layer: 4 attention 32x32 -> 8*(32+32), the FFN 32->64 and 64->32 -> 8*(32+64)
    saved = 2 * (4 * (32 * 32 - 8 * 64) + 2 * (32 * 64 - 8 * 96))
    assert before - store.count_parameters(compressed(model, [step])) == saved == 9216
    # rank 20: 20 * (32 + 32) > 32 * 32, so only the two FFN layers of each block are factorised
    wide = plan_low_rank(model, rank=20)
    assert sorted(wide["modules"]) == ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense",
                                       "bert.encoder.layer.1.intermediate.dense", "bert.encoder.layer.1.output.dense"]
    assert wide["rank"] == 20 and wide["energy"] is None


def test_energy_picks_the_smallest_rank_that_keeps_the_energy():
    model = bert()
    name = "bert.encoder.layer.0.output.dense"
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(H, H, generator=g))
    v, _ = torch.linalg.qr(torch.randn(FFN, H, generator=g))
    s = 0.8 ** torch.arange(H, dtype=torch.float32)  # a decaying spectrum
    with torch.no_grad():
        model.get_submodule(name).weight.copy_(u @ torch.diag(s) @ v.T)  # (32, 64)
    sv = np.linalg.svd(model.get_submodule(name).weight.detach().double().numpy(), compute_uv=False)
    kept = np.cumsum(sv ** 2) / np.sum(sv ** 2)
    for energy in (0.5, 0.9, 0.99):
        expected = int(np.argmax(kept >= energy)) + 1
        assert plan_low_rank(model, energy=energy)["modules"][name] == expected
        assert kept[expected - 1] >= energy and (expected == 1 or kept[expected - 2] < energy)
    assert [plan_low_rank(model, energy=e)["modules"][name] for e in (0.5, 0.9, 0.99)] == [2, 6, 11]
    assert energy_rank(torch.tensor([3.0, 2.0, 1.0]), 1.0) == 3


@pytest.mark.parametrize("kwargs, message", [({}, "exactly one"), ({"rank": 4, "energy": 0.5}, "exactly one"),
                                             ({"rank": 0}, "--low-rank: 0"), ({"energy": 1.5}, "--low-rank-energy")])
def test_low_rank_options_are_checked(kwargs, message):
    with pytest.raises(TunelabError, match=message):
        plan_low_rank(bert(), **kwargs)


# ------------------------------------------------------------------------------------------------ int8

@pytest.mark.parametrize("scheme", ["int8-dynamic", "int8-weight-only"])
@pytest.mark.parametrize("make", [bert, llama], ids=["bert", "llama"])
def test_int8_outputs_stay_close_to_fp32(make, scheme):
    model = make()
    ids = inputs(batch=16)
    ref = logits(model, ids)
    q = compressed(model, [{"op": "quantize", "scheme": scheme}])
    out = logits(q, ids)
    # measured relative error of the logits: bert 0.0195 (dynamic) / 0.0079 (weight-only), llama 0.0134 / 0.0037
    # (random weights at transformers' default init; 0.03-0.1 for dynamic at 5-10x that init scale)
    assert rel_err(out, ref) < {"int8-dynamic": 0.03, "int8-weight-only": 0.012}[scheme]
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    # measured 1.0 on bert (16 rows); llama 0.969 / 0.994 of 160 tokens (random logits have near ties)
    assert agree >= 0.95, agree


def test_int8_weights_are_int8_and_the_head_stays_fp32():
    model = bert(hidden=64, ffn=256)
    for step, kind in ((DYNAMIC, "dynamic"), (WEIGHT_ONLY, "weight-only")):
        q = compressed(model, [step])
        assert type(q.classifier) is nn.Linear  # the head
        tensors = store.plain_tensors(q)
        names = quantize.targets(model)
        assert len(names) == 13  # 2 x 6 in the layer stack + the pooler
        for name in names:
            assert tensors[f"{name}.weight"].dtype == torch.int8, (kind, name)
        int8_bytes = sum(tensors[f"{n}.weight"].nbytes for n in names)
        fp32_bytes = sum(model.get_submodule(n).weight.nbytes for n in names)
        assert int8_bytes * 4 == fp32_bytes
    assert isinstance(q.bert.pooler.dense, Int8Linear) and q.bert.pooler.dense.weight.dtype == torch.int8


def test_int8_file_is_about_a_quarter(tmp_path):
    model = bert(hidden=64, ffn=256)
    tok = make_tokenizer()
    store.save_compressed(model, tok, tmp_path / "fp32", [])
    store.save_compressed(compressed(model, [DYNAMIC]), tok, tmp_path / "int8", [DYNAMIC])
    ratio = store.file_size(tmp_path / "int8") / store.file_size(tmp_path / "fp32")
    # measured 0.326: Linear weights / 4 (+ 5 bytes of scale and zero point per row), embeddings and norms fp32
    assert 0.25 < ratio < 0.34, ratio


def test_quantized_engine_is_one_switch(monkeypatch):
    before = torch.backends.quantized.engine
    monkeypatch.setenv(quantize.ENGINE_VARIABLE, "onednn")
    with quantize.engine() as name:
        assert name == "onednn" == torch.backends.quantized.engine
    assert torch.backends.quantized.engine == before
    q = compressed(bert(), [DYNAMIC])  # packs with oneDNN; the outputs are still int8-close
    assert rel_err(logits(q), logits(bert())) < 0.03
    monkeypatch.setenv(quantize.ENGINE_VARIABLE, "tpu")
    with pytest.raises(TunelabError, match="TUNELAB_QUANT_ENGINE='tpu'"):
        apply_quantize(bert(), DYNAMIC)


def test_only_the_deprecation_warnings_of_quantization_are_filtered():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compressed(bert(), [DYNAMIC])  # would raise on torch's deprecation warnings
        with pytest.raises(DeprecationWarning, match="another"):
            with quantize.engine():
                warnings.warn("another deprecation", DeprecationWarning)


def test_unknown_scheme_is_an_error():
    with pytest.raises(TunelabError, match="unknown scheme 'int4'"):
        apply_quantize(bert(), {"op": "quantize", "scheme": "int4"})


# ------------------------------------------------------------------------------------------------ store

def structured(model, sparsity=0.5, seed=0):
    """A prune_structured step with seeded random importance (which units go does not matter here)."""
    g = torch.Generator().manual_seed(seed)
    blocks = prune._blocks(model)
    importance = {"heads": [torch.rand(b.n_heads, generator=g, dtype=torch.float64) for b in blocks],
                  "ffn": [torch.rand(b.n_ffn, generator=g, dtype=torch.float64) for b in blocks]}
    return prune.plan_structured(model, sparsity, importance)


def step_lists(model):
    return {"low_rank": [plan_low_rank(model, rank=6)],
            "int8-dynamic": [DYNAMIC],
            "int8-weight-only": [WEIGHT_ONLY],
            "prune+low_rank+int8": None,  # planned on the pruned model (below)
            "magnitude": [prune.plan_magnitude(0.5)]}


@pytest.mark.parametrize("case", ["low_rank", "int8-dynamic", "int8-weight-only", "prune+low_rank+int8", "magnitude"])
@pytest.mark.parametrize("make", [bert, llama], ids=["bert", "llama"])
def test_save_load_round_trip_is_exact(tmp_path, make, case):
    model = make()
    steps = step_lists(model)[case]
    if steps is None:
        cut = structured(model)
        steps = [cut, plan_low_rank(compressed(model, [cut]), rank=4), DYNAMIC]
    small = compressed(model, steps)
    out = store.save_compressed(small, make_tokenizer(), tmp_path / "model", steps)
    files = sorted(p.name for p in out.iterdir())
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))], files
    assert {"config.json", "compression.json", "model.safetensors", "tokenizer.json"} <= set(files)
    info = json.loads((out / "compression.json").read_text())
    assert info["format"] == 1 and info["architecture"] == type(model).__name__ and info["steps"] == steps
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2  # the original config
    loaded, tok = store.load_compressed(out)
    assert not loaded.training and tok.pad_token == "<|pad|>"
    assert torch.equal(logits(loaded), logits(small))
    assert store.count_parameters(loaded) == store.count_parameters(small)
    if case == "prune+low_rank+int8":
        assert store.count_parameters(small) < 0.75 * store.count_parameters(model)
    if case == "magnitude":
        assert prune.sparsity_of(loaded) == pytest.approx(0.5, abs=0.01)


def test_tied_llama_stores_the_tied_weight_once(tmp_path):
    model = compressed(llama(tie=True), [DYNAMIC])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the head is not quantized: still tied
    out = store.save_compressed(model, make_tokenizer(), tmp_path / "m", [DYNAMIC])
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    loaded, _ = store.load_compressed(out)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(logits(loaded), logits(model))


def test_scratch_model_round_trip(tmp_path):
    from tunelab.nn.models import build_scratch_model

    torch.manual_seed(0)
    model = build_scratch_model("transformer", VOCAB, num_labels=3, hidden_size=H, num_layers=2, num_heads=4).eval()
    steps = [plan_low_rank(model, rank=6), DYNAMIC]
    small = compressed(model, steps)
    out = store.save_compressed(small, make_tokenizer(), tmp_path / "m", steps)
    assert json.loads((out / "compression.json").read_text())["architecture"] == "scratch"
    loaded, _ = store.load_compressed(out)
    assert torch.equal(logits(loaded), logits(small))
    assert rel_err(logits(small), logits(model)) < 0.5  # rank 6 of 32: an approximation, not a new model


def test_metadata_is_copied_but_not_weights_or_adapters(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("labels.json", "retrieval.json", "adapter_config.json", "adapter_model.safetensors",
                 "model.safetensors", "pytorch_model.bin", "config.json"):
        (source / name).write_text("{}")
    out = store.save_compressed(bert(), make_tokenizer(), tmp_path / "m", [], source_dir=source)
    files = {p.name for p in out.iterdir()}
    assert {"labels.json", "retrieval.json"} <= files
    assert not files & {"adapter_config.json", "adapter_model.safetensors", "pytorch_model.bin"}
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"  # the model's, not the source's


def test_unknown_op_or_newer_format_is_one_error(tmp_path):
    out = store.save_compressed(bert(), make_tokenizer(), tmp_path / "m", [])
    info = json.loads((out / "compression.json").read_text())
    (out / "compression.json").write_text(json.dumps({**info, "steps": [{"op": "distil_magic"}]}))
    with pytest.raises(TunelabError, match="unknown compression step 'distil_magic'"):
        store.load_compressed(out)
    (out / "compression.json").write_text(json.dumps({**info, "format": 2}))
    with pytest.raises(TunelabError, match="format 2 is newer"):
        store.load_compressed(out)
    with pytest.raises(TunelabError, match="unknown compression step"):
        store.save_compressed(bert(), make_tokenizer(), tmp_path / "n", [{"op": "nope"}])
    assert not (tmp_path / "n").exists()


def test_weights_that_do_not_fit_are_one_error(tmp_path):
    model = bert()
    steps = [plan_low_rank(model, rank=6)]
    out = store.save_compressed(compressed(model, steps), make_tokenizer(), tmp_path / "m", steps)
    info = json.loads((out / "compression.json").read_text())
    (out / "compression.json").write_text(json.dumps({**info, "steps": []}))  # steps lost: shapes differ
    with pytest.raises(TunelabError, match="does not fit"):
        store.load_compressed(out)


# ------------------------------------------------------------------------------------------------ loaders

def test_causal_and_retrieval_loaders_take_a_compressed_folder(tmp_path):
    from transformers import BertConfig, BertModel

    from tunelab.tasks.causal_lm import load_causal_model
    from tunelab.tasks.retrieval import META_FILE
    from tunelab.tasks.retrieval import load_model as load_encoder

    lm = compressed(llama(), [DYNAMIC])
    store.save_compressed(lm, make_tokenizer(), tmp_path / "lm", [DYNAMIC])
    loaded, tok = load_causal_model(tmp_path / "lm")
    assert torch.equal(logits(loaded), logits(lm)) and tok.pad_token_id == 0

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=FFN, max_position_embeddings=16)).eval()
    steps = [plan_low_rank(encoder, rank=6), WEIGHT_ONLY]
    small = compressed(encoder, steps)
    source = tmp_path / "src"
    source.mkdir()
    (source / META_FILE).write_text(json.dumps({"pooling": "mean", "max_length": 16}))
    store.save_compressed(small, make_tokenizer(), tmp_path / "run" / "model", steps, source_dir=source)
    loaded, _, meta = load_encoder(tmp_path / "run", None)
    assert meta == {"pooling": "mean", "max_length": 16}
    ids = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).last_hidden_state, small(input_ids=ids).last_hidden_state)


def test_a_compressed_run_predicts_as_the_model_in_memory(make_config, helpers, tmp_path):
    """A folder laid out as a run (config.yaml + model/ by save_compressed) loads through load_run."""
    import shutil

    from tunelab.runs import Run, load_run, predict_records

    run_dir = helpers.train_quietly(make_config({"train.max_steps": 6, "train.precision": "fp32"}))
    run = load_run(run_dir)
    steps = [plan_low_rank(run.model, rank=4), DYNAMIC]
    small = compressed(run.model, steps)
    target = tmp_path / "compressed" / "small"
    target.mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", target / "config.yaml")
    store.save_compressed(small, run.tokenizer, target / "model", steps, source_dir=run_dir / "model")
    assert json.loads((target / "model" / "labels.json").read_text()) == helpers.LABELS
    records = helpers.synthetic_records(3, seed=5)
    rows = predict_records(target, records, "mem", log=helpers.quiet)
    in_memory = run.task.predict(Run(target, run.cfg, run.task, small, run.tokenizer, run.meta),
                                 records, "mem", helpers.quiet)
    assert rows == in_memory and len(rows) == 9
    assert {r["prediction"] for r in rows} <= set(helpers.LABELS)
