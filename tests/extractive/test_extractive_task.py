"""The extractive_qa task end to end on tiny models: a synthetic reading task learned to high EM, the saved
threshold and its use, save -> reload, predict / ask, the scratch span model, LoRA, and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from extractive_helpers import qa_config, reading_records, write_jsonl, write_tiny_bert  # noqa: E402


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("qa-bert"))


@pytest.fixture(scope="module")
def reading(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("qa-data") / "reading.jsonl", reading_records(600))


@pytest.fixture(scope="module")
def learned(bert, reading, tmp_path_factory, helpers):
    """(RUN_DIR, the trained model) of 400 steps on the synthetic task."""
    cfg = qa_config(bert, reading, tmp_path_factory.mktemp("qa-run") / "run",
                    **{"train.max_steps": 400, "train.lr": 5e-3, "model.dropout": 0.0})
    run_dir, seen = helpers.train_and_capture(cfg)
    return run_dir, seen["model"]


def test_a_tiny_bert_learns_the_synthetic_task(learned, helpers):
    run_dir, _ = learned
    first = [round(r["loss"], 4) for r in helpers.read_metrics(run_dir, "train")[:3]]
    assert first == [3.1662, 2.9413, 2.975]
    summary = json.loads((run_dir / "eval.json").read_text())
    test = summary["test"]
    assert (test["n"], test["has_answer_n"], test["no_answer_n"]) == (90, 71, 19)
    # the threshold sits halfway between two validation margins; on test it separates every question
    assert test["exact_match"] == 1.0 and test["has_answer_exact_match"] == 1.0 and test["no_answer_f1"] == 1.0
    qa = json.loads((run_dir / "qa.json").read_text())
    # Not pinned: 400 steps amplify the CPU's float rounding (3.0706 on an Intel Xeon, 2.4097 on an AMD EPYC, both
    # AVX-512); what holds everywhere is that it was chosen on validation, separating it perfectly, and on test too.
    assert qa["how"] == "chosen on validation (F1 1.0000 there)" and 0 < qa["no_answer_threshold"] < 100
    assert test["no_answer_threshold"] == qa["no_answer_threshold"]
    report = (run_dir / "report.html").read_text()
    assert "Has answer / no answer (test)" in report and "which colour is there ?" in report


def test_reloaded_run_gives_the_same_answers_and_metrics(learned):
    from tunelab.runs import evaluate_run, load_run

    run_dir, model = learned
    run = load_run(run_dir)
    ids = torch.tensor([[2, 40, 9, 3, 10, 11, 12, 3], [2, 41, 9, 3, 13, 14, 3, 0]])
    mask = (ids != 0).long()
    model.eval()
    with torch.no_grad():
        a, b = run.model(input_ids=ids, attention_mask=mask), model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(a.start_logits, b.start_logits)
    torch.testing.assert_close(a.end_logits, b.end_logits)
    metrics, _ = evaluate_run(run_dir, log=lambda _: None)
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert metrics == pytest.approx(test)


def test_predict_and_ask_give_exact_character_spans(learned):
    from tunelab.runs import predict_records
    from tunelab.tasks.extractive_qa import ask

    run_dir, _ = learned
    records = [{k: r[k] for k in ("question", "context")} for r in reading_records(20, seed=7)]
    rows = predict_records(run_dir, records, "t", log=lambda _: None)
    assert [set(r) for r in rows] == [{"question", "context", "answer", "score", "start", "end"}] * 20
    for row in rows:
        if row["answer"]:
            assert row["context"][row["start"]:row["end"]] == row["answer"]
        else:
            assert row["start"] is None and row["end"] is None
    gold = reading_records(20, seed=7)
    right = sum(row["answer"] == (g["answers"]["text"] or [""])[0] for row, g in zip(rows, gold))
    assert right == 20
    context = "the old house near the river was red and a fox sat on the hill"
    got = ask(run_dir, context, ["which colour is there ?", "which animal is there ?"])
    assert [(g["answer"], context[g["start"]:g["end"]]) for g in got] == [("red", "red"), ("fox", "fox")]
    assert set(got[0]) == {"question", "answer", "score", "start", "end"}


def test_the_threshold_override_decides_no_answer(learned):
    from tunelab.runs import predict_records

    run_dir, _ = learned
    records = [{k: r[k] for k in ("question", "context")} for r in reading_records(10, seed=3)]
    never = predict_records(run_dir, records, "t", overrides=["qa.no_answer_threshold=1000"], log=lambda _: None)
    always = predict_records(run_dir, records, "t", overrides=["qa.no_answer_threshold=-1000"], log=lambda _: None)
    assert all(r["answer"] for r in never) and not any(r["answer"] for r in always)


def test_without_unanswerable_training_questions_it_never_answers_none(bert, tmp_path, helpers):
    from tunelab.runs import predict_records

    data = write_jsonl(tmp_path / "all.jsonl", reading_records(60, unanswerable=0.0))
    lines = []
    run_dir = helpers.train_quietly(qa_config(bert, data, tmp_path / "run", **{"train.max_steps": 2}),
                                    log=lines.append)
    assert any("no unanswerable questions" in line for line in lines)
    assert json.loads((run_dir / "qa.json").read_text())["no_answer_threshold"] is None
    records = [{k: r[k] for k in ("question", "context")} for r in reading_records(10, seed=3, unanswerable=1.0)]
    assert all(r["answer"] for r in predict_records(run_dir, records, "t", log=lambda _: None))


def test_scratch_transformer_span_model_trains_saves_and_reloads(tmp_path, helpers):
    from tunelab.models.scratch import TransformerQA
    from tunelab.runs import load_run
    from tunelab.tokenizer_train import build_tokenizer

    records = reading_records(60)
    tok = build_tokenizer([r["context"] + " " + r["question"] for r in records], 300, "bpe")
    tok.save_pretrained(str(tmp_path / "bpe"))
    data = write_jsonl(tmp_path / "d.jsonl", records)
    cfg = qa_config("scratch:transformer", data, tmp_path / "run",
                    **{"model.tokenizer": str(tmp_path / "bpe"), "model.max_length": 48, "model.layers": 1,
                       "model.hidden_size": 32, "model.heads": 2, "model.ffn_size": 64, "data.doc_stride": 8})
    run_dir, seen = helpers.train_and_capture(cfg)
    model = seen["model"]
    assert isinstance(model, TransformerQA)
    assert all(not torch.equal(p, seen["before"][n]) for n, p in model.named_parameters())
    assert json.loads((run_dir / "model" / "scratch_config.json").read_text())["kind"] == "transformer-qa"
    run = load_run(run_dir)
    ids = torch.tensor([tok("<s>which colour is there ?</s>red house</s>")["input_ids"]])
    model.eval()
    torch.testing.assert_close(run.model(ids).start_logits, model(ids).start_logits)
    assert json.loads((run_dir / "qa.json").read_text())["token_type_ids"] is False


def test_lora_trains_adapters_and_the_span_head_only(bert, reading, tmp_path, helpers):
    from tunelab.runs import load_run

    cfg = qa_config(bert, reading, tmp_path / "run", **{"method.name": "lora", "method.r": 4,
                                                        "train.max_steps": 2})
    run_dir, seen = helpers.train_and_capture(cfg)
    model, before = seen["model"], seen["before"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "qa_outputs" in n for n in trainable)
    assert any("qa_outputs" in n for n in trainable)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]) == (name not in trainable), name
    run = load_run(run_dir)
    ids = torch.tensor([[2, 40, 9, 3, 10, 11, 12, 3]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(run.model(input_ids=ids).end_logits, model(input_ids=ids).end_logits)


def test_config_checks(bert, reading, tmp_path):
    from tunelab.errors import ConfigError
    from tunelab.tasks.extractive_qa import check_config

    cfg = qa_config(bert, reading, tmp_path / "run", **{"data.doc_stride": 12})
    assert check_config(cfg) == ["data.doc_stride: got 12; windows share this many context tokens, so it must "
                                 "stay below half of model.max_length (12); e.g. null (6)"]
    with pytest.raises(ConfigError, match="qa.n_best applies to extractive_qa; task is classification"):
        qa_config(bert, reading, tmp_path / "run", **{"task": "classification", "qa.n_best": 3})


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_predict_writes_answers_and_refuses_text(learned, tmp_path, capsys):
    from tunelab.cli import main

    run_dir, _ = learned
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "which colour is there ?",
                                                    "context": "a big tree and a blue road"}])
    assert main(["predict", str(run_dir), "--input", str(questions)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["answer"], row["start"], row["end"]) == ("blue", 17, 21)
    assert main(["predict", str(run_dir), "--text", "which colour?"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: predict --text: an extractive_qa run answers from a context") and "\n" not in err
    assert "tunelab ask" in err and "--input FILE" in err


def test_predict_and_eval_read_squad_json_like_jsonl(learned, tmp_path, capsys):
    from tunelab.cli import main

    run_dir, _ = learned
    squad = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{
        "context": "a big tree and a blue road",
        "qas": [{"id": "q1", "question": "which colour is there ?",
                 "answers": [{"text": "blue", "answer_start": 17}]}]}]}]}
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad))
    assert main(["predict", str(run_dir), "--input", str(path)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["id"], row["answer"], row["start"], row["end"]) == ("q1", "blue", 17, 21)
    assert main(["eval", str(run_dir), "--data", str(path)]) == 0
    assert json.loads((run_dir / "eval-dev.json").read_text())["exact_match"] == 1.0


def test_an_unlabelled_validation_or_test_file_is_refused_before_training(bert, reading, tmp_path):
    from tunelab.errors import DataError
    from tunelab.tasks.extractive_qa import split_questions

    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{"question": "which colour is there ?",
                                                     "context": "a blue tree"}])
    for split in ("validation", "test"):
        cfg = qa_config(bert, reading, tmp_path / "run", **{f"data.{split}": str(unlabelled)})
        with pytest.raises(DataError, match=f"record 1: no 'answers' field; {split} needs gold answers"):
            split_questions(cfg, lambda _: None)


def test_a_file_of_two_contexts_trains_with_an_empty_validation_split(bert, tmp_path, helpers):
    records = [r for r in reading_records(40)]
    contexts = sorted({r["context"] for r in records})[:2]
    two = write_jsonl(tmp_path / "two.jsonl", [r for r in records if r["context"] in contexts] or records[:2])
    cfg = qa_config(bert, two, tmp_path / "run", **{"data.val_fraction": 0.1, "data.test_fraction": 0.1})
    run_dir, _ = helpers.train_and_capture(cfg)
    assert (run_dir / "model").is_dir()


def test_cli_train_exit_codes_and_one_line_data_error(bert, tmp_path, capsys):
    from tunelab.cli import main
    from tunelab.config import dump_config

    rows = reading_records(40)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    config = tmp_path / "c.yaml"
    config.write_text(dump_config(qa_config(bert, data, tmp_path / "run", **{"train.max_steps": 2})))
    assert main(["train", str(config), "--no-progress"]) == 0
    assert "test: exact_match" in capsys.readouterr().out and (tmp_path / "run" / "qa.json").is_file()
    answered = next(i for i, r in enumerate(rows) if r["answers"]["text"])
    rows[answered]["answers"]["answer_start"] = [rows[answered]["answers"]["answer_start"][0] + 1]
    write_jsonl(data, rows)
    assert main(["train", str(config), "--no-progress", "--output-dir", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{data}:{answered + 1}: record {answered + 1}" in err
    assert not (tmp_path / "run2").exists()
