"""Model references: Hub ids (offline, from the local cache), missing folders, model.max_length vs positions."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.models.registry import resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """A Hugging Face cache holding `repo_id` at revision main, laid out as huggingface_hub writes it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model_dir, snapshot)
    return snapshot


def test_hub_id_in_the_local_cache_is_used(tmp_path, monkeypatch, tiny_bert):
    snapshot = fake_hub_cache(tmp_path / "hub", "org/tiny-bert", tiny_bert)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # no local folder called org/tiny-bert
    assert resolve_model("org/tiny-bert") == snapshot


def test_training_from_a_cached_hub_id(tmp_path, monkeypatch, tiny_bert, make_config, helpers):
    fake_hub_cache(tmp_path / "hub", "org/tiny-bert", tiny_bert)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    run_dir = helpers.train_quietly(make_config({"model.name": "org/tiny-bert", "train.max_steps": 1}))
    assert (run_dir / "model" / "config.json").is_file()


@pytest.mark.parametrize("ref", ["org/not-cached", "gpt2"])
def test_hub_id_not_cached_explains_the_offline_rule(tmp_path, monkeypatch, ref):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TunelabError) as e:
        resolve_model(ref)
    msg = str(e.value)
    assert msg.startswith(f"model.name: {ref!r} is neither a local folder ({tmp_path / ref}; relative paths are "
                          "read from the current directory) nor a model in the local Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in msg and "downloads nothing" in msg and "set model.name to its path" in msg


def test_missing_model_folder_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TunelabError, match=rf"^model.name: 'runs/x/model': no such folder \({tmp_path}/runs/x/model; "
                                           r"relative paths are read from the current directory\)"):
        resolve_model("runs/x/model")


def test_folder_without_config_is_still_named_as_such(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(TunelabError, match=r"is not a Hugging Face model folder \(no config.json in "):
        resolve_model(str(tmp_path / "m"))


# ---------------------------------------------------------------------------------------------
# model.max_length against the model's positions


def test_classification_max_length_above_the_model_positions_is_an_error(make_config, helpers, tmp_path):
    # The tiny BERT has 64 positions; a text longer than that used to crash inside an epoch.
    with pytest.raises(TunelabError, match=r"^model.max_length: got 65; .* handles at most 64 positions; "
                                           r"set model.max_length to 64 or less$"):
        helpers.train_quietly(make_config({"model.max_length": 65}))
    assert not (tmp_path / "run" / "model").exists()


def test_classification_max_length_equal_to_the_positions_trains(make_config, helpers):
    run_dir = helpers.train_quietly(make_config({"model.max_length": 64, "train.max_steps": 1}))
    assert (run_dir / "model").is_dir()


def test_positions_of_scratch_and_hugging_face_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    from tunelab.models.load import check_max_length, model_positions
    from tunelab.nn.models import build_scratch_model

    transformer = build_scratch_model("transformer", 50, 2, hidden_size=16, num_layers=1, num_heads=2,
                                      max_position=20)
    lstm = build_scratch_model("lstm", 50, 2, embed_dim=8, hidden_size=8, num_layers=1)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_positions=24, n_embd=8, n_layer=1, n_head=2, vocab_size=50))
    assert (model_positions(transformer), model_positions(lstm), model_positions(gpt2)) == (20, None, 24)
    check_max_length(10_000, lstm, "scratch:lstm")  # no position table: no limit
    with pytest.raises(TunelabError, match="scratch:transformer handles at most 20 positions"):
        check_max_length(21, transformer, "scratch:transformer")


def test_a_bf16_checkpoint_trains_in_fp32(tmp_path, helpers):
    """transformers 5 loads a model in the dtype its files hold: a bf16 encoder must still train in fp32."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tunelab.models.load import load_sequence_classifier

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        vocab_size=50)
    BertForSequenceClassification(config).to(torch.bfloat16).save_pretrained(str(tmp_path))
    model, _ = load_sequence_classifier(tmp_path, ["a", "b"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}
