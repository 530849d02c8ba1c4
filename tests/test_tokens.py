"""The shared token conventions: one ignore index (torch's), one pad-token fallback."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch.nn.functional as F

from tunelab.data.tokens import IGNORE_INDEX, ensure_pad_token, pad_id_of


def test_ignore_index_is_torch_cross_entropy_default():
    assert IGNORE_INDEX == -100 == inspect.signature(F.cross_entropy).parameters["ignore_index"].default


def test_pad_id_of_prefers_the_pad_token_then_the_fallback():
    assert pad_id_of(SimpleNamespace(pad_token_id=5)) == 5
    assert pad_id_of(SimpleNamespace(pad_token_id=0), fallback=7) == 0  # id 0 is a real pad id, not "missing"
    assert pad_id_of(SimpleNamespace(pad_token_id=None)) == 0
    assert pad_id_of(SimpleNamespace(pad_token_id=None), fallback=3) == 3


class _Tok:
    """A tokenizer stand-in whose pad_token_id follows pad_token, as transformers' does."""
    vocab = {"<eos>": 3, "<pad>": 0}

    def __init__(self, pad_token):
        self.pad_token, self.eos_token = pad_token, "<eos>"

    @property
    def pad_token_id(self):
        return self.vocab.get(self.pad_token)


def test_ensure_pad_token_uses_eos_only_when_there_is_no_pad():
    assert ensure_pad_token(_Tok(None)).pad_token_id == 3
    assert ensure_pad_token(_Tok("<pad>")).pad_token_id == 0


def test_ensure_pad_token_refuses_a_tokenizer_with_neither_pad_nor_eos():
    """Padding with None failed later as a TypeError inside torch.full; now one line names the setting."""
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match=r"^model.name: 'x' has neither a pad nor an end-of-sequence token"):
        ensure_pad_token(SimpleNamespace(pad_token_id=None, eos_token=None), "model.name: 'x'")
