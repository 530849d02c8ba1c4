"""Long causal-LM steps show progress: evaluation loss, generation, merging, the GGUF conversion.

Captured standard error is not a terminal, so progress comes as plain lines; the rate limit is lifted so that
tiny models (milliseconds) still print them.
"""
from __future__ import annotations

import pytest
import torch

from causal_helpers import alpaca_records
from causal_tiny import make_model
from tunelab.train import logging as tl_logging


@pytest.fixture(autouse=True)
def every_line(monkeypatch):
    monkeypatch.setattr(tl_logging, "PLAIN_MIN_S", 0.0)
    monkeypatch.setattr(tl_logging, "PLAIN_MAX_S", 0.0)
    monkeypatch.setattr(tl_logging, "_enabled", True)


@pytest.fixture
def model(tok):
    return make_model(len(tok))


def test_evaluation_loss_shows_progress(tok, model, capsys):
    from tunelab.data.encoding import encode_records
    from tunelab.tasks.causal_lm import evaluate_loss

    data = encode_records(tok, alpaca_records(12), "alpaca", max_length=64, train_on_prompt=False, source="t")
    metrics = evaluate_loss(model, data, 4, tok.pad_token_id, torch.device("cpu"))
    assert metrics["tokens"] > 0
    err = capsys.readouterr().err
    assert "evaluate loss: 1/3 batches (33%)" in err and "evaluate loss: 3/3 batches in " in err
    assert "\r" not in err


def test_generation_shows_progress(tok, model, capsys):
    from tunelab.generation import generate_texts, generation_kwargs

    prompts = [tok(f"question {i}:")["input_ids"] for i in range(5)]
    texts = generate_texts(model, tok, prompts, generation_kwargs(tok, model, max_new_tokens=2), batch_size=2)
    assert len(texts) == 5
    err = capsys.readouterr().err
    assert "generate: 1/3 batches (33%)" in err and "generate: 3/3 batches in " in err and "\r" not in err


def test_progress_switched_off_is_silent(tok, model, capsys):
    from tunelab.generation import generate_texts, generation_kwargs

    tl_logging.set_progress(False)
    generate_texts(model, tok, [[5, 6, 7]], generation_kwargs(tok, model, max_new_tokens=2))
    assert capsys.readouterr().err == ""


def test_merge_says_what_it_is_doing(tok, model, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from tunelab.models.build import write_merged

    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    sample = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    write_merged(lora, tok, tmp_path / "merged", sample)
    err = capsys.readouterr().err
    fold, save = err.find("merge: folding the LoRA weights"), err.find("merge: saving the merged model to")
    assert 0 <= fold < save  # each slow phase is announced before it starts


def test_gguf_conversion_announces_its_phases(tmp_path, monkeypatch, tok):
    from tunelab.models import gguf

    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(gguf, "_load_dequantized", lambda path: (make_model(len(tok)), tok))
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF fake")
    lines = []
    gguf.locate_gguf(src, log=lines.append)
    assert lines[0].startswith("converting m.gguf") and lines[-1].startswith("converted in")
    assert any(line.strip().startswith("saving the fp32 model (") for line in lines[1:-1])


def test_dequantizing_bar_of_transformers_is_ours(capsys):
    """transformers' own tqdm over the GGUF tensors writes \\r frames into logs: it is routed to `progress`."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from tunelab.models.gguf import _tensor_display

    with _tensor_display():
        assert list(gguf_utils.tqdm(range(4), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert "dequantize: 1/4 tensors (25%)" in err and "\r" not in err
    assert gguf_utils.tqdm.__module__.startswith("tqdm")  # restored afterwards
