"""Question-answering metrics: exact match and F1 with the SQuAD answer normalisation, and the "no answer"
threshold chosen on validation.

Written here rather than taken from `evaluate` (its `load` fetches scripts and fails offline). The
normalisation is the one of the official SQuAD v1.1 / v2.0 evaluation scripts: lower case, drop
punctuation, drop the articles a / an / the, squeeze white space. A question with no answer has the gold
answer "" (an empty list of answers means the same): the empty prediction scores 1 there, anything else 0.
Scores are in [0, 1] (the official scripts print them x 100).
"""
from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds: list[str]) -> list[str]:
    """The gold answers that normalise to something, or [""] for a question with none (as the official v2.0
    script does: a gold answer such as "The" or "." counts as no answer)."""
    return [g for g in golds if normalize_answer(g)] or [""]


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _f1_one(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:  # a no-answer on either side: right only when both are empty
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: list[str]) -> float:
    """Token-overlap F1 of the normalised prediction against the best-matching gold answer."""
    return max(_f1_one(prediction, g) for g in _golds(golds))


def qa_metrics(predictions: list[str], golds: list[list[str]]) -> dict:
    """exact_match and f1 (means over questions), also split into has_answer_* and no_answer_* (None where
    that split has no questions), with the counts n, has_answer_n, no_answer_n."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    em = [exact_match(p, g) for p, g in zip(predictions, golds)]
    f1 = [f1_score(p, g) for p, g in zip(predictions, golds)]
    has = [_golds(g) != [""] for g in golds]
    out: dict = {"n": len(golds)}
    for prefix, keep in (("", lambda h: True), ("has_answer_", bool), ("no_answer_", lambda h: not h)):
        rows = [i for i, h in enumerate(has) if keep(h)]
        out[f"{prefix}n"] = len(rows) if prefix else out["n"]
        out[f"{prefix}exact_match"] = sum(em[i] for i in rows) / len(rows) if rows else None
        out[f"{prefix}f1"] = sum(f1[i] for i in rows) / len(rows) if rows else None
    return out


def choose_no_answer_threshold(margins: list[float], span_f1: list[float], has_answer: list[bool]
                               ) -> tuple[float, float]:
    """The threshold t that maximises mean F1 when "no answer" is predicted for margin > t.

    margins[i]: the no-answer score minus the best span's score for question i; span_f1[i]: the F1 of that
    best span; has_answer[i]: whether question i has a gold answer (no answer scores 1 exactly when it has
    none). Returns (t, the mean F1 at t). Ties keep the highest t (answer more often); with no questions,
    (0.0, 0.0).
    """
    n = len(margins)
    if n == 0:
        return 0.0, 0.0
    # start with every question answered (t above every margin), then turn them into no-answers from the
    # largest margin down; each step changes one question's score
    order = sorted(range(n), key=lambda i: -margins[i])
    score = sum(span_f1)
    best_t, best = max(margins) + 1.0, score
    for k, i in enumerate(order):
        score += float(not has_answer[i]) - span_f1[i]
        if k + 1 < n and margins[order[k + 1]] == margins[i]:
            continue  # equal margins flip together: score the threshold once all of them have
        if score > best + 1e-12:  # halfway to the next smaller margin: exactly these questions flip
            below = margins[order[k + 1]] if k + 1 < n else margins[i] - 2.0
            best_t, best = (margins[i] + below) / 2, score
    return best_t, best / n
