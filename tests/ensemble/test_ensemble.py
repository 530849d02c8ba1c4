"""`tunelab ensemble` on tiny runs: an ensemble of one run twice is that run (probabilities, predictions and
metrics, for classification and token classification), weights are honoured, label orders are aligned, runs
with different tokenizers combine, the folder is used like a run (eval, predict, serve), moved folders are
found or refused clearly, and every bad input is one line with exit code 2 before a model loads."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tunelab.cli import main
from tunelab.runs import load_run, predict_records, run_probabilities


def quiet(_line: str) -> None:
    """A log that drops notes."""


def own_metrics(run_dir: Path) -> dict:
    """`tunelab eval RUN_DIR`'s metrics, without writing eval-test.json into a run other tests share."""
    run = load_run(run_dir)
    return run.task.evaluate(run, None, "", quiet)


def build(capsys, *args: str) -> tuple[int, list[str], str]:
    """`tunelab ensemble ARGS`: (exit code, stdout lines, stderr)."""
    capsys.readouterr()
    code = main(["ensemble", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def retrained(run_dir: Path, out: Path, helpers, **changes) -> Path:
    """A run trained from `run_dir`'s config (the same data and split) with `changes` ({'a.b': value})."""
    import yaml

    from tunelab.config import config_from_dict

    data = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key, value in {**changes, "output_dir": str(out)}.items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    return helpers.train_quietly(config_from_dict(data))


def relabelled(run_dir: Path, out: Path, labels_file: str | None = None) -> Path:
    """A copy of a run whose labels are in reversed order, its head's rows permuted to match: the same model."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir, out)
    model = out / "model"
    labels = json.loads((model / "labels.json").read_text())
    new = labels[::-1]
    rows = [labels.index(lab) for lab in new]
    weights = load_file(str(model / "model.safetensors"))
    heads = [k for k in weights if k.startswith("classifier.")]
    assert heads and all(weights[k].shape[0] == len(labels) for k in heads)
    save_file({k: v[rows] if k in heads else v for k, v in weights.items()}, str(model / "model.safetensors"))
    (model / "labels.json").write_text(json.dumps(new))
    config = json.loads((model / "config.json").read_text())
    config["id2label"], config["label2id"] = dict(enumerate(new)), {lab: i for i, lab in enumerate(new)}
    (model / "config.json").write_text(json.dumps(config))
    if labels_file:  # token classification keeps its labels beside the scheme too
        meta = json.loads((out / labels_file).read_text())
        (out / labels_file).write_text(json.dumps({**meta, "labels": new}))
    return out


def edited_config(run_dir: Path, out: Path, **changes) -> Path:
    """A copy of a run whose config.yaml has `changes` ({'a.b': value}); its model is untouched."""
    import yaml

    shutil.copytree(run_dir, out)
    data = yaml.safe_load((out / "config.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split(".")
        data[section][name] = value
    (out / "config.yaml").write_text(yaml.safe_dump(data))
    return out


def same_arrays(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory, data_dir, helpers) -> Path:
    """A scratch LSTM classifier (its own tokenizer, trained from the data) on the data and split of
    cls_run_dir: the other tokenizer of a mixed ensemble."""
    from tunelab.config import config_from_dict

    root = tmp_path_factory.mktemp("ens-scratch")
    cfg = {"task": "classification",
           "model": {"name": "scratch:lstm", "max_length": 16, "layers": 1, "hidden_size": 16},
           "data": {"train": str(data_dir / "train.jsonl"), "val_fraction": 0.15, "test_fraction": 0.15},
           "method": {"name": "full"},
           "train": {"max_steps": 20, "batch_size": 8, "lr": 1e-2, "warmup_steps": 0, "seed": 0, "device": "cpu",
                     "precision": "fp32", "early_stopping": {"metric": "f1_macro", "patience": None}},
           "output_dir": str(root / "run")}
    return helpers.train_quietly(config_from_dict(cfg))


@pytest.fixture(scope="module")
def twice(cls_run_dir, tmp_path_factory, capsys_module) -> tuple[Path, list[str]]:
    """The classification run ensembled with itself: (the ensemble folder, what the command printed)."""
    out = tmp_path_factory.mktemp("ens-twice") / "ens"
    code, lines, err = capsys_module(cls_run_dir, cls_run_dir, "--output", out)
    assert code == 0, err
    return out, lines


@pytest.fixture(scope="module")
def capsys_module():
    """`tunelab ensemble ARGS` for module fixtures (capsys is per test): (exit code, stdout lines, stderr)."""
    import contextlib
    import io

    def run(*args) -> tuple[int, list[str], str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["ensemble", *map(str, args)])
        return code, out.getvalue().splitlines(), err.getvalue()

    return run


# ---------------------------------------------------------------------------------------------
# An ensemble of one run twice is that run


def test_a_classification_run_twice_is_the_run(cls_run_dir, twice):
    out, lines = twice
    single, ens = load_run(cls_run_dir), load_run(out)
    assert len(ens.model.members) == 2 and ens.meta == single.meta
    assert same_arrays(run_probabilities(ens, None, "", quiet), run_probabilities(single, None, "", quiet))
    own = own_metrics(cls_run_dir)
    assert json.loads((out / "eval.json").read_text())["test"] == own
    texts = ["goal match team the", "chip code robot today", "bread soup the news"]
    assert predict_records(out, None, "", texts=texts) == predict_records(cls_run_dir, None, "", texts=texts)
    task = single.task
    assert lines[:3] == [f"{cls_run_dir} (weight 0.500): {task.metrics_line(own)}"] * 2 + \
        [f"ensemble: {task.metrics_line(own)}"]
    assert lines[3].startswith("inference cost: 2 members: ") and "x the time of one member" in lines[3]


def test_a_token_classification_run_twice_is_the_run(ner_run_dir, tmp_path, capsys):
    code, lines, err = build(capsys, ner_run_dir, ner_run_dir, "--output", tmp_path / "ens")
    assert code == 0, err
    own = own_metrics(ner_run_dir)
    summary = json.loads((tmp_path / "ens" / "eval.json").read_text())
    assert summary["test"] == own and [m["test"] for m in summary["members"]] == [own, own]
    single, ens = load_run(ner_run_dir), load_run(tmp_path / "ens")
    probs = run_probabilities(ens, None, "", quiet)
    assert same_arrays(probs, run_probabilities(single, None, "", quiet)) and probs[0].ndim == 2
    for records in ([{"text": "yesterday anna smith flew to oslo with omar"}],
                    [{"tokens": ["the", "mayor", "of", "lima", "met", "sara", "khan"]}]):
        rows = predict_records(tmp_path / "ens", records, "t", log=quiet)
        assert rows == predict_records(ner_run_dir, records, "t", log=quiet) and rows[0]["entities"]


def test_the_tagging_loss_counts_each_word_once_from_its_probabilities(ner_run_dir):
    """The NER loss an ensemble reports is the one a single run reports: mean -log p(gold tag) per word."""
    from tunelab.tasks.token_classification import own_test_split, tag_ids_of

    run = load_run(ner_run_dir)
    sentences, _ = own_test_split(run)
    gold = tag_ids_of(sentences, {t: i for i, t in enumerate(run.meta["labels"])})
    probs = run_probabilities(run, None, "", quiet)
    want = -np.mean(np.log(np.concatenate([p[np.arange(len(g)), g] for p, g in zip(probs, gold)])))
    assert own_metrics(ner_run_dir)["loss"] == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Weights, label order, tokenizers


def test_weights_are_honoured_and_a_weight_of_0_leaves_a_run_out(cls_run_dir, scratch_run, tmp_path, capsys):
    a, b = (run_probabilities(load_run(r), None, "", quiet) for r in (cls_run_dir, scratch_run))
    code, _, err = build(capsys, cls_run_dir, scratch_run, "--weights", "3", "1", "--output", tmp_path / "w31")
    assert code == 0, err
    got = run_probabilities(load_run(tmp_path / "w31"), None, "", quiet)
    want = [(0.75 * x.astype(np.float64) + 0.25 * y.astype(np.float64)).astype(np.float32) for x, y in zip(a, b)]
    assert same_arrays(got, want) and not same_arrays(got, a)
    code, _, err = build(capsys, cls_run_dir, scratch_run, "--weights", "1", "0", "--output", tmp_path / "w10")
    assert code == 0, err
    ens = load_run(tmp_path / "w10")
    assert [m.run.dir.resolve() for m in ens.model.members] == [cls_run_dir.resolve()]  # the weight-0 run: not loaded
    assert same_arrays(run_probabilities(ens, None, "", quiet), a)
    members = json.loads((tmp_path / "w10" / "eval.json").read_text())["members"]
    assert [m["weight"] for m in members] == [1.0, 0.0] and members[1]["test"]["n"] == members[0]["test"]["n"]


def test_runs_with_different_tokenizers_combine(cls_run_dir, scratch_run, tmp_path, capsys):
    assert load_run(scratch_run).tokenizer.vocab_size != load_run(cls_run_dir).tokenizer.vocab_size
    code, lines, err = build(capsys, cls_run_dir, scratch_run, "--output", tmp_path / "mixed")
    assert code == 0, err
    summary = json.loads((tmp_path / "mixed" / "eval.json").read_text())
    a, b = (run_probabilities(load_run(r), None, "", quiet) for r in (cls_run_dir, scratch_run))
    mean = [(0.5 * x.astype(np.float64) + 0.5 * y.astype(np.float64)).astype(np.float32) for x, y in zip(a, b)]
    assert same_arrays(run_probabilities(load_run(tmp_path / "mixed"), None, "", quiet), mean)
    cost = summary["cost"]
    assert cost["members"] == 2 and cost["parameters"] == sum(m["parameters"] for m in summary["members"])
    assert cost["time_multiple"] > 0 and cost["parameter_multiple"] == pytest.approx(2, abs=0.01)
    report = (tmp_path / "mixed" / "report.html").read_text()
    assert str(scratch_run) in report and "2 members: " in report and "f1_macro" in report
    assert f"ensemble: {load_run(cls_run_dir).task.metrics_line(summary['test'])}" in lines


@pytest.mark.parametrize("which", ["classification", "token_classification"])
def test_runs_whose_labels_are_in_another_order_are_aligned(which, cls_run_dir, ner_run_dir, tmp_path, capsys):
    run_dir, labels_file = (cls_run_dir, None) if which == "classification" else (ner_run_dir, "tagging.json")
    flipped = relabelled(run_dir, tmp_path / "flipped", labels_file)
    single = run_probabilities(load_run(run_dir), None, "", quiet)
    aligned = [p[..., ::-1] for p in run_probabilities(load_run(flipped), None, "", quiet)]
    # the same model with its head's rows in another order (a matrix product's rounding may differ by row)
    assert all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(aligned, single))
    code, _, err = build(capsys, run_dir, flipped, "--output", tmp_path / "ens")
    assert code == 0, err
    ens = load_run(tmp_path / "ens")
    assert ens.meta["labels"] == load_run(run_dir).meta["labels"]
    mean = [(0.5 * a.astype(np.float64) + 0.5 * b.astype(np.float64)).astype(a.dtype) for a, b in zip(single, aligned)]
    assert same_arrays(run_probabilities(ens, None, "", quiet), mean)
    got, want = json.loads((tmp_path / "ens" / "eval.json").read_text())["test"], own_metrics(run_dir)
    assert got.pop("loss") == pytest.approx(want.pop("loss"), rel=1e-5) and got == want


# ---------------------------------------------------------------------------------------------
# The folder is used like a run


def test_eval_of_the_folder_prints_what_the_build_printed(twice, capsys):
    out, lines = twice
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == lines[2].removeprefix("ensemble: ")
    assert json.loads((out / "eval-test.json").read_text()) == json.loads((out / "eval.json").read_text())["test"]


def test_eval_with_other_field_names_reaches_every_member(cls_run_dir, twice, tmp_path, capsys, helpers):
    out, _ = twice
    single = shutil.copytree(cls_run_dir, tmp_path / "single")  # eval writes eval-other.json beside the run
    records = [{"body": r["text"], "topic": r["label"]} for r in helpers.synthetic_records(3, seed=9)]
    data = helpers.write_jsonl(tmp_path / "other.jsonl", records)
    args = ["--data", str(data), "--text-field", "body", "--label-field", "topic"]
    capsys.readouterr()
    assert main(["eval", str(out), *args]) == 0 and main(["eval", str(single), *args]) == 0
    ensemble, single = capsys.readouterr().out.splitlines()[::2]
    assert ensemble == single and "(n=9)" in single


def test_predict_command_writes_the_averaged_scores(twice, cls_run_dir, capsys):
    out, _ = twice
    capsys.readouterr()
    assert main(["predict", str(out), "--text", "goal match team the", "--text", "chip code robot"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in predict_records(
        cls_run_dir, None, "", texts=["goal match team the", "chip code robot"])]
    assert set(rows[0]["scores"]) == set(load_run(cls_run_dir).meta["labels"])


def test_serve_answers_classify_from_the_ensemble(twice, cls_run_dir):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
    from serve_helpers import post, running

    out, _ = twice
    text = "goal match team the"
    (want,) = predict_records(cls_run_dir, None, "", texts=[text])
    with running(out) as (url, _):
        reply = post(url, "/v1/classify", {"input": text})
    assert reply.status_code == 200, reply.text
    (got,) = reply.json()["data"]
    assert got["label"] == want["prediction"] and got["scores"] == want["scores"]


def test_commands_that_need_one_model_say_so(twice, capsys):
    out, _ = twice
    capsys.readouterr()
    assert main(["export", str(out), "--format", "onnx", "--output", str(out.parent / "onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an ensemble of 2 runs" in err[0] and "one of its members" in err[0]


# ---------------------------------------------------------------------------------------------
# Moved folders


def test_moved_folders_are_found_relative_then_absolute_else_refused(cls_run_dir, scratch_run, tmp_path, capsys):
    first = tmp_path / "first"
    shutil.copytree(cls_run_dir, first / "a")
    shutil.copytree(scratch_run, first / "b")
    code, _, err = build(capsys, first / "a", first / "b", "--output", first / "ens")
    assert code == 0, err
    want = json.loads((first / "ens" / "eval.json").read_text())["test"]
    shutil.move(first / "ens", tmp_path / "alone")  # the ensemble alone: its members' absolute paths
    assert own_metrics(tmp_path / "alone") == want
    shutil.move(tmp_path / "alone", first / "ens")
    shutil.move(first, tmp_path / "second")  # the three together: their relative places
    assert own_metrics(tmp_path / "second" / "ens") == want
    shutil.move(tmp_path / "second" / "ens", tmp_path / "lost")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "lost")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{tmp_path / 'a'}" in err and f"{first / 'a'}" in err
    assert "move the member runs with the ensemble" in err


def test_a_member_trained_again_is_refused(cls_run_dir, tmp_path, capsys):
    from tunelab.resume import RUN_MARKER

    member = shutil.copytree(cls_run_dir, tmp_path / "a")
    assert build(capsys, member, cls_run_dir, "--output", tmp_path / "ens")[0] == 0
    marker = json.loads((member / RUN_MARKER).read_text())
    (member / RUN_MARKER).write_text(json.dumps({**marker, "time": "2031-01-01T00:00:00Z"}))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ens")]) == 2
    assert "was trained again after the ensemble was built" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line, exit code 2, nothing written


def refused(capsys, *args) -> str:
    code, lines, err = build(capsys, *args)
    assert code == 2 and lines == [] and len(err.strip().splitlines()) == 1, (code, lines, err)
    return err.strip()


def test_bad_runs_are_refused_in_one_line(cls_run_dir, ner_run_dir, llama_run_dir, tmp_path, capsys):
    out = tmp_path / "ens"
    assert "give two or more finished runs" in refused(capsys, cls_run_dir, "--output", out)
    assert "is not a finished tunelab run" in refused(capsys, cls_run_dir, tmp_path, "--output", out)
    assert "an ensemble averages label probabilities, which classification and token_classification runs give" \
        in refused(capsys, llama_run_dir, llama_run_dir, "--output", out)
    assert "an ensemble combines runs of one task" in refused(capsys, cls_run_dir, ner_run_dir, "--output", out)
    other = shutil.copytree(cls_run_dir, tmp_path / "other")
    labels = json.loads((other / "model" / "labels.json").read_text())
    (other / "model" / "labels.json").write_text(json.dumps(labels[:-1] + ["music"]))
    message = refused(capsys, cls_run_dir, other, "--output", out)
    assert f"{other} has 'music', which {cls_run_dir} lacks; {cls_run_dir} has '{labels[-1]}'" in message
    seeded = edited_config(cls_run_dir, tmp_path / "seeded", **{"train.seed": 7})
    message = refused(capsys, cls_run_dir, seeded, "--output", out)
    assert "different test splits (train.seed: 0 and 7)" in message and "one data.test file" in message
    fields = edited_config(cls_run_dir, tmp_path / "fields", **{"data.text_field": "body"})
    assert "data.text_field is 'text'" in refused(capsys, cls_run_dir, fields, "--output", out)
    assert not out.exists()


def test_members_that_read_the_test_split_redacted_and_not_are_refused(cls_run_dir, tmp_path, capsys):
    """The ensemble reads its test split once, with its config's data.redact_pii: members that differ there
    were tested on different texts, and the order of the runs would decide the ensemble's scores."""
    redacted = edited_config(cls_run_dir, tmp_path / "redacted", **{"data.redact_pii": True})
    out = tmp_path / "ens"
    for runs, (a, b) in (((cls_run_dir, redacted), ("false", "true")), ((redacted, cls_run_dir), ("true", "false"))):
        assert refused(capsys, *runs, "--output", out) == (
            f"error: ensemble: data.redact_pii is {a} in {runs[0]} and {b} in {runs[1]}; an ensemble reads its test "
            "split once for all its members, redacted or not: combine runs trained with the same data.redact_pii")
    assert not out.exists()


def test_bad_weights_and_outputs_are_refused_in_one_line(cls_run_dir, twice, tmp_path, capsys):
    runs = (cls_run_dir, cls_run_dir)
    out = tmp_path / "ens"
    assert "got 3 weights for 2 runs" in refused(capsys, *runs, "--weights", "1", "2", "3", "--output", out)
    assert "got -1" in refused(capsys, *runs, "--weights", "1", "-1", "--output", out)
    assert "every weight is 0" in refused(capsys, *runs, "--weights", "0", "0", "--output", out)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    assert "is not empty and is not an ensemble" in refused(capsys, *runs, "--output", tmp_path / "project")
    assert "is or holds the run" in refused(capsys, *runs, "--output", cls_run_dir)
    (tmp_path / "file").write_text("x")
    assert "is a file" in refused(capsys, *runs, "--output", tmp_path / "file")
    existing, _ = twice
    assert "already holds an ensemble; pass --overwrite" in refused(capsys, *runs, "--output", existing)
    assert not out.exists()


def test_overwrite_replaces_an_ensemble_whole(cls_run_dir, scratch_run, tmp_path, capsys):
    out = tmp_path / "ens"
    assert build(capsys, cls_run_dir, cls_run_dir, "--output", out)[0] == 0
    (out / "eval-extra.json").write_text("{}")
    assert build(capsys, cls_run_dir, scratch_run, "--output", out, "--overwrite")[0] == 0
    assert not (out / "eval-extra.json").exists()
    spec = json.loads((out / "model" / "ensemble.json").read_text())
    assert [m["absolute"] for m in spec["members"]] == [str(cls_run_dir.resolve()), str(scratch_run.resolve())]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_the_cost_compares_warm_members_with_the_warm_ensemble(cls_run_dir, scratch_run, tmp_path, capsys,
                                                                 monkeypatch):
    """A stand-in clock: a model's first evaluation costs 10 s (first-call costs), every later one 1 s, and the
    ensemble costs its members' sum. Members timed cold beside a warm ensemble gave 2 / 10 = 0.2x; timed warm,
    two members cost 2x one."""
    import tunelab.ensemble as E

    ran: set[Path] = set()

    def fake_timed_evaluate(run, log):
        dirs = [m.run.dir for m in run.model.members] if isinstance(run.model, E.Ensemble) else [run.dir]
        seconds = sum(1.0 if d in ran else 10.0 for d in dirs)
        ran.update(dirs)
        return E.Scored(run.task.evaluate(run, None, "", log), seconds, 1000 * len(dirs))

    monkeypatch.setattr(E, "timed_evaluate", fake_timed_evaluate)
    code, lines, err = build(capsys, cls_run_dir, scratch_run, "--output", tmp_path / "ens")
    assert code == 0, err
    summary = json.loads((tmp_path / "ens" / "eval.json").read_text())
    assert [m["eval_seconds"] for m in summary["members"]] == [1.0, 1.0]
    assert summary["cost"] == {"members": 2, "eval_seconds": 2.0, "member_eval_seconds_mean": 1.0,
                               "time_multiple": 2.0, "parameters": 2000, "parameter_multiple": 2.0}
    assert lines[3] == ("inference cost: 2 members: 2.0x the time of one member (2.00 s against 1.00 s for one "
                        "evaluation of the test split), 2,000 parameters (2.0x one member's)")
