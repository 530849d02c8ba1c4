"""Load tokenizers and Hugging Face models for a task, reporting which parameters are new (the head)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from tunelab.errors import TunelabError

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "dropout",
                "classifier_dropout")


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _config(path: Path, dropout: float | None, **overrides):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), **overrides)
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, dropout)
    return config


def load_sequence_classifier(path: Path, labels: list[str], dropout: float | None = None
                             ) -> tuple[nn.Module, set[str]]:
    """AutoModelForSequenceClassification with `labels`; returns (model, names of newly initialised params).

    A checkpoint whose head has another number of labels loads too: its head is re-initialised.
    """
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(labels))
    config = _config(path, dropout, num_labels=len(labels), id2label=id2label,
                     label2id={v: k for k, v in id2label.items()})
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" notice is expected; we report it ourselves
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), config=config, ignore_mismatched_sizes=True, output_loading_info=True,
            dtype=torch.float32)  # weights and optimizer state in fp32 whatever dtype the files hold
    finally:
        hf_logging.set_verbosity(verbosity)
    new = set(info.get("missing_keys", [])) | {k if isinstance(k, str) else k[0]
                                               for k in info.get("mismatched_keys", [])}
    params = {n for n, _ in model.named_parameters()}
    return model, {n for n in new if n in params}


def load_question_answering(path: Path, dropout: float | None = None) -> tuple[nn.Module, set[str]]:
    """AutoModelForQuestionAnswering (an encoder with a span head: start and end logits per token);
    returns (model, names of the newly initialised parameters: the span head `qa_outputs`, unless the
    folder already holds one, e.g. a run's model/)."""
    import torch
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" notice is expected; the head is reported
    try:
        model, info = AutoModelForQuestionAnswering.from_pretrained(
            str(path), config=_config(path, dropout), output_loading_info=True, dtype=torch.float32)
    except ValueError as e:  # a decoder or encoder-decoder folder: "Unrecognized configuration class ..."
        raise TunelabError(f"model.name: {str(path)!r} has no question-answering head in transformers ({e}); "
                           "use an encoder such as builtin:minilm-l6") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    params = {n for n, _ in model.named_parameters()}
    return model, {n for n in info.get("missing_keys", []) if n in params}


def load_token_classifier(path: Path, labels: list[str], dropout: float | None = None
                          ) -> tuple[nn.Module, set[str]]:
    """AutoModelForTokenClassification (an encoder with a tag per token) with `labels` as id2label / label2id;
    returns (model, names of the newly initialised parameters: the token head `classifier`, unless the
    folder already holds one for the same number of labels). Another head size is re-initialised."""
    import torch
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(labels))
    config = _config(path, dropout, num_labels=len(labels), id2label=id2label,
                     label2id={v: k for k, v in id2label.items()})
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" notice is expected; the head is reported
    try:
        model, info = AutoModelForTokenClassification.from_pretrained(
            str(path), config=config, ignore_mismatched_sizes=True, output_loading_info=True,
            dtype=torch.float32)
    except ValueError as e:  # a decoder-only or encoder-decoder folder: "Unrecognized configuration class ..."
        raise TunelabError(f"model.name: {str(path)!r} has no token-classification head in transformers ({e}); "
                           "use an encoder such as builtin:minilm-l6") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    new = set(info.get("missing_keys", [])) | {k if isinstance(k, str) else k[0]
                                               for k in info.get("mismatched_keys", [])}
    params = {n for n, _ in model.named_parameters()}
    return model, {n for n in new if n in params}


POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")  # names configs use


def model_positions(model: nn.Module) -> int | None:
    """How many positions `model` can read, or None where it has no limit (scratch RNNs).

    Hugging Face configs call it max_position_embeddings (n_positions in GPT-2, ...); tunelab's scratch models
    keep their constructor arguments in a dict `config` with `max_position` (the size they were built with,
    as `load_scratch_for_training` checks it).
    """
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        return config.get("max_position")
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_max_length(max_length: int, model: nn.Module, name: str) -> None:
    """Refuse a model.max_length above the positions `model` has, before training.

    Without this a batch longer than the position table fails mid-epoch with an index error (MiniLM has 512).
    """
    positions = model_positions(model)
    if positions is not None and max_length > positions:
        raise TunelabError(f"model.max_length: got {max_length}; {name} handles at most {positions} positions; "
                           f"set model.max_length to {positions} or less")
