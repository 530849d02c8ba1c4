"""Encoder-decoder (seq2seq) models for `task: seq2seq`: load, encode targets, loss, generate, save, reload.

Three kinds of model, one interface:
- a local Hugging Face encoder-decoder folder (T5, BART, Marian, a saved EncoderDecoderModel):
  `AutoModelForSeq2SeqLM`, in fp32;
- an encoder (builtin:minilm-l6 or a BERT-like folder) with `model.architecture: encoder-decoder`: a
  transformers `EncoderDecoderModel` warm-started from two copies of it (the decoder's cross-attention
  starts random); its tokenizer's [CLS] starts the decoder, [SEP] ends it, [PAD] pads, set on both the
  config and the generation config so that a plain `generate` and a reloaded folder agree;
- `scratch:transformer-seq2seq` (alias `scratch:seq2seq`): tunelab's own `EncoderDecoderTransformer`,
  sized by the model section, with the tokenizer named by `model.tokenizer` (its <s>/[CLS] starts the
  decoder, </s>/[SEP] ends it).

Targets are the target text's tokens followed by EOS, with no start token (`encode_targets`), so every
kind learns to stop and the decoder start token is never a target. Hugging Face models decode with
their own `generate`; the scratch model with its greedy / beam search (`tunelab.nn.models`), written by hand
because it is tunelab's own model, and following Hugging Face's beam bookkeeping so one setting means one
thing for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunelab.data.tokens import IGNORE_INDEX
from tunelab.errors import TunelabError

SCRATCH_NAMES = ("scratch:transformer-seq2seq", "scratch:seq2seq")
ARCHITECTURES = ("auto", "encoder-decoder")


@dataclass(frozen=True)
class SpecialIds:
    """The token ids a seq2seq model decodes with."""

    start: int
    """First decoder input (never generated, never a target)."""
    pad: int
    eos: tuple[int, ...]
    """Tokens that end a target; generation stops at the first."""
    extra: tuple[int, ...] = ()
    """Other ids stripped from generated output (a BOS / CLS the model may still emit)."""


# ----------------------------------------------------------------------------------------------- loading

def load_seq2seq(model_cfg, log=print) -> tuple[nn.Module, object]:
    """(model in fp32 and eval mode, tokenizer) for a seq2seq run, from the `model:` section.

    Reads name, architecture (auto | encoder-decoder; absent means auto), tokenizer, dropout and, for
    scratch models, layers / hidden_size / heads / ffn_size / position / max_length.
    """
    from tunelab.models.scratch import is_scratch_dir

    name = model_cfg.name
    architecture = getattr(model_cfg, "architecture", "auto") or "auto"
    if architecture not in ARCHITECTURES:
        raise TunelabError(f"model.architecture: got {architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    if name.startswith("scratch:") or is_scratch_dir(name):
        model, tokenizer = _scratch_seq2seq(model_cfg, log)
    else:
        model, tokenizer = _hf_seq2seq(model_cfg, architecture, log)
    model.eval()
    return model.float(), tokenizer


def _scratch_seq2seq(model_cfg, log) -> tuple[nn.Module, object]:
    """A fresh `EncoderDecoderTransformer` (scratch:transformer-seq2seq) or a saved one (its folder)."""
    from tunelab.models.scratch import _transformer_sizes, is_scratch_dir, load_scratch, load_tokenizer_ref, set_dropout
    from tunelab.nn.models import EncoderDecoderTransformer

    name = model_cfg.name
    if is_scratch_dir(name):
        if getattr(model_cfg, "tokenizer", None) is not None:
            raise TunelabError(f"model.tokenizer: {model_cfg.tokenizer!r} cannot apply to the saved model {name!r}, "
                               "which keeps its own tokenizer; remove model.tokenizer")
        model, tokenizer = load_scratch(name)
        if not isinstance(model, EncoderDecoderTransformer):
            raise TunelabError(f"model.name: {name!r} holds a scratch {model.scratch_kind} model, not an "
                               f"encoder-decoder; use {SCRATCH_NAMES[0]} or a folder saved by a seq2seq run")
        if getattr(model_cfg, "dropout", None) is not None:
            set_dropout(model, model_cfg.dropout)
        return model, tokenizer
    if name not in SCRATCH_NAMES:
        raise TunelabError(f"model.name: {name!r} is not a scratch model seq2seq can build; use "
                           f"{' or '.join(SCRATCH_NAMES)}")
    tokenizer = load_tokenizer_ref(getattr(model_cfg, "tokenizer", None))
    ids = _tokenizer_ids(tokenizer, f"model.tokenizer: {getattr(model_cfg, 'tokenizer', None)!r}")
    model = EncoderDecoderTransformer(len(tokenizer), pad_token_id=ids.pad, decoder_start_token_id=ids.start,
                                      **_transformer_sizes(model_cfg))
    log(f"model: scratch encoder-decoder, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"vocabulary {len(tokenizer):,}")
    return model, tokenizer


def _tokenizer_ids(tokenizer, what: str) -> SpecialIds:
    """Start / pad / EOS ids from a tokenizer: <s> or [CLS] starts, </s> or [SEP] ends."""
    start = _first_id(tokenizer.bos_token_id, tokenizer.cls_token_id)
    eos = _first_id(tokenizer.eos_token_id, tokenizer.sep_token_id)
    if start is None or eos is None or tokenizer.pad_token_id is None:
        raise TunelabError(f"{what} needs a start (<s> or [CLS]), an end (</s> or [SEP]) and a pad token to "
                           "decode with; train one with `tunelab tokenizer train` (both kinds have them)")
    return SpecialIds(start=start, pad=tokenizer.pad_token_id, eos=(eos,))


def _first_id(*ids: int | None) -> int | None:
    return next((i for i in ids if i is not None), None)


def _hf_seq2seq(model_cfg, architecture: str, log) -> tuple[nn.Module, object]:
    """A Hugging Face encoder-decoder folder, or one warm-started from an encoder."""
    from transformers import AutoModelForSeq2SeqLM

    from tunelab.models.load import _config, load_tokenizer
    from tunelab.models.registry import resolve_model

    path = resolve_model(model_cfg.name)
    config = _config(path, getattr(model_cfg, "dropout", None))
    if architecture == "encoder-decoder":
        if config.is_encoder_decoder:
            raise TunelabError(f"model.architecture: encoder-decoder warm-starts a model from an encoder, but "
                               f"{model_cfg.name!r} is already an encoder-decoder ({config.model_type}); "
                               "set model.architecture: auto")
        return _warm_start(path, model_cfg, log)
    if not config.is_encoder_decoder:
        raise TunelabError(f"model.name: {model_cfg.name!r} is a {config.model_type} model, not an encoder-decoder; "
                           "set model.architecture: encoder-decoder to warm-start one from an encoder, or use a "
                           "T5 / BART / Marian folder")
    model = AutoModelForSeq2SeqLM.from_pretrained(str(path), config=config, dtype=torch.float32)
    log(f"model: {config.model_type} encoder-decoder from {path}")
    return model, load_tokenizer(path)


def _warm_start(path: Path, model_cfg, log) -> tuple[nn.Module, object]:
    """`EncoderDecoderModel` from two copies of the encoder at `path`, special ids set everywhere."""
    from transformers import EncoderDecoderModel
    from transformers.utils import logging as hf_logging

    from tunelab.models.load import load_tokenizer

    dropout = getattr(model_cfg, "dropout", None)
    rates = {} if dropout is None else {f"{side}_{key}": dropout for side in ("encoder", "decoder")
                                        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the cross-attention is new by design; we report it ourselves
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(path), str(path), **rates)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = load_tokenizer(path)
    ids = _tokenizer_ids(tokenizer, f"model.name: {model_cfg.name!r}")
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = ids.start, ids.pad, ids.eos[0]
    new = sum(p.numel() for n, p in model.decoder.named_parameters() if "crossattention" in n)
    log(f"model: encoder-decoder warm-started from {path} (decoder cross-attention, {new:,} parameters, "
        "starts random)")
    return model, tokenizer


# ------------------------------------------------------------------------------------- special tokens

def special_ids(model: nn.Module, tokenizer) -> SpecialIds:
    """The start / pad / EOS ids `model` decodes with (scratch: its config + tokenizer; HF: its configs)."""
    from tunelab.models.scratch import is_scratch_model

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    extra = tuple(i for i in (tokenizer.bos_token_id, tokenizer.cls_token_id) if i is not None)
    if is_scratch_model(base):
        eos = _tokenizer_ids(tokenizer, "the model's tokenizer").eos
        return SpecialIds(base.config["decoder_start_token_id"], base.config["pad_token_id"], eos, extra)
    gen, config = base.generation_config, base.config
    start = _first_id(gen.decoder_start_token_id, config.decoder_start_token_id)
    pad = _first_id(gen.pad_token_id, config.pad_token_id, tokenizer.pad_token_id)
    eos = _first_id(gen.eos_token_id, config.eos_token_id, tokenizer.eos_token_id)
    if start is None or pad is None or eos is None:
        raise TunelabError(f"the model has no decoder start / pad / EOS id (start={start}, pad={pad}, eos={eos}); "
                           "set decoder_start_token_id, pad_token_id and eos_token_id in its config.json")
    return SpecialIds(start, pad, tuple(eos) if isinstance(eos, (list, tuple)) else (eos,), extra)


def encode_targets(model: nn.Module, tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Target token ids per text: the text's tokens (no special tokens) then EOS, at most max_length in all.

    A truncated target still ends with EOS, so the model learns to stop at the length it was trained on.
    """
    if max_length < 2:
        raise TunelabError(f"the target length must be at least 2 (one token and EOS); got {max_length}")
    eos = special_ids(model, tokenizer).eos[0]
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [row[:max_length - 1] + [eos] for row in ids]


# ----------------------------------------------------------------------------------------- loss

def seq2seq_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    """(summed token cross-entropy, number of target tokens) of batch {"input_ids", "attention_mask",
    "labels" (B, T) with -100 on padding}; the decoder reads the labels shifted right behind the start token."""
    labels = batch["labels"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "shift_right"):  # tunelab's EncoderDecoderTransformer
        decoder_input_ids = base.shift_right(labels)
    else:
        decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids).logits  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


# --------------------------------------------------------------------------------------- generation

def seq2seq_generate(model: nn.Module, tokenizer, input_ids: Tensor, attention_mask: Tensor, *,
                     max_new_tokens: int, num_beams: int = 1, length_penalty: float = 1.0,
                     no_repeat_ngram_size: int = 0) -> list[list[int]]:
    """Generated target token ids per row, without decoder-start / pad / EOS (nor a BOS / CLS) tokens.

    num_beams=1 is greedy decoding; more is beam search (score = summed log-probabilities / length **
    length_penalty, as Hugging Face defines it). no_repeat_ngram_size n > 0 bans repeating any n-gram.
    """
    if num_beams < 1 or max_new_tokens < 1 or no_repeat_ngram_size < 0:
        raise TunelabError(f"generate: num_beams ({num_beams}) and max_new_tokens ({max_new_tokens}) must be at "
                           f"least 1, no_repeat_ngram_size ({no_repeat_ngram_size}) at least 0")
    ids = special_ids(model, tokenizer)
    rows = _generate_raw(model, ids, input_ids, attention_mask, max_new_tokens, num_beams, length_penalty,
                         no_repeat_ngram_size)
    return [_strip(row, ids) for row in rows]


def _generate_raw(model: nn.Module, ids: SpecialIds, input_ids: Tensor, attention_mask: Tensor,
                  max_new_tokens: int, num_beams: int, length_penalty: float,
                  no_repeat_ngram_size: int) -> list[list[int]]:
    """Generated tokens per row after the start token, up to and including the first EOS where there is one."""
    from tunelab.models.scratch import is_scratch_model
    from tunelab.nn.models import _eval_mode

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if is_scratch_model(base):
        if num_beams == 1:
            out = base.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=ids.eos[0],
                                no_repeat_ngram_size=no_repeat_ngram_size)
            return [_cut_at_eos(row, ids) for row in out.tolist()]
        rows, _ = base.beam_search(input_ids, attention_mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                   eos_token_id=ids.eos[0], length_penalty=length_penalty,
                                   no_repeat_ngram_size=no_repeat_ngram_size)
        return rows
    with _eval_mode(model), torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             num_beams=num_beams, length_penalty=length_penalty, do_sample=False,
                             no_repeat_ngram_size=no_repeat_ngram_size, decoder_start_token_id=ids.start,
                             pad_token_id=ids.pad, eos_token_id=list(ids.eos))
    return [_cut_at_eos(row[1:], ids) for row in out.tolist()]  # column 0 is the decoder start token


def _cut_at_eos(row: list[int], ids: SpecialIds) -> list[int]:
    """`row` up to and including its first EOS (what follows is filler)."""
    for i, token in enumerate(row):
        if token in ids.eos:
            return row[:i + 1]
    return row


def _strip(row: list[int], ids: SpecialIds) -> list[int]:
    """Drop the EOS, pad, start and BOS / CLS tokens a model may have produced."""
    drop = {*ids.eos, ids.pad, ids.start, *ids.extra}
    return [token for token in row if token not in drop]


# --------------------------------------------------------------------------------------- save and load

def save_seq2seq(model: nn.Module, tokenizer, folder: str | Path) -> None:
    """Write `folder` atomically: Hugging Face models with save_pretrained (plain transformers loads them:
    AutoModelForSeq2SeqLM, or EncoderDecoderModel for a warm-started one); scratch models in tunelab's
    scratch format (weights, scratch_config.json, tokenizer)."""
    from tunelab.io import staged_dir
    from tunelab.models.scratch import is_scratch_model, save_scratch

    with staged_dir(Path(folder)) as tmp:
        if is_scratch_model(model):
            save_scratch(model, tokenizer, tmp)
        else:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))


def load_saved_seq2seq(folder: str | Path) -> tuple[nn.Module, object]:
    """(model in fp32 and eval mode, tokenizer) from a folder written by `save_seq2seq`."""
    from tunelab.models.scratch import is_scratch_dir, load_scratch

    folder = Path(folder)
    if is_scratch_dir(folder):
        return load_scratch(folder)
    if not (folder / "config.json").is_file():
        raise TunelabError(f"{folder}: no config.json or scratch_config.json; is it a folder saved by a seq2seq run?")
    from transformers import AutoModelForSeq2SeqLM

    from tunelab.models.load import load_tokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder), dtype=torch.float32)  # EncoderDecoderModel too
    model.eval()
    return model, load_tokenizer(folder)


__all__ = ["SpecialIds", "encode_targets", "load_saved_seq2seq", "load_seq2seq", "save_seq2seq",
           "seq2seq_generate", "seq2seq_loss", "special_ids"]
