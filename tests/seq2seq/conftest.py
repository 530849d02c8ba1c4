"""Fixtures of the seq2seq tests: a tiny random T5 with a word-level tokenizer, and copy/reverse pairs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from seq2seq_tiny import reverse_pairs  # noqa: E402


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    from seq2seq_tiny import write_tiny_t5

    return write_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in reverse_pairs(60)), encoding="utf-8")
    return path
