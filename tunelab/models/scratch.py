"""Scratch models (`tunelab.nn`) as the model of a run: tokenizer, builders from `model:`, save and load.

Three ways a run gets a scratch model:
- `model.name: scratch:KIND`, KIND one of rnn | lstm | gru | transformer | gpt, sized by `model.layers`,
  `hidden_size`, `heads`, `ffn_size`, `bidirectional`, `position`, `dropout` (null -> 0.1) and
  `max_length` (the learned/sinusoidal position table size). RNN kinds use hidden_size for the embedding
  too and ignore heads/ffn_size/position. `scratch:gpt` for classification is `GPTClassifier`;
  `scratch:transformer` for extractive_qa is `TransformerQA` (a start/end span head per token).
  For token_classification, `scratch:transformer` is `TransformerTagger` and `scratch:rnn|lstm|gru` is
  `RNNTagger` (a tag per token).
- `model.name: FOLDER` where FOLDER holds `scratch_config.json` (a RUN_DIR/model of `tunelab train` or
  `tunelab pretrain`): the saved weights, its own tokenizer and sizes; `model.tokenizer` and the size keys
  do not apply. A pretrained GPT becomes a `GPTClassifier` with its body loaded and a new head.
- `tunelab pretrain` builds or loads a `GPT` through `build_scratch_causal_lm`.

The tokenizer (`model.tokenizer`) is a folder from `tunelab tokenizer train` (or any folder that
`AutoTokenizer` reads) or a model reference such as `builtin:minilm-l6`, the default. Every parameter of a
fresh scratch model is new; the head names returned are the classifier's alone, so `method: head` trains
only the head, but for scratch models `method: full` is the normal choice (`freeze` and `head` only make
sense on a pretrained body; LoRA needs a Hugging Face model).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunelab.data.tokens import ensure_pad_token, pad_id_of
from tunelab.errors import TunelabError
from tunelab.nn.models import (CONFIG_NAME, GPT, ROTARY_BASE, WEIGHTS_NAME, Embeddings, ModelOutput,
                               build_scratch_model, load_scratch_model, save_scratch_model)
from tunelab.nn.transformer import TransformerEncoder

PREFIX = "scratch:"
DEFAULT_TOKENIZER = "builtin:minilm-l6"
DEFAULT_DROPOUT = 0.1
RECURRENT_KINDS = ("rnn", "lstm", "gru")
CLASSIFIER_KINDS = (*RECURRENT_KINDS, "transformer", "gpt")
POOLINGS = ("mean", "last")


# -------------------------------------------------------------------------- a GPT body as a classifier

class GPTClassifier(nn.Module):
    """GPT body (embeddings + causal pre-norm decoder) -> pool over real tokens -> dropout -> `classifier`.

    Module names match `GPT` (`embeddings`, `decoder`), so `from_gpt` copies a pretrained body one to one;
    the GPT's `lm_head` is left out (tied, it is the token embedding anyway). Under causal attention the
    state at position t has read tokens 0..t only: "mean" averages every prefix summary (the default; it
    learns faster from few labelled examples), "last" takes the last real token's state, the only one
    that has read the whole text. Right padding never reaches a real token, so logits ignore padding.
    """

    scratch_kind = "gpt-classifier"

    def __init__(self, vocab_size: int, num_labels: int, hidden_size: int = 128, num_layers: int = 2,
                 num_heads: int = 4, ffn_size: int | None = None, max_position: int = 512,
                 dropout: float = 0.1, position: str = "learned", pooling: str = "mean",
                 pad_token_id: int = 0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}'; known: {', '.join(POOLINGS)}")
        self.config = dict(vocab_size=vocab_size, num_labels=num_labels, hidden_size=hidden_size,
                           num_layers=num_layers, num_heads=num_heads, ffn_size=ffn_size,
                           max_position=max_position, dropout=dropout, position=position, pooling=pooling,
                           pad_token_id=pad_token_id)
        # the same construction as tunelab.nn.models.GPT, so the state dicts line up
        self.embeddings = Embeddings(vocab_size, hidden_size, max_position, position, dropout)
        self.decoder = TransformerEncoder(num_layers, hidden_size, num_heads, ffn_size or 4 * hidden_size,
                                          dropout, "gelu", norm_first=True,
                                          rotary_base=ROTARY_BASE if position == "rotary" else None)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    @classmethod
    def from_gpt(cls, gpt: GPT, num_labels: int, pooling: str = "mean", pad_token_id: int = 0) -> "GPTClassifier":
        """A classifier whose body holds copies of `gpt`'s embeddings and decoder; the head is new."""
        sizes = {k: v for k, v in gpt.config.items() if k != "tie_embeddings"}
        model = cls(num_labels=num_labels, pooling=pooling, pad_token_id=pad_token_id, **sizes)
        model.embeddings.load_state_dict(gpt.embeddings.state_dict())
        model.decoder.load_state_dict(gpt.decoder.state_dict())
        return model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        real = (attention_mask.bool() if attention_mask is not None
                else input_ids != self.config["pad_token_id"])  # (B, T)
        x = self.decoder(self.embeddings(input_ids), key_padding_mask=~real, causal=True)  # (B, T, C)
        if self.config["pooling"] == "last":
            last = real.size(1) - 1 - real.flip(1).long().argmax(dim=1)  # (B,) index of the last real token
            pooled = x[torch.arange(x.size(0), device=x.device), last]  # (B, C)
        else:
            weights = real.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        return ModelOutput(None if labels is None else F.cross_entropy(logits, labels), logits)


# ------------------------------------------------------------------- a Transformer encoder with a span head

@dataclass
class SpanOutput:
    """What a span model returns, named as transformers' QuestionAnsweringModelOutput names it."""

    loss: Tensor | None
    start_logits: Tensor
    end_logits: Tensor


class TransformerQA(nn.Module):
    """Embeddings -> Transformer encoder -> `qa_outputs` Linear(C, 2): a start and an end logit per token.

    The body is built as in `TransformerClassifier` (the same module names `embeddings` / `encoder`, so a
    saved scratch classifier's body loads one to one, `from_classifier`). Extractive QA reads the question
    and a context window as one row ([CLS] question [SEP] context [SEP]); with no segment embeddings the
    model tells them apart by the [SEP] between them. `token_type_ids` is accepted and ignored, so batches
    built for BERT-like models run here too. The loss, when positions are given, is the mean of the start
    and end cross entropies over the real tokens (as BertForQuestionAnswering, with padding left out).
    """

    scratch_kind = "transformer-qa"

    def __init__(self, vocab_size: int, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                 ffn_size: int | None = None, max_position: int = 512, dropout: float = 0.1,
                 position: str = "learned", norm_first: bool = True, pad_token_id: int = 0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                           num_heads=num_heads, ffn_size=ffn_size, max_position=max_position, dropout=dropout,
                           position=position, norm_first=norm_first, pad_token_id=pad_token_id)
        self.embeddings = Embeddings(vocab_size, hidden_size, max_position, position, dropout)
        self.encoder = TransformerEncoder(num_layers, hidden_size, num_heads, ffn_size or 4 * hidden_size,
                                          dropout, "gelu", norm_first,
                                          rotary_base=ROTARY_BASE if position == "rotary" else None)
        self.qa_outputs = nn.Linear(hidden_size, 2)

    @classmethod
    def from_classifier(cls, classifier: nn.Module) -> "TransformerQA":
        """A span model whose body holds copies of a scratch TransformerClassifier's; the head is new."""
        sizes = {k: v for k, v in classifier.config.items() if k != "num_labels"}
        model = cls(**sizes)
        model.embeddings.load_state_dict(classifier.embeddings.state_dict())
        model.encoder.load_state_dict(classifier.encoder.state_dict())
        return model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                start_positions: Tensor | None = None, end_positions: Tensor | None = None) -> SpanOutput:
        real = attention_mask.bool() if attention_mask is not None else input_ids != self.config["pad_token_id"]
        x = self.encoder(self.embeddings(input_ids), key_padding_mask=~real)  # (B, T, C)
        start, end = self.qa_outputs(x).unbind(dim=-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start, end, real, start_positions, end_positions, reduction="mean")
        return SpanOutput(loss, start, end)


def span_loss(start_logits: Tensor, end_logits: Tensor, real: Tensor, start_positions: Tensor,
              end_positions: Tensor, reduction: str = "sum") -> Tensor:
    """(CE(start) + CE(end)) / 2 per row over its real tokens (padding cannot take probability), summed or
    averaged over the rows. Logits (B, T), real (B, T) bool, positions (B,)."""
    hidden = ~real
    start = F.cross_entropy(start_logits.float().masked_fill(hidden, float("-inf")), start_positions,
                            reduction=reduction)
    end = F.cross_entropy(end_logits.float().masked_fill(hidden, float("-inf")), end_positions,
                          reduction=reduction)
    return (start + end) / 2


# -------------------------------------------------------------------- token heads: a tag per token

class TransformerTagger(nn.Module):
    """Embeddings -> Transformer encoder -> dropout -> `classifier` Linear(C, num_labels) at every token.

    The body is built as in `TransformerClassifier` (same module names, so a saved scratch classifier's body
    loads one to one, `from_body`). Logits (B, T, num_labels); the loss, when labels (B, T) are given, is the
    mean cross entropy over the positions whose label is not -100 (Hugging Face's token-classification
    convention). `token_type_ids` is accepted and ignored, so batches built for BERT run here too.
    """

    scratch_kind = "transformer-tagger"

    def __init__(self, vocab_size: int, num_labels: int, hidden_size: int = 128, num_layers: int = 2,
                 num_heads: int = 4, ffn_size: int | None = None, max_position: int = 512, dropout: float = 0.1,
                 position: str = "learned", norm_first: bool = True, pad_token_id: int = 0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, num_labels=num_labels, hidden_size=hidden_size,
                           num_layers=num_layers, num_heads=num_heads, ffn_size=ffn_size, max_position=max_position,
                           dropout=dropout, position=position, norm_first=norm_first, pad_token_id=pad_token_id)
        self.embeddings = Embeddings(vocab_size, hidden_size, max_position, position, dropout)
        self.encoder = TransformerEncoder(num_layers, hidden_size, num_heads, ffn_size or 4 * hidden_size,
                                          dropout, "gelu", norm_first,
                                          rotary_base=ROTARY_BASE if position == "rotary" else None)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        real = attention_mask.bool() if attention_mask is not None else input_ids != self.config["pad_token_id"]
        x = self.encoder(self.embeddings(input_ids), key_padding_mask=~real)  # (B, T, C)
        logits = self.classifier(self.dropout(x))  # (B, T, num_labels)
        return ModelOutput(_token_loss(logits, labels), logits)


class RNNTagger(nn.Module):
    """Embedding -> RNN/LSTM/GRU stack (bidirectional by default) -> dropout -> `classifier` at every token.

    Module names match `RNNClassifier` (`embedding`, `rnn`, `classifier`), so a saved recurrent classifier's
    body loads one to one. Padded steps output zeros and never touch the state (tunelab.nn.rnn), so a
    token's logits do not depend on the padding of its row. `cell` is rnn | lstm | gru.
    """

    scratch_kind = "rnn-tagger"

    def __init__(self, cell: str, vocab_size: int, num_labels: int, embed_dim: int = 128, hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.1, pad_token_id: int = 0):
        from tunelab.nn.models import RECURRENT

        super().__init__()
        if cell not in RECURRENT:
            raise ValueError(f"unknown recurrent cell '{cell}'; known: {', '.join(RECURRENT)}")
        self.config = dict(cell=cell, vocab_size=vocab_size, num_labels=num_labels, embed_dim=embed_dim,
                           hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                           dropout=dropout, pad_token_id=pad_token_id)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = RECURRENT[cell](embed_dim, hidden_size, num_layers=num_layers, dropout=dropout,
                                   bidirectional=bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size * self.rnn.num_directions, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        real = attention_mask.bool() if attention_mask is not None else input_ids != self.config["pad_token_id"]
        x, _ = self.rnn(self.dropout(self.embedding(input_ids)), mask=real)  # (B, T, D*H)
        logits = self.classifier(self.dropout(x))  # (B, T, num_labels)
        return ModelOutput(_token_loss(logits, labels), logits)


def _token_loss(logits: Tensor, labels: Tensor | None) -> Tensor | None:
    """Mean cross entropy of logits (B, T, L) against labels (B, T) over the positions not -100."""
    if labels is None:
        return None
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


TAGGER_KINDS = (*RECURRENT_KINDS, "transformer")


def build_scratch_tagger(model_cfg, labels: list[str]) -> tuple[nn.Module, object, set[str]]:
    """(token tagger, tokenizer, head names) for token classification: `scratch:KIND` fresh (KIND one of
    TAGGER_KINDS), or a saved scratch folder holding a tagger (its head kept when its labels.json equals
    `labels`, else new) or a Transformer / recurrent classifier (its body under a new token head)."""
    if is_scratch_dir(model_cfg.name):
        _check_no_tokenizer(model_cfg)
        path = Path(model_cfg.name).expanduser()
        model, tokenizer = _as_tagger(_load_model(path), labels, path), _load_tokenizer(path)
        if model_cfg.dropout is not None:
            set_dropout(model, model_cfg.dropout)
        limit = model.config.get("max_position")
        if limit is not None and model_cfg.max_length > limit:
            raise TunelabError(f"model.max_length: {model_cfg.max_length} exceeds the {limit} positions the saved "
                               f"model {str(path)!r} was built with; set model.max_length to {limit} or less")
        return model, tokenizer, head_names(model)
    kind = _kind(model_cfg.name, TAGGER_KINDS, "a token tagger")
    tokenizer = load_tokenizer_ref(model_cfg.tokenizer)
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    if kind in RECURRENT_KINDS:
        model = RNNTagger(kind, vocab, len(labels), embed_dim=model_cfg.hidden_size,
                          hidden_size=model_cfg.hidden_size, num_layers=model_cfg.layers,
                          bidirectional=model_cfg.bidirectional, dropout=_dropout(model_cfg.dropout),
                          pad_token_id=pad)
    else:
        model = TransformerTagger(vocab, len(labels), pad_token_id=pad, **_transformer_sizes(model_cfg))
    return model, tokenizer, head_names(model)


def _as_tagger(model: nn.Module, labels: list[str], path: Path) -> nn.Module:
    """A saved scratch model as a tagger for `labels`: a tagger as it is (a new head for other labels), a
    classifier's body under a new token head."""
    if isinstance(model, (TransformerTagger, RNNTagger)):
        saved = path / "labels.json"
        if saved.is_file() and json.loads(saved.read_text()) == list(labels):
            return model
        model.classifier = nn.Linear(model.classifier.in_features, len(labels))
        model.config["num_labels"] = len(labels)
        return model
    sizes = {k: v for k, v in model.config.items() if k not in ("num_labels", "kind")}
    if model.scratch_kind == "transformer":
        tagger: nn.Module = TransformerTagger(num_labels=len(labels), **sizes)
        tagger.embeddings.load_state_dict(model.embeddings.state_dict())
        tagger.encoder.load_state_dict(model.encoder.state_dict())
    elif model.scratch_kind in RECURRENT_KINDS:
        tagger = RNNTagger(model.scratch_kind, num_labels=len(labels), **sizes)
        tagger.embedding.load_state_dict(model.embedding.state_dict())
        tagger.rnn.load_state_dict(model.rnn.state_dict())
    else:
        raise TunelabError(f"model.name: {str(path)!r} holds a scratch {model.scratch_kind} model; token "
                           "classification goes on from a scratch tagger, transformer or rnn/lstm/gru classifier "
                           f"folder, or {', '.join(PREFIX + k for k in TAGGER_KINDS)}")
    return tagger


# ------------------------------------------------------------------------------------------- tokenizer

def load_tokenizer_ref(ref: str | None):
    """The tokenizer named by `model.tokenizer`: a tokenizer folder or a model reference (default MiniLM's).

    It must have a pad token; one without borrows its EOS token (padding is never trained on).
    """
    from transformers import AutoTokenizer

    from tunelab.models.registry import resolve_model

    ref = ref or DEFAULT_TOKENIZER
    path = Path(ref).expanduser()
    if path.is_dir() and any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        folder = path
    elif ref.startswith(("builtin:", "gguf:")) or path.is_dir():
        try:
            folder = resolve_model(ref)
        except TunelabError as e:
            raise TunelabError(str(e).replace("model.name:", "model.tokenizer:", 1)) from None
    else:
        raise TunelabError(f"model.tokenizer: {ref!r} is neither a tokenizer folder nor a model reference; "
                           "create one with `tunelab tokenizer train --input DATA --vocab-size 8000 --output "
                           f"{ref}`, or use builtin:minilm-l6")
    return ensure_pad_token(AutoTokenizer.from_pretrained(str(folder)), f"model.tokenizer: {ref!r}")


# --------------------------------------------------------------------------------------------- builders

def _dropout(value: float | None) -> float:
    return DEFAULT_DROPOUT if value is None else value


def _check_attention_sizes(model_cfg) -> None:
    if model_cfg.hidden_size % model_cfg.heads:
        raise TunelabError(f"model.hidden_size: {model_cfg.hidden_size} is not divisible by model.heads "
                           f"({model_cfg.heads}); pick e.g. hidden_size 128 with heads 4")
    if model_cfg.position == "rotary" and (model_cfg.hidden_size // model_cfg.heads) % 2:
        raise TunelabError(f"model.position: rotary needs an even head size; hidden_size/heads = "
                           f"{model_cfg.hidden_size // model_cfg.heads}")


def _transformer_sizes(model_cfg) -> dict:
    """Constructor arguments shared by TransformerClassifier, GPT and GPTClassifier."""
    _check_attention_sizes(model_cfg)
    return dict(hidden_size=model_cfg.hidden_size, num_layers=model_cfg.layers, num_heads=model_cfg.heads,
                ffn_size=model_cfg.ffn_size, max_position=model_cfg.max_length,
                dropout=_dropout(model_cfg.dropout), position=model_cfg.position)


def head_names(model: nn.Module) -> set[str]:
    """Names of the classifier head's parameters."""
    return {name for name, _ in model.named_parameters() if name.startswith("classifier.")}


def build_scratch_classifier(model_cfg, labels: list[str]) -> tuple[nn.Module, object, set[str]]:
    """(model, tokenizer, head parameter names) for a classification run on a scratch model.

    `model_cfg.name` is `scratch:KIND` (a fresh model) or a folder with scratch_config.json (saved weights).
    """
    if is_scratch_dir(model_cfg.name):
        _check_no_tokenizer(model_cfg)
        return load_scratch_for_training(model_cfg.name, labels=labels, dropout=model_cfg.dropout,
                                         max_length=model_cfg.max_length)
    kind = _kind(model_cfg.name, CLASSIFIER_KINDS, "a classifier")
    tokenizer = load_tokenizer_ref(model_cfg.tokenizer)
    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    if kind in RECURRENT_KINDS:
        model = build_scratch_model(kind, vocab, len(labels), embed_dim=model_cfg.hidden_size,
                                    hidden_size=model_cfg.hidden_size, num_layers=model_cfg.layers,
                                    bidirectional=model_cfg.bidirectional, dropout=_dropout(model_cfg.dropout),
                                    pad_token_id=pad)
    elif kind == "transformer":
        model = build_scratch_model(kind, vocab, len(labels), pad_token_id=pad, **_transformer_sizes(model_cfg))
    else:
        model = GPTClassifier(vocab, len(labels), pad_token_id=pad, **_transformer_sizes(model_cfg))
    return model, tokenizer, head_names(model)


def build_scratch_causal_lm(model_cfg) -> tuple[GPT, object, set[str]]:
    """(GPT, tokenizer, no head names) for pretraining: `scratch:gpt` fresh, or a saved scratch GPT folder."""
    if is_scratch_dir(model_cfg.name):
        _check_no_tokenizer(model_cfg)
        return load_scratch_for_training(model_cfg.name, labels=None, dropout=model_cfg.dropout,
                                         max_length=model_cfg.max_length)
    _kind(model_cfg.name, ("gpt",), "a language model")
    tokenizer = load_tokenizer_ref(model_cfg.tokenizer)
    return GPT(len(tokenizer), **_transformer_sizes(model_cfg)), tokenizer, set()


def span_head_names(model: nn.Module) -> set[str]:
    """Names of a span model's head parameters (`qa_outputs`, the name transformers uses too)."""
    return {name for name, _ in model.named_parameters() if name.split(".")[0] == "qa_outputs"}


def build_scratch_qa(model_cfg) -> tuple[TransformerQA, object, set[str]]:
    """(span model, tokenizer, head names) for extractive QA: `scratch:transformer` fresh, or a saved scratch
    folder holding a span model (trained further) or a Transformer classifier (its body, a new span head)."""
    if is_scratch_dir(model_cfg.name):
        _check_no_tokenizer(model_cfg)
        path = Path(model_cfg.name).expanduser()
        model, tokenizer = _load_model(path), _load_tokenizer(path)
        if model.scratch_kind == "transformer":
            model = TransformerQA.from_classifier(model)
        elif not isinstance(model, TransformerQA):
            raise TunelabError(f"model.name: {str(path)!r} holds a scratch {model.scratch_kind} model; extractive "
                               "QA goes on from a scratch transformer folder (classification or QA), or "
                               "scratch:transformer")
        if model_cfg.dropout is not None:
            set_dropout(model, model_cfg.dropout)
        limit = model.config["max_position"]
        if model_cfg.max_length > limit:
            raise TunelabError(f"model.max_length: {model_cfg.max_length} exceeds the {limit} positions the saved "
                               f"model {str(path)!r} was built with; set model.max_length to {limit} or less")
        return model, tokenizer, span_head_names(model)
    _kind(model_cfg.name, ("transformer",), "a span model")
    tokenizer = load_tokenizer_ref(model_cfg.tokenizer)
    model = TransformerQA(len(tokenizer), pad_token_id=tokenizer.pad_token_id, **_transformer_sizes(model_cfg))
    return model, tokenizer, span_head_names(model)


def _check_no_tokenizer(model_cfg) -> None:
    if model_cfg.tokenizer is not None:
        raise TunelabError(f"model.tokenizer: {model_cfg.tokenizer!r} cannot apply to the saved model "
                           f"{model_cfg.name!r}, which keeps its own tokenizer; remove model.tokenizer")


def _kind(name: str, allowed: tuple[str, ...], what: str) -> str:
    kind = name.removeprefix(PREFIX) if name.startswith(PREFIX) else None
    if kind not in allowed:
        raise TunelabError(f"model.name: {name!r} is not {what} tunelab can build from scratch; use one of "
                           f"{', '.join(PREFIX + k for k in allowed)} or a folder with {CONFIG_NAME}")
    return kind


# ----------------------------------------------------------------------------------------- save and load

def is_scratch_dir(path: str | Path) -> bool:
    """True when `path` is a folder written by `save_scratch` (it holds scratch_config.json)."""
    return not str(path).startswith(("builtin:", "gguf:", PREFIX)) and (Path(path).expanduser() / CONFIG_NAME).is_file()


def is_scratch_model(model: nn.Module) -> bool:
    """True for the models of this module and of tunelab.nn (they carry `scratch_kind` and `config`)."""
    return hasattr(model, "scratch_kind")


def save_scratch(model: nn.Module, tokenizer, directory: str | Path) -> Path:
    """Write weights, scratch_config.json (kind + constructor arguments) and the tokenizer to `directory`."""
    directory = save_scratch_model(model, directory)
    tokenizer.save_pretrained(str(directory))
    return directory


def _load_model(directory: Path) -> nn.Module:
    """The model saved in `directory` (training mode, CPU); bad folders are a TunelabError."""
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
        own = {GPTClassifier.scratch_kind: GPTClassifier, TransformerQA.scratch_kind: TransformerQA,
               TransformerTagger.scratch_kind: TransformerTagger, RNNTagger.scratch_kind: RNNTagger}
        if config.get("kind") not in own:
            return load_scratch_model(directory)
        model = own[config["kind"]](**{k: v for k, v in config.items() if k != "kind"})
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return model
    except (OSError, ValueError, TypeError, RuntimeError, json.JSONDecodeError) as e:
        raise TunelabError(f"{directory}: cannot load the scratch model ({e}); is it a RUN_DIR/model folder "
                           "written by tunelab?") from None


def _load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as e:
        raise TunelabError(f"{directory}: no tokenizer saved beside the scratch model ({e})") from None


def load_scratch(directory: str | Path) -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer) from a folder written by `save_scratch`."""
    directory = Path(directory)
    model = _load_model(directory)
    model.eval()
    return model, _load_tokenizer(directory)


def load_scratch_for_training(path: str | Path, *, labels: list[str] | None = None, dropout: float | None = None,
                              max_length: int | None = None) -> tuple[nn.Module, object, set[str]]:
    """(model, tokenizer, head names) to go on training a saved scratch model.

    labels=None: language modelling; the folder must hold a GPT. With labels: a classifier. A GPT gets a
    new head (`GPTClassifier.from_gpt`); a saved classifier keeps its head when the folder's labels.json
    equals `labels`, else gets a new one. `dropout` (not None) replaces every dropout rate; `max_length`
    is checked against the model's position table.
    """
    path = Path(path).expanduser()
    model, tokenizer = _load_model(path), _load_tokenizer(path)
    kind = model.scratch_kind
    if labels is None:
        if not isinstance(model, GPT):
            raise TunelabError(f"model.name: {str(path)!r} holds a scratch {kind} model, not a language model; "
                               "pretraining goes on from a scratch:gpt folder (RUN_DIR/model of tunelab pretrain)")
        head: set[str] = set()
    else:
        model = _as_classifier(model, labels, path, tokenizer)
        head = head_names(model)
    if dropout is not None:
        set_dropout(model, dropout)
    limit = model.config.get("max_position")
    if max_length is not None and limit is not None and max_length > limit:
        raise TunelabError(f"model.max_length: {max_length} exceeds the {limit} positions the saved model "
                           f"{str(path)!r} was built with; set model.max_length to {limit} or less")
    return model, tokenizer, head


def _as_classifier(model: nn.Module, labels: list[str], path: Path, tokenizer) -> nn.Module:
    if isinstance(model, GPT):
        return GPTClassifier.from_gpt(model, len(labels), pad_token_id=pad_id_of(tokenizer))
    if not hasattr(model, "classifier"):
        raise TunelabError(f"model.name: {str(path)!r} holds a scratch {model.scratch_kind} model, which "
                           "cannot classify; use a classifier or GPT folder, or scratch:KIND")
    saved = path / "labels.json"
    if saved.is_file() and json.loads(saved.read_text()) == list(labels):
        return model
    old = model.classifier
    model.classifier = nn.Linear(old.in_features, len(labels))  # new labels: a new head
    model.config["num_labels"] = len(labels)
    return model


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout rate of a scratch model (nn.Dropout, attention, between RNN layers) to `p`."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif isinstance(getattr(module, "dropout", None), float):  # MultiHeadAttention, recurrent stacks
            module.dropout = p
    if "dropout" in model.config:
        model.config["dropout"] = p


__all__ = ["GPTClassifier", "RNNTagger", "SpanOutput", "TransformerQA", "TransformerTagger",
           "build_scratch_causal_lm", "build_scratch_classifier", "build_scratch_qa", "build_scratch_tagger",
           "span_head_names", "span_loss",
           "head_names", "is_scratch_dir", "is_scratch_model", "load_scratch", "load_scratch_for_training",
           "load_tokenizer_ref", "save_scratch", "set_dropout"]
