"""Shared setup for the scratch-model pipeline tests: one thread, a synthetic corpus and trained tokenizers.

The labelled records come from the root conftest's `helpers.synthetic_records` (3 topics, keyword texts).
Tokenizers are trained here with `train_tokenizer`, once per session.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tunelab.config import RunConfig, config_from_dict
from tunelab.tokenizer_train import train_tokenizer


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread per test (see tests/nn/conftest.py: tiny RNN loops are ~100x slower with two
    threads on a busy 2-core machine), then the previous setting back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def story_documents(n: int, seed: int = 0) -> list[str]:
    """Documents of a tiny regular language: "the NOUN VERBs the NOUN ." sentences whose verb depends on
    the noun, so a language model can learn much more than the unigram distribution."""
    rng = random.Random(seed)
    verbs = {"cat": "chases", "dog": "guards", "bird": "sings to", "fish": "swims past"}
    objects = ["the house", "the garden", "the river", "the tree"]
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 4)):
            noun = rng.choice(sorted(verbs))
            sentences.append(f"the {noun} {verbs[noun]} {rng.choice(objects)} .")
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="session")
def scratch_data(tmp_path_factory, helpers) -> Path:
    """train.jsonl: 3 x 30 labelled records (text + label) of the root conftest's synthetic topics."""
    folder = tmp_path_factory.mktemp("scratch-data")
    helpers.write_jsonl(folder / "train.jsonl", helpers.synthetic_records(30, seed=0))
    return folder


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory, scratch_data) -> Path:
    """A lowercase WordPiece tokenizer of the topics. On this tiny, tie-heavy corpus its vocabulary can differ
    from session to session (see tunelab/tokenizer_train.py), so nothing pinned uses it; BPE is deterministic."""
    return train_tokenizer([str(scratch_data / "train.jsonl")], 120, tmp_path_factory.mktemp("tok") / "wp",
                           kind="wordpiece", lowercase=True)


@pytest.fixture(scope="session")
def story_corpus(tmp_path_factory, helpers) -> Path:
    """stories.jsonl: 80 documents of `story_documents`."""
    folder = tmp_path_factory.mktemp("stories")
    records = [{"text": t} for t in story_documents(80)]
    return helpers.write_jsonl(folder / "stories.jsonl", records)


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory, story_corpus, scratch_data) -> Path:
    return train_tokenizer([str(story_corpus), str(scratch_data / "train.jsonl")], 300,
                           tmp_path_factory.mktemp("tok") / "bpe", kind="bpe")


def _override(data: dict, overrides: dict | None) -> dict:
    """data['a']['b'] = value for each 'a.b' key of overrides."""
    for key, value in (overrides or {}).items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def classify_config(model: str, train: Path, output_dir: Path, tokenizer: Path | None = None,
                    overrides: dict | None = None) -> RunConfig:
    """A classification RunConfig for a few fast steps of a tiny scratch model."""
    data = {
        "task": "classification",
        "model": {"name": model, "max_length": 16, "layers": 1, "hidden_size": 16, "heads": 2,
                  "ffn_size": 32, "tokenizer": None if tokenizer is None else str(tokenizer)},
        "data": {"train": str(train), "val_fraction": 0.15, "test_fraction": 0.15},
        "method": {"name": "full"},
        "train": {"max_steps": 12, "batch_size": 8, "lr": 1e-2, "log_every": 1, "warmup_steps": 0,
                  "seed": 0, "device": "cpu", "early_stopping": {"metric": "f1_macro", "patience": None}},
        "output_dir": str(output_dir),
    }
    return config_from_dict(_override(data, overrides))


def pretrain_config(corpus: Path, tokenizer: Path | None, output_dir: Path, overrides: dict | None = None
                    ) -> RunConfig:
    """A pretraining RunConfig: a 2-layer GPT (hidden 32) on 32-token blocks."""
    data = {
        "task": "causal_lm",
        "model": {"name": "scratch:gpt", "max_length": 32, "layers": 2, "hidden_size": 32, "heads": 2,
                  "ffn_size": 64, "dropout": 0.0, "tokenizer": None if tokenizer is None else str(tokenizer)},
        "data": {"train": str(corpus), "val_fraction": 0.1, "test_fraction": 0.1},
        "train": {"max_steps": 40, "batch_size": 8, "lr": 5e-3, "log_every": 5, "warmup_steps": 0,
                  "eval_every": 10, "seed": 0, "device": "cpu",
                  "early_stopping": {"metric": "loss", "patience": None}},
        "output_dir": str(output_dir),
    }
    return config_from_dict(_override(data, overrides))


@pytest.fixture(scope="session")
def configs():
    """The config makers of this file: configs.classify(...), configs.pretrain(...)."""
    import types

    return types.SimpleNamespace(classify=classify_config, pretrain=pretrain_config, stories=story_documents)


