"""The run config: defaults, `a.b=value` overrides, strict errors that name key, value and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.config import RunConfig, config_from_dict, load_config
from tunelab.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_config_gives_the_defaults():
    assert config_from_dict({}) == RunConfig()
    assert config_from_dict(None) == RunConfig()


def test_empty_yaml_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path / "c.yaml", "")) == RunConfig()


def test_overrides_apply_to_nested_keys(tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  lr: 1.0e-3\nmethod:\n  name: full\n")
    cfg = load_config(path, ["train.lr=5e-5", "method.name=lora", "model.max_length=64",
                             "train.early_stopping.patience=null", "data.limit=100"])
    assert cfg.train.lr == 5e-5 and isinstance(cfg.train.lr, float)
    assert cfg.method.name == "lora"
    assert cfg.model.max_length == 64
    assert cfg.train.early_stopping.patience is None
    assert cfg.data.limit == 100


def test_yaml_exponent_without_dot_is_read_as_a_float(tmp_path):
    # YAML 1.1 reads `5e-5` as the string "5e-5"; the config must still give the number.
    cfg = load_config(write(tmp_path / "c.yaml", "train:\n  lr: 5e-5\n  max_grad_norm: 1e-1\n"))
    assert cfg.train.lr == 5e-5
    assert cfg.train.max_grad_norm == 0.1


def test_unknown_key_names_key_value_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"lrr": 0.1}})
    msg = str(e.value)
    assert "train.lrr" in msg and "0.1" in msg
    assert "allowed:" in msg and "lr" in msg.split("allowed:")[1] and "batch_size" in msg


def test_unknown_top_level_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        config_from_dict({"trainer": {"lr": 0.1}})


def test_wrong_type_names_key_value_and_expected_type():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"batch_size": "eight"}})
    assert str(e.value) == "train.batch_size: got 'eight'; expected int"


@pytest.mark.parametrize("value", [True, 8.0])
def test_int_field_rejects_bool_and_float(value):
    with pytest.raises(ConfigError, match="train.batch_size"):
        config_from_dict({"train": {"batch_size": value}})


def test_bad_literal_names_key_value_and_allowed_values():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"method": {"name": "qlora"}})
    assert str(e.value) == "method.name: got 'qlora'; allowed: 'full' | 'head' | 'freeze' | 'lora' | 'distill'"


def test_out_of_range_value_is_an_error():
    with pytest.raises(ConfigError, match=r"train.lr: got 0.0; must be > 0"):
        config_from_dict({"train": {"lr": 0}})


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"lrr": 1, "batch_size": "x"}, "method": {"name": "qlora"}})
    assert len(e.value.problems) == 3
    msg = str(e.value)
    assert msg.startswith("3 problems: ")
    assert "train.lrr" in msg and "train.batch_size" in msg and "method.name" in msg


def test_error_names_the_config_file(tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  optimizer: lion\n")
    with pytest.raises(ConfigError, match=rf"^{path}: train.optimizer: got 'lion'"):
        load_config(path)


def test_invalid_yaml_reports_the_line(tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  lr: 1\n  batch_size: [8\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)


def test_override_without_equals_sign_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_config(write(tmp_path / "c.yaml", ""), ["train.lr"])


def test_override_with_invalid_yaml_value_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'train.lr=\[1': the value is not valid YAML"):
        load_config(write(tmp_path / "c.yaml", ""), ["train.lr=[1"])


def test_override_with_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.learning_rate'"):
        load_config(write(tmp_path / "c.yaml", ""), ["train.learning_rate=1e-4"])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------
# `tunelab validate`


def test_validate_good_config_exits_0(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", "method:\n  name: lora\n")
    assert main(["validate", str(path), "train.lr=5e-5", "--show"]) == 0
    out, err = capsys.readouterr()
    assert "OK (classification, model builtin:minilm-l6, method lora)" in out
    assert "lr: 5.0e-05" in out
    assert err == ""


@pytest.mark.parametrize("text, overrides, expected", [
    ("train:\n  batch_size: eight\n", [], "train.batch_size: got 'eight'; expected int"),
    ("method:\n  name: qlora\n", [], "method.name: got 'qlora'"),
    ("", ["train.lrr=1"], "unknown key 'train.lrr'"),
    ("train:\n  lrr: 1\n  optimizer: lion\n", [], "2 problems"),
])
def test_validate_bad_config_exits_2_with_one_line(tmp_path, capsys, text, overrides, expected):
    path = write(tmp_path / "c.yaml", text)
    assert main(["validate", str(path), *overrides]) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and expected in err
    assert "Traceback" not in err + out


def test_output_dir_option_is_always_a_path(tmp_path, monkeypatch, capsys):
    # `--output-dir 2024` must not be read as the number 2024 (the config would reject it).
    import tunelab.run

    seen = {}
    monkeypatch.setattr(tunelab.run, "train", lambda cfg, **_: seen.setdefault("output_dir", cfg.output_dir))
    assert main(["train", str(write(tmp_path / "c.yaml", "")), "--output-dir", "2024"]) == 0
    assert seen["output_dir"] == "2024"


def test_validate_missing_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Shipped examples


def test_every_example_config_loads():
    configs = sorted(EXAMPLES.glob("*.yaml"))
    assert len(configs) == 11  # update when an example is added or removed
    for path in configs:
        cfg = load_config(path)
        assert isinstance(cfg, RunConfig), path


# ---------------------------------------------------------------------------------------------
# Range checks: reported together with type problems; generate.* and model.max_length


def test_range_problems_are_reported_with_type_problems():
    # A type error used to hide every range problem (ranges were checked only on a well-typed config).
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"batch_size": "x", "lr": 0}, "generate": {"max_new_tokens": 0}})
    assert e.value.problems == ["train.batch_size: got 'x'; expected int",
                                "generate.max_new_tokens: got 0; must be >= 1",
                                "train.lr: got 0.0; must be > 0"]


def test_a_field_with_a_type_problem_gets_no_range_problem_too():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"lr": "fast"}, "generate": {"top_p": "all"}})
    assert len(e.value.problems) == 2 and all("expected float" in p for p in e.value.problems)


@pytest.mark.parametrize("key, value, allowed", [
    ("max_new_tokens", 0, ">= 1"), ("temperature", -0.5, ">= 0"), ("top_p", 0, "in (0, 1]"),
    ("top_p", 1.5, "in (0, 1]"), ("top_k", -1, ">= 0"), ("repetition_penalty", 0, "> 0"),
    ("samples_in_eval", -1, ">= 0")])
def test_generate_values_out_of_range_are_errors_at_load(key, value, allowed):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"task": "causal_lm", "generate": {key: value}})
    [problem] = e.value.problems
    assert problem.startswith(f"generate.{key}: got {value}") and f"; must be {allowed}" in problem


def test_generate_boundary_values_are_allowed():
    cfg = config_from_dict({"task": "causal_lm",
                            "generate": {"max_new_tokens": 1, "temperature": 0, "top_p": 1, "top_k": 0,
                                         "repetition_penalty": 0.5, "samples_in_eval": 0}})
    assert cfg.generate.max_new_tokens == 1 and cfg.generate.top_p == 1.0


@pytest.mark.parametrize("value", [1, 2, 3])
def test_max_length_too_small_for_special_tokens_is_an_error(value):
    # 1 or 2 made Hugging Face tokenizers ignore max_length, so nothing was truncated at all.
    with pytest.raises(ConfigError, match=rf"model.max_length: got {value}; must be >= 4 \(room for the model's "
                                          r"special tokens"):
        config_from_dict({"model": {"max_length": value}})


def test_max_length_4_is_allowed():
    assert config_from_dict({"model": {"max_length": 4}}).model.max_length == 4


# ---------------------------------------------------------------------------------------------
# Options that belong to a choice: a method's, a task's, a scratch model's


def test_a_method_option_under_another_method_exits_2_and_says_why(capsys):
    assert main(["validate", str(EXAMPLES / "bbc-news.yaml"), "method.name=full", "method.r=64"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {EXAMPLES / 'bbc-news.yaml'}: method.r applies to lora; method.name is full"


@pytest.mark.parametrize("data, expected", [
    ({"method": {"name": "head", "trainable_layers": 1}}, "method.trainable_layers applies to freeze; method.name is head"),
    ({"method": {"name": "freeze", "merge": True}}, "method.merge applies to lora; method.name is freeze"),
    ({"data": {"packing": True}}, "data.packing applies to causal_lm; task is classification"),
    ({"data": {"train_on_prompt": True}}, "data.train_on_prompt applies to causal_lm; task is classification"),
    ({"data": {"format": "alpaca"}}, "data.format applies to causal_lm and pretrain; task is classification"),
    ({"task": "causal_lm", "data": {"label_field": "topic"}},
     "data.label_field applies to classification; task is causal_lm"),
    ({"model": {"layers": 4}}, "model.layers applies to scratch models (model.name: scratch:KIND); model.name is "
                               "builtin:minilm-l6"),
    ({"model": {"name": "gguf:x.gguf", "position": "rotary"}}, "model.position applies to scratch models"),
    ({"generate": {"max_new_tokens": 5}}, "generate.max_new_tokens applies to causal_lm and seq2seq; task is classification"),
    ({"task": "causal_lm", "model": {"name": "gguf:x.gguf"}, "method": {"name": "head"}},
     "method.name: 'head' does not apply to task causal_lm; use full, freeze, lora or distill"),
    ({"task": "pretrain", "model": {"name": "scratch:gpt"}, "method": {"name": "lora"}, "data": {"format": "text"}},
     "method.name: 'lora' does not apply to task pretrain; use full or freeze"),
])
def test_keys_that_do_not_apply_to_the_choice_are_errors(data, expected):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert len(e.value.problems) == 1 and expected in e.value.problems[0], e.value.problems


@pytest.mark.parametrize("data", [
    {"method": {"name": "lora", "r": 64, "merge": True}},
    {"method": {"name": "full", "r": 8, "trainable_layers": 2}},  # the defaults: not set, so no problem
    {"task": "causal_lm", "data": {"packing": True, "format": "alpaca", "train_on_prompt": True}},
    {"task": "pretrain", "model": {"name": "scratch:gpt", "layers": 4, "position": "rotary"}, "data": {"format": "text"}},
    {"model": {"name": "scratch:lstm", "layers": 1, "bidirectional": False}},
    {"task": "causal_lm", "model": {"name": "scratch:gpt"}, "data": {"format": "text"}},  # routed to pretrain
    {"task": "causal_lm", "generate": {"max_new_tokens": 5, "temperature": 0.7}},
    {"model": {"name": "some/folder-that-may-hold-a-scratch-model", "layers": 3}},  # cannot tell: no problem
])
def test_keys_of_the_chosen_method_task_and_model_are_fine(data):
    config_from_dict(data)


def test_every_example_and_its_dumped_config_reload():
    import yaml

    from tunelab.config import dump_config

    for path in sorted(EXAMPLES.glob("*.yaml")):
        cfg = load_config(path)
        assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg, path  # every default written out


def test_each_method_registers_its_own_options():
    from tunelab.config import MethodConfig
    from tunelab.methods import METHODS, options_of, register_method

    assert METHODS.names() == ("full", "head", "freeze", "lora", "distill")
    assert METHODS.options("distill") == ("method.teacher", "method.temperature", "method.alpha",
                                          "method.student_layers", "method.cache_teacher")
    assert METHODS.options("lora") == ("method.r", "method.alpha", "method.dropout", "method.target_modules",
                                       "method.merge")
    assert METHODS.options("freeze") == ("method.trainable_layers",) and METHODS.options("full") == ()
    assert options_of(MethodConfig(name="freeze", trainable_layers=1)) == {"trainable_layers": 1}
    with pytest.raises(ValueError, match="registered twice"):
        register_method("lora", lambda model, head, **_: model, "lora again")
    with pytest.raises(ValueError, match="must be a dataclass"):
        register_method("bogus", lambda model, head, **_: model, "bogus", options=dict)


def test_a_config_dumped_before_alpha_was_shared_reloads_and_a_foreign_alpha_is_refused():
    # tunelab dumped every method option with its default, so a full run of an earlier version carries lora's
    # alpha 16.0: that is no choice of the user's and must reload; an alpha of one's own under full is refused
    cfg = config_from_dict({"method": {"name": "full", "alpha": 16.0, "r": 8}})
    assert cfg.method.alpha == 16.0
    with pytest.raises(ConfigError) as e:
        config_from_dict({"method": {"name": "full", "alpha": 4.0}})
    assert str(e.value) == "method.alpha applies to lora and distill; method.name is full"
