"""Helpers of the token-classification tests: a tiny word-level BERT and a synthetic NER task it can learn.

The task: names (one or two words) and places slotted into sentence templates; some words are both a
first name and a place ("jordan", "florence"), so the tag depends on the context, not only on the word.
Sentences are built here at test time, as word records (tokens + IOB2 tags) or raw text + character spans.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FIRST = ["anna", "omar", "lena", "ivan", "sara", "tom", "mia", "raj", "jordan", "florence"]
LAST = ["smith", "khan", "berg", "lopez", "novak", "chen"]
PLACES = ["paris", "lima", "oslo", "cairo", "quito", "delhi", "jordan", "florence"]
TEMPLATES = [
    "{PER} lives in {LOC}",
    "yesterday {PER} flew to {LOC} with {PER}",
    "the mayor of {LOC} met {PER}",
    "{PER} said that {LOC} is far from {LOC}",
    "we saw {PER} near the station",
    "it rained in {LOC} all week",
    "{PER} and {PER} moved from {LOC} to {LOC} last year",
]
WORDS = sorted({w for t in TEMPLATES for w in t.split() if not w.startswith("{")} | set(FIRST) | set(LAST)
               | set(PLACES))


def write_tiny_bert(folder: Path, max_positions: int = 64, extra_tokens: list[str] = ()) -> Path:
    """A 2-layer random BERT (hidden 32) with a word-level WordPiece vocabulary of the task's words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokens = SPECIAL + WORDS + [t for t in extra_tokens if t not in WORDS]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _fill(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for slot in template.split():
        if slot == "{PER}":
            name = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
            words += name
            tags += ["B-PER"] + ["I-PER"] * (len(name) - 1)
        elif slot == "{LOC}":
            words.append(rng.choice(PLACES))
            tags.append("B-LOC")
        else:
            words.append(slot)
            tags.append("O")
    return words, tags


def ner_records(n: int, seed: int = 0) -> list[dict]:
    """Word records {tokens, tags} (IOB2) of the synthetic task."""
    rng = random.Random(seed)
    return [dict(zip(("tokens", "tags"), _fill(rng.choice(TEMPLATES), rng))) for _ in range(n)]


def as_text_record(record: dict) -> dict:
    """A word record as raw text (words joined by one space) + character-span entities."""
    from tunelab.data.tagging import spans_of

    starts, at = [], 0
    for w in record["tokens"]:
        starts.append(at)
        at += len(w) + 1
    text = " ".join(record["tokens"])
    entities = [{"start": starts[i], "end": starts[j - 1] + len(record["tokens"][j - 1]), "label": kind}
                for kind, i, j in spans_of(record["tags"])]
    return {"text": text, "entities": entities}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def ner_config(model: Path | str, train: Path, output_dir: Path, **overrides):
    """A RunConfig for the synthetic task on the tiny BERT; overrides as {'a.b': value}."""
    from tunelab.config import config_from_dict

    data = {"task": "token_classification", "model": {"name": str(model), "max_length": 32},
            "data": {"train": str(train), "val_fraction": 0.15, "test_fraction": 0.15},
            "method": {"name": "full"},
            "train": {"max_steps": 4, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0, "log_every": 1,
                      "seed": 0, "device": "cpu", "threads": 1, "precision": "fp32", "eval_every": None,
                      "early_stopping": {"patience": None}},
            "output_dir": str(output_dir)}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(data)
