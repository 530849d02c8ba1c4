"""Tiny finished runs of the tasks besides classification, trained once per session and shared by the
explanation tests: an extractive QA run and a token classification (NER) run, both on a tiny BERT, and a
causal LM run of the tiny Llama."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "extractive"))
sys.path.insert(0, str(TESTS / "token_tagging"))
sys.path.insert(0, str(TESTS / "causal"))


@pytest.fixture(scope="session")
def qa_run_dir(tmp_path_factory, helpers) -> Path:
    """A tiny QA run (150 steps, model.max_length 32) on short contexts."""
    from extractive_helpers import qa_config, reading_records, write_jsonl, write_tiny_bert

    root = tmp_path_factory.mktemp("qa")
    data = write_jsonl(root / "qa.jsonl", reading_records(300, words=12))
    cfg = qa_config(write_tiny_bert(root / "bert"), data, root / "run",
                    **{"train.max_steps": 150, "model.max_length": 32})
    return helpers.train_quietly(cfg)


@pytest.fixture(scope="session")
def ner_run_dir(tmp_path_factory, helpers) -> Path:
    """A tiny NER run (100 steps) that finds PER / LOC names."""
    from token_helpers import ner_config, ner_records, write_jsonl, write_tiny_bert

    root = tmp_path_factory.mktemp("ner")
    data = write_jsonl(root / "ner.jsonl", ner_records(300))
    return helpers.train_quietly(ner_config(write_tiny_bert(root / "bert"), data, root / "run",
                                            **{"train.max_steps": 100}))


@pytest.fixture(scope="session")
def llama_run_dir(tmp_path_factory, helpers) -> Path:
    """A causal_lm run of the tiny Llama (2 steps on alpaca records: prompts go through its chat template)."""
    from causal_helpers import alpaca_records, write_jsonl
    from causal_tiny import write_tiny_model

    from tunelab.config import config_from_dict

    base = tmp_path_factory.mktemp("llama")
    cfg = {"task": "causal_lm", "model": {"name": str(write_tiny_model(base / "model")), "max_length": 64},
           "data": {"train": str(write_jsonl(base / "alpaca.jsonl", alpaca_records(16)))},
           "method": {"name": "full"}, "generate": {"samples_in_eval": 0}, "output_dir": str(base / "run"),
           "train": {"max_steps": 2, "batch_size": 4, "device": "cpu", "precision": "fp32",
                     "early_stopping": {"metric": "loss"}}}
    return helpers.train_quietly(config_from_dict(cfg))
