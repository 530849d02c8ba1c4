"""Load tokenizers and Hugging Face models for a task, reporting which parameters are new (the head)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

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
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(labels))
    config = _config(path, dropout, num_labels=len(labels), id2label=id2label,
                     label2id={v: k for k, v in id2label.items()})
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" notice is expected; we report it ourselves
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), config=config, ignore_mismatched_sizes=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    new = set(info.get("missing_keys", [])) | {k if isinstance(k, str) else k[0]
                                               for k in info.get("mismatched_keys", [])}
    params = {n for n, _ in model.named_parameters()}
    return model, {n for n in new if n in params}
