"""Generation metrics against hand-computed values."""
from __future__ import annotations

import pytest

from tunelab.evaluate.text_metrics import (exact_match, exact_match_normalised, generation_metrics, lcs_length,
                                           rouge_l, token_f1)


def test_exact_match_is_exact_and_the_normalised_one_says_so():
    # the same answers differing only in case / punctuation: not exact, equal once normalised
    assert exact_match("The capital is Paris.", "capital is paris") == 0.0
    assert exact_match("paris", "Paris") == 0.0 and exact_match(" Paris\n", "Paris") == 1.0
    assert exact_match_normalised("The capital is Paris.", "capital is paris") == 1.0
    assert exact_match("Paris", "Lyon") == 0.0 and exact_match_normalised("Paris", "Lyon") == 0.0


def test_answers_wrong_only_in_case_are_not_an_exact_match():
    m = generation_metrics(["paris", "berlin", "rome"], ["Paris", "Berlin", "Rome"])
    assert m["exact_match"] == 0.0 and m["exact_match_normalised"] == 1.0 and m["token_f1"] == 1.0


def test_token_f1():
    # pred {paris, is, capital}, ref {capital, of, france, is, paris}: 3 common; P 3/3, R 3/5
    assert token_f1("Paris is capital", "capital of France is Paris") == pytest.approx(2 * 1 * 0.6 / 1.6)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_rouge_l_uses_longest_common_subsequence():
    assert lcs_length("a b c d".split(), "a c x d".split()) == 3
    # pred 4 tokens, ref 4 tokens, LCS 3 -> P = R = 0.75
    assert rouge_l("w b c d", "w c x d") == pytest.approx(0.75)


def test_generation_metrics_averages_and_every_score_is_on_a_0_1_scale():
    import sacrebleu

    preds, refs = ["Paris.", "blue"], ["Paris", "red"]
    m = generation_metrics(preds, refs)
    # "Paris." vs "Paris" is exact only after normalisation (definition changed: exact is exact now)
    assert m["exact_match"] == 0.0 and m["exact_match_normalised"] == 0.5
    assert m["token_f1"] == 0.5 and m["rouge_l"] == 0.5 and m["generated"] == 2
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score / 100)
    assert 0 < m["chrf"] < 1
    assert all(0.0 <= v <= 1.0 for k, v in m.items() if k != "generated")
    assert generation_metrics(["same text"], ["same text"])["chrf"] == pytest.approx(1.0)
    assert generation_metrics([], []) == {}


def test_metrics_line_and_report_samples_name_the_definitions():
    from tunelab.tasks.causal_lm import metrics_line, samples_table

    m = {"loss": 1.0, "perplexity": 2.72, **generation_metrics(["paris"], ["Paris"]), "prompts_cut": 1, "n": 1}
    line = metrics_line(m)
    assert "exact_match 0.000" in line and "exact_match_normalised 1.000" in line
    assert "token_f1 (normalised) 1.000" in line and "1 prompts cut" in line
    assert "chrf 0." in line  # 0-1, not 0-100
    table = samples_table([{"prompt": "Capital of France?", "reference": "Paris", "generated": "paris"}])
    assert "<th>exact match</th><th>normalised match</th>" in table
    assert "<td style='white-space:pre-wrap;vertical-align:top'>no</td><td style='white-space:pre-wrap;" \
           "vertical-align:top'>yes</td>" in table
