"""Generation metrics against hand-computed values."""
from __future__ import annotations

import pytest

from tunelab.evaluate.text_metrics import exact_match, generation_metrics, lcs_length, rouge_l, token_f1


def test_exact_match_normalises_case_punctuation_articles():
    assert exact_match("The capital is Paris.", "capital is paris") == 1.0
    assert exact_match("Paris", "Lyon") == 0.0


def test_token_f1():
    # pred {paris, is, capital}, ref {capital, of, france, is, paris}: 3 common; P 3/3, R 3/5
    assert token_f1("Paris is capital", "capital of France is Paris") == pytest.approx(2 * 1 * 0.6 / 1.6)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_rouge_l_uses_longest_common_subsequence():
    assert lcs_length("a b c d".split(), "a c x d".split()) == 3
    # pred 4 tokens, ref 4 tokens, LCS 3 -> P = R = 0.75
    assert rouge_l("w b c d", "w c x d") == pytest.approx(0.75)


def test_generation_metrics_averages_and_chrf():
    m = generation_metrics(["Paris.", "blue"], ["Paris", "red"])
    assert m["exact_match"] == 0.5 and m["token_f1"] == 0.5 and m["rouge_l"] == 0.5 and m["generated"] == 2
    assert 0 < m["chrf"] < 100
    assert generation_metrics(["same text"], ["same text"])["chrf"] == pytest.approx(100.0)
    assert generation_metrics([], []) == {}
