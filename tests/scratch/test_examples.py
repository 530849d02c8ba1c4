"""The scratch examples: every one loads and builds what it names."""
from __future__ import annotations

from pathlib import Path

from tunelab.config import load_config
from tunelab.tasks.pretrain import check_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_scratch_example_loads():
    paths = sorted(EXAMPLES.glob("scratch-*.yaml")) + [EXAMPLES / "pretrain-gpt.yaml"]
    assert [p.name for p in paths] == ["scratch-gpt-bbc.yaml", "scratch-lstm-bbc.yaml",
                                       "scratch-transformer-bbc.yaml", "pretrain-gpt.yaml"]
    configs = {p.name: load_config(p) for p in paths}
    check_config(configs["pretrain-gpt.yaml"])  # what `tunelab pretrain` adds to the schema
    assert configs["scratch-gpt-bbc.yaml"].model.name == configs["pretrain-gpt.yaml"].output_dir + "/model"
    assert configs["scratch-gpt-bbc.yaml"].model.max_length <= configs["pretrain-gpt.yaml"].model.max_length


def test_the_classification_examples_build_their_models():
    from tunelab.models.scratch import build_scratch_classifier

    for name, kind in (("scratch-lstm-bbc.yaml", "lstm"), ("scratch-transformer-bbc.yaml", "transformer")):
        model, tokenizer, head = build_scratch_classifier(load_config(EXAMPLES / name).model, list("abcde"))
        assert model.scratch_kind == kind and len(tokenizer) == model.config["vocab_size"] and head
