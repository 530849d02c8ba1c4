"""data.augment.back_translation through tiny seq2seq runs: one copy per record equal to what the two runs'
own predict gives by hand (a sentence / line at a time), copies that come back empty or unchanged not added,
and runs that cannot translate refused with one line before any record is touched."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "seq2seq"))  # the tiny T5 of the seq2seq tests

from tunelab.config import config_from_dict  # noqa: E402
from tunelab.data.augment import AUGMENTED, augment_records, back_translation_problems  # noqa: E402
from tunelab.data.prepare import DataView  # noqa: E402
from tunelab.errors import ConfigError  # noqa: E402

VIEW = DataView(texts=lambda r: [r["text"]], augment=lambda r, fn: {**r, "text": fn(r["text"])})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, helpers) -> tuple[str, str]:
    """Two tiny T5 runs (2 steps each on reverse-the-words pairs, different seeds): what they output is
    noise, but the noise of a finished run's predict, which is all back-translation relies on."""
    from seq2seq_tiny import reverse_pairs, write_tiny_t5

    root = tmp_path_factory.mktemp("bt")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in reverse_pairs(24)), encoding="utf-8")
    model = write_tiny_t5(root / "t5")
    runs = []
    for seed in (0, 1):
        cfg = {"task": "seq2seq", "model": {"name": str(model), "max_length": 16},
               "data": {"train": str(pairs), "val_fraction": 0.0, "test_fraction": 0.0},
               "train": {"max_steps": 2, "batch_size": 8, "lr": 3e-2, "warmup_steps": 0, "seed": seed,
                         "device": "cpu", "precision": "fp32", "early_stopping": {"patience": None}},
               "generate": {"max_new_tokens": 6, "samples_in_eval": 0}, "output_dir": str(root / f"run{seed}")}
        runs.append(str(helpers.train_quietly(config_from_dict(cfg))))
    return runs[0], runs[1]


def by_hand(runs: tuple[str, str], texts: list[str]) -> list[str]:
    """Each text through the first run's predict, then the second's: the round trip done by hand."""
    from tunelab.runs import load_run

    for ref in runs:
        run = load_run(ref)
        records = [{run.cfg.data.source_field: t} for t in texts]
        texts = [r["generated"] for r in run.task.predict(run, records, ref, lambda _: None)]
    return texts


def augment(records, runs, **augment):
    cfg = config_from_dict({"task": "classification", "data": {"train": "train.jsonl",
                                                               "augment": {"back_translation": list(runs),
                                                                           **augment}}})
    lines: list[str] = []
    return augment_records(records, VIEW, cfg, lines.append), lines


def test_one_round_trip_copy_per_record_equal_to_the_runs_predict_by_hand(two_runs):
    records = [{"id": i, "text": t, "label": "xy"[i % 2]} for i, t in enumerate(
        ["red cat", "blue dog sun", "green moon tree fish", "bird star", "rock red blue", "cat dog cat"])]
    added, lines = augment(records, two_runs)
    expected = [t.strip() for t in by_hand(two_runs, [r["text"] for r in records])]
    kept = [(r, e) for r, e in zip(records, expected) if e and e != r["text"]]
    assert kept, "the tiny runs gave nothing to add: the test would check nothing"
    assert added == [{**r, "text": e, AUGMENTED: "back-translation"} for r, e in kept]
    assert lines[-1].startswith(f"data.augment.back_translation: added {len(kept)} round-trip copies of 6 "
                                f"training records through {two_runs[0]} -> {two_runs[1]}")


def test_texts_go_a_sentence_or_line_at_a_time_and_keep_their_breaks(two_runs):
    text = "red cat blue\n\ndog sun moon. tree fish"
    added, _ = augment([{"text": text, "label": "x"}], two_runs)
    first, second, third = (t.strip() for t in by_hand(two_runs, ["red cat blue", "dog sun moon.", "tree fish"]))
    assert added[0]["text"] == f"{first}\n\n{second} {third}"


def test_edited_and_back_translated_copies_come_together(two_runs):
    records = [{"text": "Fans praised the team after a quick and brilliant victory.", "label": "sport"}]
    added, lines = augment(records, two_runs, copies=2, edits=["synonym"])
    assert [r[AUGMENTED] for r in added] == ["synonym", "synonym", "back-translation"]
    assert lines[0].startswith("data.augment: added 2 edited copies") and \
        lines[-1].startswith("data.augment.back_translation: added 1 round-trip copies")


def test_runs_that_cannot_translate_are_refused_before_anything_is_touched(two_runs, cls_run_dir, tmp_path):
    assert back_translation_problems(list(two_runs)) == []
    problems = back_translation_problems([two_runs[0], str(cls_run_dir), str(tmp_path)])
    assert problems == [
        f"data.augment.back_translation: {cls_run_dir} is a classification run; back-translation needs seq2seq "
        "runs (e.g. one trained en->de and one de->en)",
        f"data.augment.back_translation: {tmp_path} is not a finished tunelab run (needs config.yaml and model/); "
        "pass the output_dir of `tunelab train`"]
    with pytest.raises(ConfigError, match="is a classification run; back-translation needs seq2seq runs"):
        augment([{"text": "red cat", "label": "x"}], [two_runs[0], str(cls_run_dir)], copies=2)


def test_copies_that_come_back_empty_or_unchanged_are_counted_not_added(monkeypatch):
    import tunelab.data.augment as A

    # a stand-in for the runs: the sentence "x." comes back empty, "same" comes back as it was
    monkeypatch.setattr(A, "back_translation_problems", lambda runs: [])
    monkeypatch.setattr(A, "translate_all", lambda texts, ref, log: ["" if t == "x." else t if t == "same" else
                                                                     t.upper() for t in texts])
    records = [{"text": "x. keep", "label": "a"}, {"text": "same", "label": "b"}, {"text": "ok", "label": "c"}]
    added, lines = augment(records, ("runs/en-de", "runs/de-en"))
    assert added == [{"text": "OK", "label": "c", AUGMENTED: "back-translation"}]
    assert lines == ["data.augment.back_translation: added 1 round-trip copies of 3 training records through "
                     "runs/en-de -> runs/de-en; not added: 1 with a sentence that came back empty, 1 that came "
                     "back unchanged"]
