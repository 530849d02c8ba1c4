"""Helpers of the extractive QA tests: a tiny word-level BERT and a synthetic reading task it can learn.

The task: a context of filler words holds one colour and (mostly) one animal; the question asks for one of
the two ("which colour ..." / "which animal ..."). A context without the animal asked for is unanswerable.
Contexts are longer than the tiny model's rows, so the answer sits in different windows.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
ANIMALS = ["cat", "dog", "owl", "fox", "bee", "cow"]
FILLER = ["the", "a", "of", "and", "to", "in", "it", "was", "on", "at", "by", "for", "from", "with", "near",
          "old", "new", "big", "small", "house", "tree", "road", "river", "hill", "town"]
QUESTION = ["which", "colour", "animal", "is", "there", "?"]


def write_tiny_bert(folder: Path, max_positions: int = 64) -> Path:
    """A 2-layer random BERT (hidden 32) with a word-level WordPiece vocabulary of the words above."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokens = SPECIAL + sorted(set(COLOURS + ANIMALS + FILLER + QUESTION))
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def reading_records(n: int, seed: int = 0, words: int = 30, unanswerable: float = 0.25) -> list[dict]:
    """Flat QA records of the synthetic task (answers {text, answer_start}); `unanswerable` of them have none."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = [rng.choice(FILLER) for _ in range(words)]
        colour, animal = rng.choice(COLOURS), rng.choice(ANIMALS)
        c_at, a_at = rng.sample(range(words), 2)
        body[c_at] = colour
        none = rng.random() < unanswerable
        ask = "animal" if none else rng.choice(["colour", "animal"])
        if not none:
            body[a_at] = animal
        context = " ".join(body)
        answer = {"colour": colour, "animal": animal}[ask]
        at = _word_offset(body, c_at if ask == "colour" else a_at)
        answers = {"text": [], "answer_start": []} if none else {"text": [answer], "answer_start": [at]}
        out.append({"id": f"q{i}", "question": f"which {ask} is there ?", "context": context, "answers": answers})
    return out


def _word_offset(words: list[str], k: int) -> int:
    return sum(len(w) + 1 for w in words[:k])


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def qa_config(model: Path | str, train: Path, output_dir: Path, **overrides):
    """A RunConfig for the synthetic task on the tiny BERT; overrides as {'a.b': value}."""
    from tunelab.config import config_from_dict

    data = {"task": "extractive_qa", "model": {"name": str(model), "max_length": 24},
            "data": {"train": str(train), "val_fraction": 0.15, "test_fraction": 0.15, "doc_stride": 6},
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
