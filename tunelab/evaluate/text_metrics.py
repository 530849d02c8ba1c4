"""Generation metrics against reference answers: exact match, token F1, ROUGE-L, chrF.

Exact match and token F1 follow the SQuAD evaluation script (lower-case, drop punctuation and English
articles, split on whitespace). ROUGE-L is the F-measure of the longest common subsequence of those tokens,
a dozen lines here rather than a dependency (rouge-score is not installed). chrF comes from sacrebleu.
EM, F1 and ROUGE-L are in [0, 1] (means over examples); chrF is sacrebleu's corpus score in [0, 100].
"""
from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_tokens(text: str) -> list[str]:
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_tokens(prediction) == normalise_tokens(reference))


def token_f1(prediction: str, reference: str) -> float:
    p, r = normalise_tokens(prediction), normalise_tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a) * len(b)) time, O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    p, r = normalise_tokens(prediction), normalise_tokens(reference)
    if not p or not r:
        return float(p == r)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(predictions: list[str], references: list[str]) -> dict:
    """Mean exact_match / token_f1 / rouge_l and corpus chrf over the pairs, plus their count."""
    import sacrebleu

    n = len(predictions)
    if n == 0:
        return {}
    out = {"exact_match": sum(map(exact_match, predictions, references)) / n,
           "token_f1": sum(map(token_f1, predictions, references)) / n,
           "rouge_l": sum(map(rouge_l, predictions, references)) / n,
           "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score),
           "generated": n}
    return out
