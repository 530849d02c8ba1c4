"""data.augment through a tiny training run: train grows by the copies (3x with copies 2), validation and test
are exactly the records and token ids of the same run without augmentation, and the added count is in the
log, eval.json and report.html."""
from __future__ import annotations

import json

import pytest

# swap only, 5 swaps of 6 words (rate 0.9) per copy: every copy differs from its record and from the other copy
AUGMENT = {"data.augment.copies": 2, "data.augment.edits": ["swap"], "data.augment.rate": 0.9}


def train_keeping_job(helpers, cfg):
    """Train quietly; (RUN_DIR, the job it trained, its log lines)."""
    from tunelab.run import make_job

    kept, lines = {}, []

    def keep(c, device, log):
        kept["job"] = make_job(c, device, log)
        return kept["job"]

    run_dir = helpers.train_quietly(cfg, log=lines.append, job_factory=keep)
    return run_dir, kept["job"], lines


@pytest.fixture(scope="module")
def plain_and_augmented(tmp_path_factory, tiny_bert, data_dir, helpers):
    out = tmp_path_factory.mktemp("augment-run")
    runs = {}
    for name, overrides in (("plain", {}), ("augmented", AUGMENT)):
        cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", out / name, overrides)
        runs[name] = train_keeping_job(helpers, cfg)
    return runs


def test_train_grows_3x_and_validation_and_test_stay_those_of_the_plain_run(plain_and_augmented):
    (_, plain, _), (_, aug, _) = plain_and_augmented["plain"], plain_and_augmented["augmented"]
    n = len(plain.examples["train"])
    assert n == 63 and len(aug.examples["train"]) == 3 * n
    assert aug.examples["train"].ids[:n] == plain.examples["train"].ids  # the originals first, as they were
    assert aug.examples["train"].labels == plain.examples["train"].labels + \
        [y for y in plain.examples["train"].labels for _ in range(2)]  # each record's 2 copies keep its label
    for split in ("validation", "test"):
        assert len(plain.examples[split]) > 0
        assert aug.examples[split].ids == plain.examples[split].ids
        assert aug.examples[split].labels == plain.examples[split].labels


def test_the_added_count_is_in_the_log_eval_json_and_report(plain_and_augmented):
    run_dir, _, lines = plain_and_augmented["augmented"]
    assert "data.augment: added 126 edited copies of 63 training records (swap 126, seed 0, rate 0.9)" in lines
    assert json.loads((run_dir / "eval.json").read_text())["data"]["augmented"] == 126
    assert "<tr><th>data.augment added to train</th><td>126 records</td></tr>" in (run_dir / "report.html").read_text()
    plain_dir, _, plain_lines = plain_and_augmented["plain"]
    assert not [line for line in plain_lines if line.startswith("data.augment")]
    assert "augmented" not in json.loads((plain_dir / "eval.json").read_text())["data"]
