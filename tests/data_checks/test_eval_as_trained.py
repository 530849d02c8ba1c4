"""`tunelab eval RUN` on a run's own test split scores what training tested on: with data.redact_pii the split is
read again and redacted the same way, so its metrics equal eval.json's (classification and token classification
read their test split through `own_test_split`; the other tasks through `held_out_as_trained`)."""
from __future__ import annotations

import json

import pytest
import yaml

from tunelab.runs import evaluate_run

EMAILS = ["anna@example.com", "omar.khan@mail.example.org", "lena@example.net"]


def quiet(*_):
    pass


def assert_eval_is_eval_json(run_dir):
    """eval on the own test split == eval.json's test metrics; without the redaction it would differ."""
    metrics, _ = evaluate_run(run_dir, log=quiet)
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert metrics.pop("loss") == pytest.approx(test.pop("loss"), rel=1e-6) and metrics == test
    raw, _ = evaluate_run(run_dir, log=quiet, overrides=["data.redact_pii=false"])
    assert raw["loss"] != pytest.approx(json.loads((run_dir / "eval.json").read_text())["test"]["loss"], rel=1e-6)


def test_classification_eval_reads_its_test_split_redacted(tmp_path, tiny_bert, helpers):
    records = helpers.synthetic_records(12, seed=3)
    for i, r in enumerate(records):  # every record carries an address: the test split is full of them
        r["text"] = f"{r['text']} mail {EMAILS[i % 3]}"
    data = helpers.write_jsonl(tmp_path / "train.jsonl", records)
    cfg = {"task": "classification", "model": {"name": str(tiny_bert), "max_length": 24},
           "data": {"train": str(data), "redact_pii": True},
           "train": {"max_steps": 20, "batch_size": 8, "lr": 1e-3, "device": "cpu", "precision": "fp32",
                     "seed": 0},
           "output_dir": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    from tunelab.config import load_config

    run_dir = helpers.train_quietly(load_config(str(tmp_path / "c.yaml")))
    assert json.loads((run_dir / "eval.json").read_text())["data"]["pii_redacted"]["test"] == {"EMAIL": 3}
    assert_eval_is_eval_json(run_dir)


def test_token_classification_eval_reads_its_test_split_redacted(tmp_path, helpers):
    from token_helpers import ner_config, ner_records, write_jsonl, write_tiny_bert

    records = ner_records(80, seed=4)
    for i, r in enumerate(records):
        r["tokens"], r["tags"] = r["tokens"] + ["mail", EMAILS[i % 3]], r["tags"] + ["O", "O"]
    data = write_jsonl(tmp_path / "ner.jsonl", records)
    cfg = ner_config(write_tiny_bert(tmp_path / "bert"), data, tmp_path / "run",
                     **{"data.redact_pii": True, "train.max_steps": 6})
    run_dir = helpers.train_quietly(cfg)
    assert json.loads((run_dir / "eval.json").read_text())["data"]["pii_redacted"]["test"] == {"EMAIL": 12}
    assert_eval_is_eval_json(run_dir)
