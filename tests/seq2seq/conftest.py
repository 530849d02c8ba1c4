"""Fixtures of the seq2seq tests: a tiny random T5 with a word-level tokenizer, and copy/reverse pairs."""
from __future__ import annotations

import importlib
import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from seq2seq_tiny import WORDS, reverse_pairs  # noqa: E402


def _install_stand_ins() -> None:
    import seq2seq_stand_ins as stand_ins

    for name, funcs in (("tunelab.data.parallel", ["load_pairs"]),
                        ("tunelab.models.seq2seq", ["load_seq2seq", "seq2seq_generate", "seq2seq_loss",
                                                    "save_seq2seq", "load_saved_seq2seq", "encode_targets"])):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = stand_ins.module(name, funcs)


_install_stand_ins()


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    from seq2seq_tiny import write_tiny_t5

    return write_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in reverse_pairs(60)), encoding="utf-8")
    return path
