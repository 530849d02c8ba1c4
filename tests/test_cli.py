"""The command line as a new user meets it: arguments in any order, `--debug` anywhere, predict / eval with
other field names and settings, predictions on standard output, `validate`'s deeper checks, a closed pipe,
and `--help` with an example for every command.

Commands run in-process through `tunelab.cli.main`; a few run as real processes for exit codes and pipes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import EXAMPLES, _subparsers, build_parser, main
from tunelab.errors import TunelabError

TEXTS = ["goal match team coach the today", "bread cheese soup the a news", "chip code robot some new very"]


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path, monkeypatch):
    """Run from an empty folder: configs without output_dir default to runs/run, which validate checks, and the
    checkout's own runs/ (a user's earlier runs) must not change what these tests see."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def run_dir(tiny_bert, data_dir, tmp_path_factory, helpers) -> Path:
    """A 3-step full fine-tune of the tiny BERT (classes food, sport, tech)."""
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp("cli") / "run")
    return helpers.train_quietly(cfg)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def renamed(records: list[dict], text: str = "body", label: str = "topic") -> list[dict]:
    return [{text: r["text"], label: r["label"]} for r in records]


# ---------------------------------------------------------------------------------------------
# Arguments in any order


@pytest.mark.parametrize("argv", [
    ["train", "CFG", "--output-dir", "OUT", "train.max_steps=1", "train.lr=0.5"],
    ["train", "CFG", "train.max_steps=1", "--output-dir", "OUT", "train.lr=0.5"],
    ["train", "train.max_steps=1", "CFG", "train.lr=0.5", "--output-dir", "OUT"],
    ["train", "--output-dir", "OUT", "train.max_steps=1", "CFG", "train.lr=0.5", "--debug"],
])
def test_train_takes_options_and_overrides_in_any_order(tmp_path, monkeypatch, argv):
    import tunelab.run

    seen = {}
    monkeypatch.setattr(tunelab.run, "train", lambda cfg, **kw: seen.update(cfg=cfg, **kw))
    cfg = write_yaml(tmp_path / "c.yaml", "train:\n  lr: 0.1\n")
    argv = [str(cfg) if a == "CFG" else str(tmp_path / "x") if a == "OUT" else a for a in argv]
    assert main(argv) == 0
    assert seen["cfg"].train.max_steps == 1 and seen["cfg"].train.lr == 0.5
    assert seen["cfg"].output_dir == str(tmp_path / "x")


def test_train_with_an_override_after_an_option_really_trains(make_config, tmp_path, capsys):
    cfg = make_config()
    path = write_yaml(tmp_path / "c.yaml", json.dumps(cfg.to_dict()))  # JSON is YAML
    out = tmp_path / "ordered"
    assert main(["train", str(path), "--output-dir", str(out), "train.max_steps=1", "--no-progress"]) == 0
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "train"] == [1]


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    # --debug shows the traceback: the error is raised instead of becoming exit code 2
    with pytest.raises(TunelabError, match="config file not found"):
        main(["validate", str(tmp_path / "nope.yaml"), "--debug"])
    with pytest.raises(TunelabError, match="config file not found"):
        main(["--debug", "validate", str(tmp_path / "nope.yaml")])
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2


@pytest.mark.parametrize("argv, first, overrides", [
    (["data", "preview", "c.yaml", "-n", "2", "data.train_on_prompt=true", "--debug"], "c.yaml",
     ["data.train_on_prompt=true"]),
    (["pretrain", "c.yaml", "--no-progress", "train.max_steps=2", "--debug"], "c.yaml", ["train.max_steps=2"]),
    (["chat", "builtin:x", "--system", "a=b", "generate.top_k=5", "--debug"], "builtin:x", ["generate.top_k=5"]),
    (["eval", "generate.top_k=5", "runs/x", "--data", "d.jsonl", "--debug", "data.text_field=b"], "runs/x",
     ["generate.top_k=5", "data.text_field=b"]),
    (["predict", "runs/x", "--text", "k=v", "generate.top_k=5", "--debug"], "runs/x", ["generate.top_k=5"]),
])
def test_every_command_with_overrides_takes_them_anywhere(argv, first, overrides):
    from tunelab.cli import parse_args

    args = parse_args(build_parser(), argv)
    assert getattr(args, "config", getattr(args, "run_dir", None)) == first
    assert args.overrides == overrides and args.debug is True


def test_a_stray_word_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["merge", "runs/x", "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_options_in_any_order_in_a_real_process(tiny_bert, tmp_path, helpers):
    data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.synthetic_records(2))
    cfg = write_yaml(tmp_path / "c.yaml", f"model: {{name: {tiny_bert}, max_length: 16}}\ntrain:\n  lr: 0.1\n")
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "validate", str(cfg), "--show", "train.lr=0.25",
                           "--debug", f"data.train={data}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.25" in proc.stdout


# ---------------------------------------------------------------------------------------------
# predict / eval: field names, settings, standard output, output checks


def test_predict_reads_another_text_field_given_as_option_or_override(run_dir, tmp_path, capsys, helpers):
    plain = helpers.write_jsonl(tmp_path / "plain.jsonl", [{"text": t} for t in TEXTS])
    body = helpers.write_jsonl(tmp_path / "body.jsonl", [{"body": t} for t in TEXTS])
    assert main(["predict", str(run_dir), "--input", str(plain), "--output", str(tmp_path / "a.jsonl")]) == 0
    assert main(["predict", str(run_dir), "--input", str(body), "--output", str(tmp_path / "b.jsonl"),
                 "--text-field", "body"]) == 0
    assert main(["predict", str(run_dir), "--input", str(body), "--output", str(tmp_path / "c.jsonl"),
                 "data.text_field=body"]) == 0
    rows = {n: [json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in "abc"}
    assert [r["scores"] for r in rows["b"]] == [r["scores"] for r in rows["a"]] == [r["scores"] for r in rows["c"]]
    assert [r["body"] for r in rows["b"]] == TEXTS


def test_predict_without_output_writes_only_jsonl_to_stdout(run_dir, tmp_path, capsys, helpers):
    source = helpers.write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    assert main(["predict", str(run_dir), "--input", str(source)]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines()]  # every line is JSON: nothing else on stdout
    assert [r["id"] for r in rows] == [0, 1, 2] and all("prediction" in r for r in rows)


def test_predict_keeps_library_prints_off_stdout(run_dir, tmp_path, capsys, helpers, monkeypatch):
    import tunelab.runs

    real = tunelab.runs.predict_records

    def chatty(*args, **kwargs):
        print("loading the model ...")  # as a progress or loading message would
        return real(*args, **kwargs)

    monkeypatch.setattr(tunelab.runs, "predict_records", chatty)
    source = helpers.write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    assert main(["predict", str(run_dir), "--input", str(source)]) == 0
    out, err = capsys.readouterr()
    assert len([json.loads(line) for line in out.splitlines()]) == 3
    assert "loading the model" in err


def test_predict_output_that_is_a_folder_or_the_input_exits_2(run_dir, tmp_path, capsys, helpers):
    source = helpers.write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    before = source.read_bytes()
    (tmp_path / "sub").mkdir()
    same = tmp_path / "sub" / ".." / "in.jsonl"  # the input, spelled differently
    for output, expected in ((tmp_path, "is a folder"), (same, "is the input file"),
                             (source, "is the input file"), (source / "x.jsonl", "which is a file")):
        assert main(["predict", str(run_dir), "--input", str(source), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and expected in err, err
    assert source.read_bytes() == before


def test_predict_output_that_cannot_be_written_exits_2_in_one_line(run_dir, tmp_path, capsys, helpers,
                                                                    monkeypatch):
    import tunelab.cli.use as use

    source = helpers.write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    no_write = tmp_path / "locked"
    no_write.mkdir()
    real_access = os.access  # tests run as root, for whom every folder is writable: say this one is not
    monkeypatch.setattr(use.os, "access", lambda p, mode: False if Path(p) == no_write else real_access(p, mode))
    assert main(["predict", str(run_dir), "--input", str(source), "--output", str(no_write / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot be written" in err, err
    # what the check before predicting cannot see (a full disk, a folder changed meanwhile): still one line
    import tunelab.io as tio

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tio, "atomic_write_bytes", full)
    assert main(["predict", str(run_dir), "--input", str(source), "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "No space left on device" in err and "Traceback" not in err, err
    assert not (tmp_path / "out.jsonl").exists()


def test_eval_reads_other_field_names_of_a_data_file(run_dir, data_dir, tmp_path, capsys, helpers):
    records = [json.loads(x) for x in (data_dir / "valid.jsonl").read_text().splitlines()]
    other = helpers.write_jsonl(tmp_path / "other.jsonl", renamed(records))
    assert main(["eval", str(run_dir), "--data", str(data_dir / "valid.jsonl")]) == 0
    assert main(["eval", str(run_dir), "--label-field", "topic", "--data", str(other), "--text-field", "body"]) == 0
    expected = json.loads((run_dir / "eval-valid.json").read_text())
    got = json.loads((run_dir / "eval-other.json").read_text())
    assert got["accuracy"] == expected["accuracy"] and got["loss"] == pytest.approx(expected["loss"], abs=1e-9)
    assert main(["eval", str(run_dir), "--data", str(other), "data.text_field=body",
                 "data.label_field=topic"]) == 0


@pytest.mark.parametrize("argv, expected", [
    (["eval", "RUN", "model.max_length=8"], "can change only data.text_field, data.label_field, generate.*"),
    (["predict", "RUN", "--text", "x", "train.lr=1"], "can change only data.text_field, generate.*"),
    (["predict", "RUN", "--text", "x", "data.label_field=y"], "can change only data.text_field, generate.*"),
    (["predict", "RUN", "--text", "x", "generate.max_new_tokens=4"], "applies to causal_lm runs"),
    (["eval", "RUN", "--text-field", "body"], "add --data FILE"),
    (["eval", "RUN", "--data", "DATA", "data.text_field=[1]"], "data.text_field"),
])
def test_run_settings_that_cannot_apply_exit_2(run_dir, data_dir, capsys, argv, expected):
    argv = [str(run_dir) if a == "RUN" else str(data_dir / "valid.jsonl") if a == "DATA" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and expected in err, err


# ---------------------------------------------------------------------------------------------
# validate: what can be checked without training, all at once


def test_validate_lists_every_problem_it_can_find_without_training(tmp_path, capsys, helpers):
    data = helpers.write_jsonl(tmp_path / "d.jsonl", renamed(helpers.synthetic_records(2)))
    cfg = write_yaml(tmp_path / "c.yaml", f"""
model: {{name: "builtin:no-such-model"}}
data: {{train: {data}, validation: {tmp_path / 'missing.jsonl'}}}
train: {{early_stopping: {{metric: bleu}}}}
""")
    assert main(["validate", str(cfg)]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0] == f"error: {cfg}: 4 problems" and len(lines) == 5
    assert "model.name: unknown built-in model 'builtin:no-such-model'" in lines[1]
    assert "data.train:" in lines[2] and "no field 'text'" in lines[2] and "data.text_field" in lines[2]
    assert "data.validation:" in lines[3] and "does not exist" in lines[3]
    assert "train.early_stopping.metric: got 'bleu'" in lines[4] and "f1_macro" in lines[4]


def test_validate_checks_the_sound_sections_beside_a_type_error(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", f"data: {{train: {tmp_path / 'missing.jsonl'}}}\n"
                                          "train: {lr: fast, early_stopping: {metric: bleu}}\n")
    assert main(["validate", str(cfg)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"error: {cfg}: 3 problems" and len(lines) == 4
    assert "train.lr: got 'fast'" in lines[1] and "data.train:" in lines[2] and "does not exist" in lines[2]
    assert "train.early_stopping.metric: got 'bleu'" in lines[3]
    # a section with a problem of its own is not checked further (its defaults would be checked instead)
    cfg = write_yaml(tmp_path / "d.yaml", f"data: {{train: {tmp_path / 'missing.jsonl'}, val_fraction: lots}}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "data.val_fraction: got 'lots'" in err and "missing" not in err


def test_validate_is_ok_when_the_fields_are_named(tiny_bert, tmp_path, capsys, helpers):
    data = helpers.write_jsonl(tmp_path / "d.jsonl", renamed(helpers.synthetic_records(2)))
    cfg = write_yaml(tmp_path / "c.yaml", f"model: {{name: {tiny_bert}, max_length: 16}}\ndata: {{train: {data}}}\n")
    assert main(["validate", str(cfg), "data.text_field=body", "data.label_field=topic"]) == 0
    assert "OK (classification" in capsys.readouterr().out
    assert main(["validate", str(cfg), "data.text_field=body"]) == 2  # the label field is still 'label'
    assert "no field 'label'" in capsys.readouterr().err


@pytest.mark.parametrize("model, expected", [
    ("MISSING_DIR", "MODEL"),  # the wording is resolve_model's; it quotes the reference
    ("EMPTY_DIR", "config.json"),
    ("gguf:MISSING_DIR/m.gguf", "GGUF file"),
    ("scratch:lstmm", "unknown scratch model 'scratch:lstmm'"),
])
def test_validate_checks_the_model_reference(tmp_path, capsys, model, expected):
    (tmp_path / "empty").mkdir()
    model = model.replace("MISSING_DIR", str(tmp_path / "nope")).replace("EMPTY_DIR", str(tmp_path / "empty"))
    cfg = write_yaml(tmp_path / "c.yaml", f"model: {{name: '{model}'}}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    expected = expected.replace("MODEL", repr(model))
    assert len(err.splitlines()) == 1 and f"error: {cfg}: model.name: " in err and expected in err, err


def test_validate_checks_max_length_against_the_model_and_the_output_dir(tiny_bert, tmp_path, capsys, helpers):
    data = helpers.write_jsonl(tmp_path / "d.jsonl", helpers.synthetic_records(2))
    (tmp_path / "a_file").write_text("x")
    cfg = write_yaml(tmp_path / "c.yaml", f"model: {{name: {tiny_bert}, max_length: 65}}\ndata: {{train: {data}}}\n"
                                          f"output_dir: {tmp_path / 'a_file' / 'run'}\n")
    assert main(["validate", str(cfg)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert "model.max_length: got 65" in lines[1] and "at most 64 positions" in lines[1]
    assert "output_dir" in lines[2] and "which is a file" in lines[2]
    assert main(["validate", str(cfg), "model.max_length=64", f"output_dir={tmp_path / 'run'}"]) == 0


def test_validate_causal_lm_needs_a_recognisable_format_and_its_metrics(tiny_bert, tmp_path, capsys, helpers):
    data = helpers.write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    cfg = write_yaml(tmp_path / "c.yaml", f"task: causal_lm\nmodel: {{name: {tiny_bert}, max_length: 16}}\n"
                                          f"data: {{train: {data}}}\ntrain: {{early_stopping: {{metric: f1_macro}}}}\n")
    assert main(["validate", str(cfg)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and "cannot tell the data format" in lines[1]
    assert "train.early_stopping.metric: got 'f1_macro'; task causal_lm computes loss, perplexity" in lines[2]
    good = helpers.write_jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "completion": "a"}])
    assert main(["validate", str(cfg), f"data.train={good}", "train.early_stopping.metric=perplexity"]) == 0
    # a stated format is checked record by record
    assert main(["validate", str(cfg), f"data.train={good}", "data.format=alpaca",
                 "train.early_stopping.metric=loss"]) == 2
    assert "field 'instruction' is missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A closed pipe


def test_config_into_a_closed_pipe_exits_quietly(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has stopped reading: every write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "config"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141


def test_predict_to_a_closed_stdout_exits_quietly(run_dir, monkeypatch, capsys):
    class Closed:
        def write(self, _):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["predict", str(run_dir), "--text", TEXTS[0]]) == 141
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --help


def test_every_command_has_help_with_an_example(capsys):
    commands = [path for path, _ in _subparsers(build_parser())]
    # 15 with examples in EXAMPLES; index, index build / add / query (cli/index.py), ask (cli/ask.py),
    # compress (cli/compress.py), export (cli/export.py), explain (cli/explain.py), serve (cli/serve.py), tune
    # (cli/tune.py) and ensemble (cli/ensemble.py) give theirs as the parser's epilog; data check is in EXAMPLES
    assert len(commands) == 27 and len(set(commands) & set(EXAMPLES)) == 16
    for path in [(), *commands]:
        with pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and "examples:\n  tunelab " + " ".join(path) in out, path
        assert "--debug" in out


def test_help_imports_nothing_heavy():
    # `tunelab --help` must answer at once: torch, transformers, numpy and peft load only inside commands
    code = ("import sys\nfrom tunelab import cli\np = cli.build_parser()\n"
            "[s.format_help() for _, s in cli._subparsers(p)]\n"
            "print(sorted({'torch', 'transformers', 'numpy', 'peft', 'yaml', 'fastapi', 'uvicorn'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_output_dir_is_a_path_for_train_and_pretrain(command, monkeypatch):
    # `tunelab pretrain examples/pretrain-gpt.yaml --output-dir 2024` failed with "expected str": the two
    # commands share one set of run arguments now.
    import tunelab.run

    seen = {}
    monkeypatch.setattr(tunelab.run, "train", lambda cfg, **_: seen.setdefault("output_dir", cfg.output_dir))
    config = Path(__file__).resolve().parents[1] / "examples" / "pretrain-gpt.yaml"
    assert main([command, str(config), "--output-dir", "2024", "train.max_steps=1"]) == 0
    assert seen["output_dir"] == "2024"


def test_validate_reads_a_pretraining_corpus_as_pretraining_does(tmp_path, capsys):
    """A flat folder of .txt files is a corpus for pretraining (not label sub-folders): validate says OK, and
    a record file without the text field is still one line naming data.text_field."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"doc{i}.txt").write_text(f"story number {i} about a cat")
    cfg = write_yaml(tmp_path / "gpt.yaml", f"task: pretrain\nmodel: {{name: 'scratch:gpt', tokenizer: "
                                             f"'builtin:minilm-l6'}}\ndata: {{train: '{corpus}'}}\n")
    assert main(["validate", str(cfg)]) == 0, capsys.readouterr().err
    assert "OK (pretrain" in capsys.readouterr().out
    records = tmp_path / "docs.jsonl"
    records.write_text('{"body": "a story"}\n')
    assert main(["validate", str(cfg), f"data.train={records}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "set data.text_field to one of: body" in err, err


@pytest.mark.parametrize("record, expected", [
    ({"text": "   ", "label": "a"}, "text field 'text' is"), ({"text": "x", "label": 2.5}, "regression"),
    ({"text": "x", "label": ["a", "b"]}, "label field 'label'")])
def test_validate_reads_classification_values_as_training_does(tmp_path, capsys, helpers, record, expected):
    """Fields that are present but hold what training cannot read are found by validate, not at train time."""
    data = helpers.write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "label": "b"}, record])
    cfg = write_yaml(tmp_path / "c.yaml", f"data: {{train: {data}}}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "data.train:" in err and expected in err, err
