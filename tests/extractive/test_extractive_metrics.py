"""SQuAD EM / F1 and the no-answer threshold (tunelab.evaluate.qa_metrics) on cases worked out by hand."""
from __future__ import annotations

import pytest

from tunelab.evaluate.qa_metrics import (choose_no_answer_threshold, exact_match, f1_score, normalize_answer,
                                         qa_metrics)


def test_normalisation_drops_case_punctuation_articles_and_spaces_only():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert normalize_answer("The theatre") == "theatre"  # an article inside a word stays
    assert normalize_answer("“quoted”") == "“quoted”"  # ASCII punctuation only, as the official script


@pytest.mark.parametrize("prediction, golds, em, f1", [
    ("the cat sat", ["a cat sat down"], 0.0, 0.8),  # P 2/2, R 2/3
    ("Paris France", ["Paris", "France Paris"], 0.0, 1.0),  # best over the golds; order does not count
    ("cat cat cat", ["cat"], 0.0, 0.5),  # repeated tokens count once per gold occurrence: P 1/3, R 1
    ("The Beatles", ["beatles"], 1.0, 1.0),
    ("", [], 1.0, 1.0),  # no answer, rightly
    ("x", [], 0.0, 0.0),
    ("", ["x"], 0.0, 0.0),
    ("the.", [], 1.0, 1.0),  # normalises to nothing: a no-answer, as in the official script
])
def test_exact_match_and_f1(prediction, golds, em, f1):
    assert exact_match(prediction, golds) == em
    assert f1_score(prediction, golds) == pytest.approx(f1)


def test_qa_metrics_split_into_has_and_no_answer():
    m = qa_metrics(["Paris", "", "x", "Rome Italy"], [["Paris"], [], [], ["Rome"]])
    assert m["n"] == 4 and m["exact_match"] == 0.5 and m["f1"] == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)
    assert (m["has_answer_n"], m["has_answer_exact_match"], m["has_answer_f1"]) == (2, 0.5, pytest.approx(5 / 6))
    assert (m["no_answer_n"], m["no_answer_exact_match"]) == (2, 0.5)
    only = qa_metrics(["x"], [["x"]])
    assert only["no_answer_n"] == 0 and only["no_answer_f1"] is None


def test_equal_margins_flip_together():
    # questions 0 and 1 share a margin: 0 is answered right, 1 has no answer; only both or neither can flip
    t, f1 = choose_no_answer_threshold([1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [True, False, False])
    assert f1 == pytest.approx(2 / 3) and t == pytest.approx(-1.0)  # below the last margin by 1


def test_all_answerable_keeps_every_answer():
    t, f1 = choose_no_answer_threshold([0.5, -2.0], [1.0, 0.5], [True, True])
    assert t == 1.5 and f1 == 0.75


def test_the_threshold_sits_halfway_so_a_close_margin_does_not_flip_with_it():
    # margins 2.0 and 2.0 - 1e-7: only the first (no gold answer) should turn into "no answer"
    t, f1 = choose_no_answer_threshold([2.0, 2.0 - 1e-7], [0.0, 1.0], [False, True])
    assert f1 == 1.0 and 2.0 - 1e-7 < t < 2.0


def test_gold_answers_that_normalise_to_nothing_count_as_no_answer():
    # as the official v2.0 script: "The" and "." are dropped from the golds, leaving none
    assert exact_match("", ["The", "."]) == 1.0 and exact_match("Paris", ["The"]) == 0.0
    assert exact_match("Paris", ["the", "Paris"]) == 1.0
    m = qa_metrics(["", "Rome"], [["The"], ["Rome"]])
    assert (m["no_answer_n"], m["has_answer_n"], m["exact_match"]) == (1, 1, 1.0)
