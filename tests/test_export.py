"""`tunelab export`: ONNX graphs of encoder runs give onnxruntime outputs equal to PyTorch's on shapes the export
never saw; GGUF files of Llama runs read back through tunelab's gguf: loader give the same logits (f32 exactly);
the folders hold what a user needs; every impossible export is one clear error; nothing is overwritten silently.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.export import export_run, refuse_quantized

CHAT = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# ---------------------------------------------------------------------------------------------
# Runs to export: a tiny BERT classifier, a tiny Llama with a byte-level BPE tokenizer (LoRA)


@pytest.fixture(scope="module")
def cls_run(tiny_bert, data_dir, helpers, tmp_path_factory) -> Path:
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp("cls") / "run",
                              {"train.precision": "fp32"})
    return helpers.train_quietly(cfg)


@pytest.fixture(scope="module")
def onnx_info(cls_run) -> dict:
    return export_run(cls_run, "onnx", log=lambda _: None)


def byte_bpe_tokenizer():
    """A byte-level BPE (the GPT-2 / SmolLM2 kind GGUF calls `gpt2`) trained here on invented sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    text = ["The capital of France is Paris. Count from one to five: one, two, three, four, five.",
            "Write a short note to a friend about the weather today. It is sunny and warm."] * 20
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(text, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHAT
    return tok


def write_tiny_llama(folder: Path, tie: bool = False) -> Path:
    """A 2-layer random Llama (hidden 64: whole q8_0 blocks; 4 query / 2 key-value heads) with 3 more
    embeddings than the tokenizer has tokens, as real models pad their vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok) + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tie, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llama_run(helpers, tmp_path_factory) -> Path:
    """A causal_lm LoRA run (3 steps, lr 1e-2: the adapters moved) on the tiny Llama."""
    from tunelab.config import config_from_dict

    root = tmp_path_factory.mktemp("llama")
    model = write_tiny_llama(root / "model")
    data = helpers.write_jsonl(root / "notes.jsonl", [{"text": f"Note {i}: it is sunny and warm, one, two."}
                                                      for i in range(16)])
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(model), "max_length": 64}, "data": {"train": str(data)},
        "method": {"name": "lora", "r": 4}, "output_dir": str(root / "run"),
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "device": "cpu", "precision": "fp32",
                  "early_stopping": {"metric": "loss"}},
        "generate": {"max_new_tokens": 4, "samples_in_eval": 0}})
    return helpers.train_quietly(cfg)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """The gguf: conversion cache in a temporary folder, not in ~."""
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ---------------------------------------------------------------------------------------------
# ONNX


def test_onnx_equals_torch_on_batch_sizes_and_lengths_never_exported(cls_run, onnx_info):
    import onnxruntime as ort

    from tunelab.runs import load_run

    folder = cls_run / "export" / "onnx"
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [d for i in session.get_inputs() for d in i.shape] == ["batch", "sequence"] * 3
    assert [o.name for o in session.get_outputs()] == ["logits"]
    run = load_run(cls_run)
    gen = torch.Generator().manual_seed(0)
    for batch, length in ((5, 23), (1, 2), (7, 61)):  # the export traced (2, 15)
        ids = torch.randint(5, run.tokenizer.vocab_size, (batch, length), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, length // 2:] = 0  # padding in the first row (a row of one token when length is 2)
        types = torch.zeros_like(ids)
        with torch.no_grad():
            want = run.model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
        got, = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                  "token_type_ids": types.numpy()})
        assert got.shape == (batch, 3)
        assert np.abs(got - want).max() < 1e-5
    check = onnx_info["check"]
    assert check["batches"] == [[3, 35], [1, 5], [2, 39]] and check["max_abs_diff"] < 1e-6


def test_onnx_folder_holds_tokenizer_labels_and_export_json(cls_run, onnx_info):
    from transformers import AutoTokenizer

    folder = cls_run / "export" / "onnx"
    assert json.loads((folder / "labels.json").read_text()) == ["food", "sport", "tech"]
    assert json.loads((folder / "meta.json").read_text()) == {"labels": ["food", "sport", "tech"]}
    written = json.loads((folder / "export.json").read_text())
    assert written == onnx_info
    assert (written["task"], written["opset"], written["outputs"]) == ("classification", 20,
                                                                        {"logits": ["batch", "labels"]})
    text = "goal computer bread"
    assert AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(str(cls_run / "model"))(text)["input_ids"]
    assert not list(folder.parent.glob(".*staging*"))  # the staging folder was renamed into place


def test_onnx_never_overwrites_without_the_flag(cls_run, onnx_info, monkeypatch):
    import shutil

    from tunelab.export import onnx as onnx_export

    model = cls_run / "export" / "onnx" / "model.onnx"
    before = model.read_bytes()
    with pytest.raises(TunelabError, match="already exists; pass --overwrite"):
        export_run(cls_run, "onnx", log=lambda _: None)
    assert model.read_bytes() == before

    def copy_trace(graph, example, inputs, outputs, path, opset):  # the trace is tested above; this is fast
        shutil.copy(model, path)
        return 20

    monkeypatch.setattr(onnx_export, "_trace", copy_trace)
    info = export_run(cls_run, "onnx", overwrite=True, check=False, log=lambda _: None)
    assert info["check"] == {"skipped": "--no-check"}
    assert json.loads((model.parent / "export.json").read_text())["check"] == {"skipped": "--no-check"}


@pytest.mark.parametrize("kind", ["extractive_qa", "retrieval"])
def test_span_and_embedding_graphs_equal_torch(tiny_bert, tmp_path, kind):
    """The other encoder outputs, traced from the models those tasks load: start/end logits, and the
    embedding pooled and normalised as retrieval pools it (mean over real tokens only)."""
    import onnxruntime as ort
    from transformers import AutoModel, AutoModelForQuestionAnswering, AutoTokenizer

    from tunelab.export.onnx import OUTPUTS, _check, _encode, _trace, input_names, onnx_graph

    auto = AutoModelForQuestionAnswering if kind == "extractive_qa" else AutoModel
    torch.manual_seed(0)
    model = auto.from_pretrained(str(tiny_bert)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    graph = onnx_graph(model, OUTPUTS[kind], "mean").eval()
    inputs = input_names(model, tok)
    _trace(graph, _encode(tok, ["goal match", "the team won the league today"], inputs, 64), inputs,
           OUTPUTS[kind], tmp_path / "m.onnx", None)
    assert _check(graph, tmp_path / "m.onnx", tok, inputs, 64)["max_abs_diff"] < 1e-5
    enc = _encode(tok, ["goal", "the coach and the player cook rice"], inputs, 64)  # row 0 padded
    outs = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {k: v.numpy() for k, v in enc.items()})
    if kind == "retrieval":
        alone = _encode(tok, ["goal"], inputs, 64)  # padding must not move a text's embedding
        single, = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {k: v.numpy() for k, v in alone.items()})
        assert np.abs(outs[0][0] - single[0]).max() < 1e-5
        assert np.allclose(np.linalg.norm(outs[0], axis=1), 1.0, atol=1e-5)
    else:
        assert [o.shape for o in outs] == [enc["input_ids"].shape] * 2


def test_a_graph_with_a_fixed_sequence_length_is_refused():
    """A trace that turned the length into a constant (a scratch LSTM classifier does) is one clear error."""
    from onnx import TensorProto, helper

    from tunelab.export.onnx import _require_dynamic_axes

    def graph(*dims):
        ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, list(dims))
        out = helper.make_tensor_value_info("logits", TensorProto.INT64, list(dims))
        return helper.make_model(helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])],
                                                  "g", [ids], [out]))

    _require_dynamic_axes(graph("batch", "sequence"))
    with pytest.raises(TunelabError, match="fixes the sequence size of input_ids at 14"):
        _require_dynamic_axes(graph("batch", 14))


# ---------------------------------------------------------------------------------------------
# GGUF


def test_gguf_f32_reads_back_to_the_lora_runs_logits(llama_run, home):
    """The file, read by tunelab's own gguf: loader, equals the unmerged LoRA model the run loads."""
    from transformers import AutoModelForCausalLM

    from tunelab.models.gguf import locate_gguf
    from tunelab.runs import load_run

    info = export_run(llama_run, "gguf", log=lambda _: None)
    path = llama_run / "export" / "model-f32.gguf"
    assert json.loads(path.with_suffix(".json").read_text()) == info
    check = info["check"]
    assert check["max_abs_diff"] == 0.0 and check["greedy_equal"] and check["tokenizer_same_ids"]
    assert info["tensors"] == {"F32": 21}  # 2 x 9 per block + embeddings, final norm, output (untied)
    run = load_run(llama_run)
    assert hasattr(run.model, "peft_config")  # compared with the adapter model itself, not a merge of it
    back = AutoModelForCausalLM.from_pretrained(str(locate_gguf(path, log=lambda _: None))).eval()
    ids = run.tokenizer("Note 3: it is sunny", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (back(input_ids=ids).logits - run.model(input_ids=ids).logits).abs().max() < 1e-5
    assert (home / "models").is_dir()  # the conversion cache stayed in TUNELAB_HOME


def test_gguf_metadata_has_the_architecture_tokenizer_and_chat_template(llama_run):
    import gguf

    path = llama_run / "export" / "model-f32.gguf"
    if not path.exists():
        export_run(llama_run, "gguf", log=lambda _: None)
    fields = gguf.GGUFReader(str(path)).fields
    value = {k: f.contents() for k, f in fields.items() if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                                     "tokenizer.ggml.token_type")}
    assert value["general.architecture"] == "llama" and value["llama.block_count"] == 2
    assert (value["llama.attention.head_count"], value["llama.attention.head_count_kv"]) == (4, 2)
    assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "gpt-2"
    assert value["tokenizer.chat_template"] == CHAT
    tok = byte_bpe_tokenizer()
    assert (value["tokenizer.ggml.bos_token_id"], value["tokenizer.ggml.eos_token_id"]) == \
        (tok.bos_token_id, tok.eos_token_id)
    tokens, types = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == len(tok) + 3 and tokens[-1] == f"[PAD{len(tok) + 2}]"
    assert types[tok.eos_token_id] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    assert len(fields["tokenizer.ggml.merges"].contents()) > 0


@pytest.mark.parametrize("qtype,tensors,rel_below", [("f16", {"F16": 16, "F32": 5}, 2e-3),
                                                     ("q8_0", {"Q8_0": 16, "F32": 5}, 3e-2)])
def test_gguf_f16_and_q8_0_within_their_tolerance(llama_run, tmp_path, qtype, tensors, rel_below):
    info = export_run(llama_run, "gguf", gguf_type=qtype, output=tmp_path / f"m-{qtype}.gguf", log=lambda _: None)
    assert info["tensors"] == tensors  # matrices in the type, norms f32
    assert 0 < info["check"]["max_rel_diff"] < rel_below
    assert info["check"]["greedy_equal"]


def test_gguf_without_the_qk_permutation_fails_the_check(llama_run, tmp_path, monkeypatch):
    """The check sees a wrong rotary layout (and leaves no file): llama.cpp's Q/K row order matters."""
    from tunelab.export import gguf as gguf_export

    monkeypatch.setattr(gguf_export, "_permute", lambda weight, heads: weight)
    out = tmp_path / "wrong.gguf"
    with pytest.raises(TunelabError, match="logits differ by .* of their scale"):
        export_run(llama_run, "gguf", output=out, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_compressed_variants_export_as_their_shapes_allow(llama_run):
    """A magnitude-pruned variant keeps the layout: its GGUF reads back exactly, zeros included; a structurally
    pruned one keeps the original config with smaller layers: one clear error."""
    import gguf

    from tunelab.cli import main

    for args in (["--prune", "magnitude", "--sparsity", "0.5"], ["--prune", "structured", "--sparsity", "0.5"]):
        assert main(["compress", str(llama_run), *args, "--no-progress"]) == 0
    magnitude, structured = llama_run / "compressed" / "magnitude-50", llama_run / "compressed" / "structured-50"
    info = export_run(magnitude, "gguf", log=lambda _: None)
    assert info["check"]["max_abs_diff"] == 0.0
    tensors = {t.name: t for t in gguf.GGUFReader(str(magnitude / "export" / "model-f32.gguf")).tensors}
    assert 0.45 < float((tensors["blk.0.ffn_up.weight"].data == 0).mean()) < 0.55  # the pruned zeros are there
    with pytest.raises(TunelabError, match="no longer has the shape its config describes"):
        export_run(structured, "gguf", log=lambda _: None)


# ---------------------------------------------------------------------------------------------
# Errors


def test_impossible_exports_are_one_clear_error(cls_run, llama_run, tmp_path):
    with pytest.raises(TunelabError, match="GGUF export writes Llama-architecture causal LMs.*bert"):
        export_run(cls_run, "gguf", output=tmp_path / "x.gguf")
    with pytest.raises(TunelabError, match="is a causal_lm run; ONNX export takes classification, "
                                           "token_classification, extractive_qa, retrieval runs"):
        export_run(llama_run, "onnx", output=tmp_path / "x")
    with pytest.raises(TunelabError, match="is not a finished tunelab run"):
        export_run(tmp_path, "onnx")
    with pytest.raises(TunelabError, match="--type applies to --format gguf"):
        export_run(cls_run, "onnx", gguf_type="q8_0")
    (tmp_path / "taken.gguf").write_bytes(b"mine")
    with pytest.raises(TunelabError, match="taken.gguf already exists; pass --overwrite"):
        export_run(llama_run, "gguf", output=tmp_path / "taken.gguf")
    assert (tmp_path / "taken.gguf").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.gguf"]


def test_gguf_refuses_layers_that_no_longer_match_the_config(tmp_path):
    """A structurally pruned (or low-rank) variant keeps its original config; GGUF would describe it wrongly."""
    from transformers import AutoModelForCausalLM

    from tunelab.export.gguf import require_llama

    model = AutoModelForCausalLM.from_pretrained(str(write_tiny_llama(tmp_path / "m")))
    require_llama(model, tmp_path)  # as built: fine
    model.model.layers[1].mlp.up_proj = torch.nn.Linear(64, 96, bias=False)  # an FFN pruned to 96 neurons
    with pytest.raises(TunelabError, match=r"model.layers.1.mlp.up_proj.weight \(96, 64\) no longer has the shape"):
        require_llama(model, tmp_path)


def test_int8_dynamic_modules_are_refused(tiny_bert):
    import warnings

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3)
    refuse_quantized(model, Path("run"))  # fp32: fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    with pytest.raises(TunelabError, match="int8-quantized modules .*cannot be exported"):
        refuse_quantized(q, Path("run"))


def test_cli_exit_code_2_and_one_line(cls_run, capsys):
    from tunelab.cli import main

    assert main(["export", str(cls_run), "--format", "gguf", "--output", str(cls_run / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--format onnx" in err and "\n" not in err


def test_overwrite_replaces_only_an_export_never_a_users_folder_or_side_file(cls_run, llama_run, tmp_path):
    # an ONNX export replaces its folder whole: --overwrite must not let it swallow a run or a project folder
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(TunelabError, match="holds other files and no export.json"):
        export_run(cls_run, "onnx", output=mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    # GGUF: the check's .json beside the file is the user's too; a .json or folder output is refused
    (tmp_path / "m.json").write_text("theirs")
    with pytest.raises(TunelabError, match="m.json already exists; pass --overwrite"):
        export_run(llama_run, "gguf", output=tmp_path / "m.gguf")
    assert (tmp_path / "m.json").read_text() == "theirs" and not (tmp_path / "m.gguf").exists()
    with pytest.raises(TunelabError, match="give a .gguf name"):
        export_run(llama_run, "gguf", output=tmp_path / "out.json")
    with pytest.raises(TunelabError, match="is a folder; give the file to write"):
        export_run(llama_run, "gguf", output=mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
