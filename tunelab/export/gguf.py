"""GGUF export of a Llama-architecture causal LM run (SmolLM2 is one), written with the `gguf` library.

The file holds what llama.cpp reads: the llama.* hyper-parameters, the tokenizer (byte-level BPE, as
`tokenizer.ggml.model = gpt2`: tokens, token types, merges, bos/eos/unk/pad ids, the chat template) and the
tensors under llama.cpp's names (gguf.get_tensor_name_map). Two details follow llama.cpp's own converter:
- Q and K projections are stored with their rows permuted from the Hugging Face rotary layout (the two
  halves of each head) to interleaved pairs (`_permute`; transformers' GGUF reader undoes it);
- 1-D tensors (norms) stay f32; with --type q8_0 a matrix whose rows are not whole 32-value blocks is f16.

The check loads the written file back through tunelab's own `gguf:PATH` reader
(tunelab.models.gguf._load_dequantized: transformers' GGUF reader), compares the logits of a few prompts
with the PyTorch model and the greedy continuation of one; the result is written beside the file as JSON.
A difference over the type's tolerance (TOLERANCES) is an error and leaves no file behind.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.export import load_for_export, refuse_bad_file, refuse_existing

TYPES = ("f32", "f16", "q8_0")
# max |logit difference| / max |logit| over the check prompts. f32 stores the weights exactly (measured 0);
# f16 and q8_0 round them (SmolLM2-135M measured: see the README's export section).
TOLERANCES = {"f32": 1e-4, "f16": 1e-2, "q8_0": 1e-1}
CHECK_PROMPTS = ("The capital of France is", "Count from one to five: one, two,",
                 "Write a short note to a friend about the weather today.", "In 2024, 1234 + 5678 = 6912.")
GREEDY_TOKENS = 12


def export_gguf(run_dir: str | Path, *, output: str | Path | None = None, overwrite: bool = False,
                check: bool = True, qtype: str = "f32", log=print) -> dict:
    """Write RUN_DIR's causal LM as a GGUF file (default RUN_DIR/export/model-<qtype>.gguf) and, unless
    check is False, RUN_DIR/export/model-<qtype>.json with the comparison; returns that JSON's content."""
    from tunelab.io import atomic_write_json, current_umask

    if qtype not in TYPES:
        raise TunelabError(f"--type {qtype!r}; known: {', '.join(TYPES)}")
    run_dir = Path(run_dir)
    path = Path(output) if output else run_dir / "export" / f"model-{qtype}.gguf"
    refuse_bad_file(path)
    refuse_existing(path, overwrite)
    if check:
        refuse_existing(path.with_suffix(".json"), overwrite)
    run = load_for_export(run_dir)
    require_llama(run.model, run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".staging.gguf")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        t0 = time.perf_counter()
        counts = write_gguf(run.model, run.tokenizer, tmp, qtype, name=run_dir.name)
        info = {"format": "gguf", "type": qtype, "run": str(run_dir), "file": path.name,
                "bytes": tmp.stat().st_size, "tensors": counts,
                "write_seconds": round(time.perf_counter() - t0, 2)}
        log(f"wrote {sum(counts.values())} tensors ({tmp.stat().st_size / 1e6:.1f} MB) in {info['write_seconds']}s")
        info["check"] = check_gguf(run.model, run.tokenizer, tmp, qtype, log) if check else {"skipped": "--no-check"}
        tmp.chmod(0o666 & ~current_umask())  # mkstemp made it private; an export is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_json(path.with_suffix(".json"), info)
    log(f"wrote {path}")
    return info


def require_llama(model, run_dir: Path) -> None:
    """One clear error for a model llama.cpp's llama architecture cannot hold."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None) or type(model).__name__
    if kind != "llama" or not type(model).__name__.endswith("ForCausalLM"):
        raise TunelabError(f"{run_dir}: GGUF export writes Llama-architecture causal LMs (e.g. "
                           f"builtin:smollm2-135m-instruct runs, LoRA merged); this run's model is {kind} "
                           f"({type(model).__name__}). Encoder runs export with --format onnx")
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise TunelabError(f"{run_dir}: rope scaling {rope.get('rope_type')!r} is not written by tunelab's GGUF "
                           "export (only the default rotary embedding)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise TunelabError(f"{run_dir}: this Llama has bias terms, which tunelab's GGUF export does not write")
    changed = _shapes_off_config(model)
    if changed:
        raise TunelabError(f"{run_dir}: tensor {changed} no longer has the shape its config describes (a variant "
                           "pruned into smaller layers or split into low-rank factors); GGUF holds one shape per "
                           "kind of layer: export the run itself, or a variant with magnitude pruning only")


def _shapes_off_config(model) -> str | None:
    """The first tensor whose name or shape differs from a model built from `model.config` (None: none)."""
    import torch

    with torch.device("meta"):  # shapes only, no memory
        fresh = type(model)(model.config).state_dict()
    for name, tensor in model.state_dict().items():
        if name not in fresh or fresh[name].shape != tensor.shape:
            return f"{name} {tuple(tensor.shape)}"
    missing = sorted(set(fresh) - set(model.state_dict()))
    return f"{missing[0]} (missing)" if missing else None


# ---------------------------------------------------------------------------------------------
# Writing


def write_gguf(model, tokenizer, path: Path, qtype: str, name: str) -> dict[str, int]:
    """Write `model` (a LlamaForCausalLM) + `tokenizer` to `path`; returns {ggml type name: tensor count}."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _write_hparams(writer, config, qtype, name)
    _write_tokenizer(writer, tokenizer, config.vocab_size)
    counts = _write_tensors(writer, model, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def _write_hparams(writer, config, qtype: str, name: str) -> None:
    import gguf

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Byte-level BPE as llama.cpp's `gpt2` tokenizer model; merges, special ids and chat template through
    gguf.SpecialVocab, read from the tokenizer saved to a temporary folder."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    if backend.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        kind = backend.get("model", {}).get("type", type(tokenizer).__name__)
        raise TunelabError(f"GGUF export writes byte-level BPE tokenizers (as SmolLM2's); this run's tokenizer is "
                           f"{kind}")
    tokens, types = gguf_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(backend))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their llama.cpp types: CONTROL for special added tokens, USER_DEFINED for other
    added tokens, NORMAL for the BPE vocabulary, UNUSED "[PADi]" for ids the model has but the tokenizer not."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise TunelabError(f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embeddings")
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _pre_tokenizer(backend: dict) -> str:
    """llama.cpp's name for how text is split before BPE: 'gpt-2' for the GPT-2 split (ByteLevel with its
    regex, which is what tunelab's SmolLM2 tokenizer, read from GGUF by transformers, uses); any other split is
    refused."""
    pre = backend.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    # e.g. Sequence[Digits(individual), ByteLevel] (Hugging Face's own SmolLM2 / Llama 3 folders): llama.cpp's
    # "default" split would tokenize numbers differently, and the reader used by the check cannot tell
    raise TunelabError(f"--format gguf: the tokenizer splits text with a {pre.get('type', 'missing')} "
                       "pre-tokenizer; tunelab writes GGUF only for plain byte-level (GPT-2 split) BPE tokenizers, "
                       "whose llama.cpp name it can vouch for")


def _write_tensors(writer, model, qtype: str) -> dict[str, int]:
    """Every weight under its llama.cpp name, Q/K permuted, in the file's type; returns counts per type."""
    import gguf
    import numpy as np

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads a missing output.weight as tied to token_embd
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TunelabError(f"GGUF export: no llama.cpp name for tensor {hf_name!r} {tuple(tensor.shape)} "
                               "(a compressed variant with changed layers cannot be written as GGUF)")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        data, raw = _convert(data, qtype)
        kind = raw.name if raw is not None else ("F32" if data.dtype == np.float32 else "F16")
        counts[kind] = counts.get(kind, 0) + 1
        writer.add_tensor(gguf_name, data, raw_dtype=raw)
    return counts


def _permute(weight, n_heads: int):
    """(heads·head_dim, in) Q/K rows from the Hugging Face rotary layout (per head: first half, second half)
    to llama.cpp's (per head: interleaved pairs), as llama.cpp's convert_hf_to_gguf does."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])  # (h, 2, hd/2, in)
            .swapaxes(1, 2)  # (h, hd/2, 2, in)
            .reshape(weight.shape))


def _convert(data, qtype: str):
    """(array to write, raw ggml type or None): 1-D stays f32; f16 halves; q8_0 quantizes whole 32-blocks."""
    import gguf
    import numpy as np

    if data.ndim == 1 or qtype == "f32":
        return data.astype(np.float32), None
    if qtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


# ---------------------------------------------------------------------------------------------
# Checking


def check_gguf(model, tokenizer, path: Path, qtype: str, log=print) -> dict:
    """Load `path` back with tunelab's gguf: reader and compare with `model`: logits of CHECK_PROMPTS
    (max |diff|, and relative to max |logit|), the reader's token ids, and a greedy continuation."""
    import torch

    from tunelab.models.gguf import _load_dequantized

    t0 = time.perf_counter()
    back, back_tok = _load_dequantized(path)
    back.eval()
    prompts = _check_prompts(tokenizer)
    worst = scale = 0.0
    same_ids = True
    with torch.no_grad():
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]  # (1, T)
            same_ids &= back_tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
            want, got = model(input_ids=ids).logits, back(input_ids=ids).logits  # (1, T, V)
            worst = max(worst, float((want - got).abs().max()))
            scale = max(scale, float(want.abs().max()))
    greedy = _same_greedy(model, back, tokenizer, prompts[0])
    result = {"max_abs_diff": worst, "max_rel_diff": worst / max(scale, 1e-12), "tolerance_rel": TOLERANCES[qtype],
              "prompts": len(prompts), "tokenizer_same_ids": bool(same_ids), **greedy,
              "seconds": round(time.perf_counter() - t0, 2)}
    log(f"gguf reader vs torch: max |diff| {worst:.3g} ({result['max_rel_diff']:.2e} of max |logit|, tolerance "
        f"{TOLERANCES[qtype]:g}); greedy {GREEDY_TOKENS} tokens {'equal' if greedy['greedy_equal'] else 'differ'}; "
        f"{result['seconds']}s")
    _raise_if_off(result, qtype)
    return result


def _check_prompts(tokenizer) -> list[str]:
    """CHECK_PROMPTS, the first rendered through the chat template when the tokenizer has one."""
    prompts = list(CHECK_PROMPTS)
    if getattr(tokenizer, "chat_template", None):
        prompts[0] = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                   tokenize=False, add_generation_prompt=True)
    return prompts


def _same_greedy(model, back, tokenizer, prompt: str) -> dict:
    """Greedy continuations of `prompt` by both models (GREEDY_TOKENS new tokens, no early stop)."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    runs = []
    with torch.no_grad():
        for m in (model, back):
            out = ids
            for _ in range(GREEDY_TOKENS):  # plain argmax loop: no generation config, no stop tokens
                nxt = m(input_ids=out).logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
                out = torch.cat([out, nxt], dim=1)
            runs.append(out[0, ids.shape[1]:].tolist())
    return {"greedy_equal": runs[0] == runs[1], "greedy_text": tokenizer.decode(runs[1])}


def _raise_if_off(result: dict, qtype: str) -> None:
    problems = []
    if not result["max_rel_diff"] <= TOLERANCES[qtype]:  # also catches NaN
        problems.append(f"logits differ by {result['max_rel_diff']:.3g} of their scale (tolerance "
                        f"{TOLERANCES[qtype]:g} for {qtype})")
    if qtype == "f32" and not result["greedy_equal"]:
        problems.append("the greedy continuation differs")
    if not result["tokenizer_same_ids"]:
        problems.append("the file's tokenizer splits the check prompts differently")
    if problems:
        raise TunelabError(f"the GGUF file read back does not match the run's model: {'; '.join(problems)}; "
                           "nothing was written (skip the check with --no-check at your own risk)")
