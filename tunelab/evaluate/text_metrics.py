"""Generation metrics against reference answers, every one a number in [0, 1].

- `exact_match`: the answer equals the reference exactly (surrounding whitespace aside): "paris" for
  "Paris" scores 0.
- `exact_match_normalised`, `token_f1`, `rouge_l`: computed on SQuAD-normalised tokens (lower-cased,
  punctuation and English articles dropped, split on whitespace), so case and punctuation do not count.
  ROUGE-L is the F-measure of the longest common subsequence of those tokens, a dozen lines here rather
  than a dependency (rouge-score is not installed).
- `chrf`: sacrebleu's corpus chrF (character n-gram F-score, case-sensitive), divided by 100 to sit on the
  same 0-1 scale as the others (sacrebleu itself reports 0-100).
All but chrF are means over the examples.

`translation_metrics` (seq2seq) reports what machine translation papers report: sacrebleu's corpus BLEU and
chrF on sacrebleu's own 0-100 scale (not divided: these numbers are compared with published ones), each with
its sacrebleu signature (tokenisation, smoothing, version) so a score can be reproduced, plus the mean
ROUGE-L above (0-1) for summarisation.
"""
from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lower-case, drop punctuation and articles, split on whitespace."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the strings are equal after stripping surrounding whitespace; case and punctuation count."""
    return float(prediction.strip() == reference.strip())


def exact_match_normalised(prediction: str, reference: str) -> float:
    """1.0 when the SQuAD-normalised tokens are equal ("The capital is Paris." == "capital is paris")."""
    return float(normalise_tokens(prediction) == normalise_tokens(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bag of SQuAD-normalised tokens shared by prediction and reference."""
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
    """ROUGE-L F-measure over SQuAD-normalised tokens."""
    p, r = normalise_tokens(prediction), normalise_tokens(reference)
    if not p or not r:
        return float(p == r)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(predictions: list[str], references: list[str]) -> dict:
    """Mean exact_match, exact_match_normalised, token_f1, rouge_l and corpus chrf (all 0-1), plus the count."""
    import sacrebleu

    n = len(predictions)
    if n == 0:
        return {}
    out = {"exact_match": sum(map(exact_match, predictions, references)) / n,
           "exact_match_normalised": sum(map(exact_match_normalised, predictions, references)) / n,
           "token_f1": sum(map(token_f1, predictions, references)) / n,
           "rouge_l": sum(map(rouge_l, predictions, references)) / n,
           "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score) / 100.0,
           "generated": n}
    return out


def translation_metrics(predictions: list[str], references: list[str]) -> dict:
    """Corpus `bleu` and `chrf` (sacrebleu defaults, 0-100), their `signatures`, mean `rouge_l` (0-1) and
    the count `generated`; {} for no predictions. One reference per prediction."""
    from sacrebleu.metrics import BLEU, CHRF

    if not predictions:
        return {}
    bleu, chrf = BLEU(), CHRF()
    return {"bleu": float(bleu.corpus_score(predictions, [references]).score),
            "chrf": float(chrf.corpus_score(predictions, [references]).score),
            "rouge_l": sum(map(rouge_l, predictions, references)) / len(predictions),
            "generated": len(predictions),
            "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}}
