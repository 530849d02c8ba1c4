"""Fixtures for the causal-LM tests: a tiny character tokenizer with a chat template and a tiny Llama folder.

Helpers live in causal_helpers.py / causal_tiny.py (imported by name: `conftest` is not a unique module name
across the test folders).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
# Tiny models run fastest on one thread, and a busy second core makes two threads wait on each other.
torch.set_num_threads(1)

from causal_tiny import make_tokenizer, write_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
