"""The GGUF conversion cache: keyed by file version, written atomically, reused, errors for people.

The real dequantization is exercised by the integration test; here it is replaced by a tiny model so the
cache logic runs in milliseconds.
"""
from __future__ import annotations

import os

import pytest

from causal_tiny import make_model, make_tokenizer
from tunelab.errors import TunelabError
from tunelab.models import gguf


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_load(monkeypatch):
    calls = []

    def load(path):
        calls.append(path)
        tok = make_tokenizer()
        return make_model(len(tok)), tok

    monkeypatch.setattr(gguf, "_load_dequantized", load)
    return calls


def test_converts_once_then_reuses(home, fake_load, tmp_path):
    from transformers import AutoModelForCausalLM

    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF fake")
    first = gguf.locate_gguf(src, log=lambda _: None)
    assert first.parent == home / "models" and (first / "config.json").is_file()
    assert gguf.locate_gguf(src, log=lambda _: None) == first and len(fake_load) == 1
    AutoModelForCausalLM.from_pretrained(str(first))  # an ordinary folder
    os.utime(src, ns=(1, 1))  # a changed file is a new cache entry
    assert gguf.locate_gguf(src, log=lambda _: None) != first and len(fake_load) == 2


def test_interrupted_conversion_leaves_no_cache_entry(home, monkeypatch, tmp_path):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF fake")

    def boom(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_load_dequantized", boom)
    with pytest.raises(KeyboardInterrupt):
        gguf.locate_gguf(src, log=lambda _: None)
    assert not gguf.cache_dir_for(src).exists()
    assert list((home / "models").iterdir()) == []  # the staging folder is gone too


def test_missing_or_unreadable_gguf_is_a_user_error(home, tmp_path):
    with pytest.raises(TunelabError, match="not found"):
        gguf.locate_gguf(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(TunelabError, match="cannot read GGUF"):
        gguf.locate_gguf(bad, log=lambda _: None)
    assert list((home / "models").iterdir()) == []


def test_registry_knows_smollm2_and_gguf_refs(home, fake_load, tmp_path):
    from tunelab.models.registry import BUILTIN_MODELS, resolve_model

    assert "smollm2-135m-instruct" in BUILTIN_MODELS
    src = tmp_path / "x.gguf"
    src.write_bytes(b"GGUF fake")
    assert resolve_model(f"gguf:{src}") == gguf.cache_dir_for(src)
