"""Entity metrics: seqeval strict IOB2 against lenient, hand-worked micro and per-type scores, token accuracy and
the type confusion."""
from __future__ import annotations

import pytest

from tunelab.evaluate.ner_metrics import ner_metrics, type_confusion


def test_i_begun_entities_count_only_in_lenient_mode():
    from seqeval.metrics import f1_score

    gold = pred = [["I-PER", "I-PER", "O"]]
    assert f1_score(gold, pred) == 1.0  # seqeval's default (conlleval, lenient) reads one PER
    m = ner_metrics(gold, pred)  # strict IOB2: an entity must begin with B-
    assert (m["entities"], m["entity_f1"], m["entity_precision"], m["entity_recall"]) == (0, 0.0, 0.0, 0.0)
    assert m["token_accuracy"] == 1.0 and m["per_type"] == {}
    assert m["type_confusion"] == {"labels": ["none"], "matrix": [[0]]}
    repaired = [["B-PER", "I-PER", "O"]]
    assert ner_metrics(repaired, repaired)["entity_f1"] == 1.0


GOLD = [["B-PER", "I-PER", "O", "B-LOC", "O"],      # PER right; LOC predicted as ORG
        ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],  # ORG cut short; PER missed
        ["O", "O", "B-LOC", "O", "O"]]              # LOC right; a spurious MISC
PRED = [["B-PER", "I-PER", "O", "B-ORG", "O"],
        ["B-ORG", "I-ORG", "O", "O", "O"],
        ["B-MISC", "O", "B-LOC", "O", "O"]]


def test_hand_worked_micro_and_per_type_scores():
    m = ner_metrics(GOLD, PRED)
    # gold 5 entities, predicted 5, exactly right 2 (PER 0:2, LOC 2:3 of sentence 3)
    assert (m["n"], m["entities"]) == (3, 5)
    assert m["entity_precision"] == pytest.approx(2 / 5) and m["entity_recall"] == pytest.approx(2 / 5)
    assert m["entity_f1"] == pytest.approx(0.4)
    assert m["token_accuracy"] == pytest.approx(11 / 15)  # wrong: LOC->ORG, I-ORG->O, B-PER->O, O->B-MISC
    assert m["per_type"] == {
        "LOC": {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2},
        "MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "PER": {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2},
    }


def test_type_confusion_on_same_spans():
    c = type_confusion(GOLD, PRED)
    assert c["labels"] == ["LOC", "MISC", "ORG", "PER", "none"]
    assert c["matrix"] == [
        # LOC MISC ORG PER none   (columns: predicted)
        [1, 0, 1, 0, 0],   # gold LOC: one right, one read as ORG
        [0, 0, 0, 0, 0],   # gold MISC: none
        [0, 0, 0, 0, 1],   # gold ORG: its span (3 words) was not predicted exactly
        [0, 0, 0, 1, 1],   # gold PER: one right, one missed
        [0, 1, 1, 0, 0],   # spurious: the MISC, and the 2-word ORG off the gold span
    ]
    assert ner_metrics(GOLD, PRED)["type_confusion"] == c


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
        ner_metrics([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        ner_metrics([["O", "O"]], [["O"]])
