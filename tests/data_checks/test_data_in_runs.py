"""The data checks where users meet them: `tunelab data check CONFIG`, and a real tiny training run whose log,
eval.json and report.html carry the check's summary and what data.dedup / data.redact_pii changed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main

EMAIL_TEXT = "bread cheese soup write to anna@example.com today"
PHONE_TEXT = "goal match team call +44 20 7946 0958 today"


@pytest.fixture(scope="module")
def planted(tmp_path_factory, helpers) -> dict:
    """Tiny classification data (the shared keyword records) with planted problems: 24 distinct training records
    (checked below), then exact repeats of records 0 and 1 (upper case), one record that is also in validation,
    and two records with PII (an e-mail address, a phone number); validation: 3 records + that leak; test: 3."""
    from tunelab.data.dedup import normalise

    folder = tmp_path_factory.mktemp("planted")
    base = helpers.synthetic_records(8, seed=5)
    assert len({normalise(r["text"]) for r in base}) == 24
    leak = {"text": "robot chip code web news today", "label": "tech"}
    train = base + [{**base[0], "text": base[0]["text"].upper()}, {**base[1], "text": base[1]["text"] + " "},
                    leak, {"text": EMAIL_TEXT, "label": "food"}, {"text": PHONE_TEXT, "label": "sport"}]
    validation = helpers.synthetic_records(1, seed=6) + [leak]
    test = helpers.synthetic_records(1, seed=7)
    paths = {name: helpers.write_jsonl(folder / f"{name}.jsonl", recs)
             for name, recs in (("train", train), ("valid", validation), ("test", test))}
    return {"folder": folder, **paths}


def write_config(path: Path, tiny_bert: Path, planted: dict, **data) -> Path:
    cfg = {"task": "classification", "model": {"name": str(tiny_bert), "max_length": 16},
           "data": {"train": str(planted["train"]), "validation": str(planted["valid"]),
                    "test": str(planted["test"]), **data},
           "train": {"max_steps": 2, "batch_size": 8, "device": "cpu", "precision": "fp32", "seed": 0},
           "output_dir": str(path.parent / "run")}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_data_check_prints_the_report(tmp_path, tiny_bert, planted, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_bert, planted)
    assert main(["data", "check", str(cfg), "--examples", "1", "--json", str(tmp_path / "out" / "r.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("classification data: train 29, validation 4, test 3 records (checked in ")
    assert "  exact duplicates in train (repeat an earlier training record): 2\n" \
           f"    {planted['train']}:25 repeats {planted['train']}:1\n" in out
    assert f"  training records equal to a validation record: 1\n    {planted['train']}:27 equals " \
           f"{planted['valid']}:4\n" in out
    assert "  EMAIL: train 1, validation 0, test 0\n" not in out  # PII lines name only the splits with findings
    assert f"  EMAIL: train 1\n    train: {planted['train']}:28: a***@e***.com\n" in out
    assert "anna@example.com" not in out and "7946 0958" not in out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r.json"]  # written whole: no temp file beside it
    report = json.loads((tmp_path / "out" / "r.json").read_text())
    assert report["records"] == {"train": 29, "validation": 4, "test": 3}
    assert report["pii"] == {"train": {"EMAIL": 1, "PHONE": 1}, "validation": {}, "test": {}}
    assert report["labels"]["counts"]["validation"] == {"tech": 2, "food": 1, "sport": 1}


def test_data_check_bad_config_is_one_line(tmp_path, tiny_bert, planted, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_bert, planted)
    assert main(["data", "check", str(cfg), "data.near_duplicate_threshold=1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {cfg}: data.near_duplicate_threshold: got 1.5; must be in (0, 1]"]


def test_redaction_refused_by_a_task_that_cannot_rewrite(tmp_path, tiny_bert, planted, capsys, monkeypatch):
    """A task whose DataView has no rewrite refuses data.redact_pii in its check_config: `data check` and
    `train` stop with one line naming the key and the task's reason, before reading any data."""
    import tunelab.tasks.classification as classification
    from tunelab.data.prepare import DataView

    def no_rewrite(cfg):
        return DataView(texts=lambda r: [r["text"]], no_rewrite="offsets point into the texts")

    monkeypatch.setattr(classification, "data_view", no_rewrite)
    cfg = write_config(tmp_path / "c.yaml", tiny_bert, planted, train="missing.jsonl")
    expected = ["error: data.redact_pii: classification cannot rewrite its texts (offsets point into the texts); "
                "set it to false"]
    for argv in (["data", "check", str(cfg), "data.redact_pii=true"],
                 ["train", str(cfg), "data.redact_pii=true", "--no-progress"]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines() == expected
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def cleaned_run(tmp_path_factory, tiny_bert, planted) -> tuple[Path, list[str]]:
    """A real tiny training run (2 steps) with data.dedup and data.redact_pii on; (RUN_DIR, its log lines)."""
    from tunelab.config import load_config
    from tunelab.run import train

    folder = tmp_path_factory.mktemp("cleaned")
    cfg = load_config(str(write_config(folder / "c.yaml", tiny_bert, planted)),
                      ["data.dedup=true", "data.redact_pii=true"])
    lines: list[str] = []
    return train(cfg, show_progress=False, log=lines.append), lines


def test_run_logs_the_check_summary_and_the_changes(cleaned_run, planted):
    _, lines = cleaned_run
    start = lines.index(next(line for line in lines if line.startswith("data check: ")))
    assert lines[start].startswith("data check: train 29, validation 4, test 3 records (")
    assert lines[start + 1:start + 4] == [
        "  duplicates: train repeats 2 exact + 0 near duplicates; 1 training records also in validation (0 near) "
        "(data.dedup: true drops them from train)",
        "  labels: 3 in train, largest / smallest class 1.1x",  # 10 : 10 : 9
        "  PII: 1 EMAIL, 1 PHONE in train (data.redact_pii: true replaces them with placeholders)"]
    assert "data.dedup: dropped 3 of 29 training records (2 repeats in train, 1 also in validation)" in lines
    assert "data.redact_pii: replaced 1 EMAIL, 1 PHONE in train" in lines
    assert any(line.startswith("train: 26 examples, ") for line in lines)  # the job encodes what is left


def test_run_keeps_the_counts_in_eval_json_and_the_report(cleaned_run):
    run_dir, _ = cleaned_run
    data = json.loads((run_dir / "eval.json").read_text())["data"]
    assert data["records"] == {"train": 26, "validation": 4, "test": 3}
    assert data["dedup_dropped"] == {"repeats in train": 2, "also in validation": 1}
    assert data["pii_redacted"] == {"train": {"EMAIL": 1, "PHONE": 1}, "validation": {}, "test": {}}
    assert data["check"]["train.exact_duplicates"] == 2 and data["check"]["validation.leaked_exact"] == 1
    page = (run_dir / "report.html").read_text()
    section = page[page.index("<h2>Data</h2>"):page.index("<h2>Config</h2>")]
    assert "<th>data.dedup dropped from train</th><td>2 repeats in train, 1 also in validation</td>" in section
    assert "<th>data.redact_pii replaced</th><td>1 EMAIL, 1 PHONE in train</td>" in section
    assert "data check: train 29, validation 4, test 3 records" in section
