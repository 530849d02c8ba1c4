"""Serving tests: `serve(ref_or_served, **settings)` starts the real app under uvicorn on 127.0.0.1 (a free
port) in a thread and yields (its base URL, the app's State); the helpers the tests share are in
serve_helpers.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
for _sub in ("seq2seq", "retrieval_task"):  # their tiny-model builders, for the runs below
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / _sub))

from serve_helpers import running  # noqa: E402


@pytest.fixture
def serve():
    """serve(ref, overrides=(), **settings) -> a context manager yielding (url, state)."""
    return running


@pytest.fixture(scope="session")
def seq2seq_run_dir(tmp_path_factory, helpers) -> Path:
    """A tiny seq2seq run (30 steps of the tiny random T5 on reverse-the-words pairs: outputs differ by input)."""
    import json

    from seq2seq_tiny import reverse_pairs, write_tiny_t5

    from tunelab.config import config_from_dict

    root = tmp_path_factory.mktemp("seq2seq")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in reverse_pairs(40)), encoding="utf-8")
    cfg = {"task": "seq2seq", "model": {"name": str(write_tiny_t5(root / "t5")), "max_length": 16},
           "data": {"train": str(pairs), "val_fraction": 0.1, "test_fraction": 0.1},
           "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "seed": 0, "device": "cpu",
                     "precision": "fp32", "eval_every": None, "early_stopping": {"metric": "loss", "patience": None}},
           "generate": {"max_new_tokens": 6, "samples_in_eval": 0}, "output_dir": str(root / "run")}
    return helpers.train_quietly(config_from_dict(cfg))


@pytest.fixture(scope="session")
def retrieval_run_dir(tmp_path_factory, tiny_bert, helpers) -> Path:
    """A tiny retrieval run (2 steps of the tiny BERT on coded query/passage pairs)."""
    from retrieval_data import coded_pairs

    from tunelab.config import config_from_dict

    root = tmp_path_factory.mktemp("retrieval")
    pairs = helpers.write_jsonl(root / "pairs.jsonl", coded_pairs(48))
    cfg = {"task": "retrieval", "model": {"name": str(tiny_bert), "max_length": 16},
           "data": {"train": str(pairs), "val_fraction": 0.15, "test_fraction": 0.15},
           "train": {"max_steps": 2, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0, "seed": 0, "device": "cpu",
                     "precision": "fp32", "early_stopping": {"patience": None}},
           "output_dir": str(root / "run")}
    return helpers.train_quietly(config_from_dict(cfg))
