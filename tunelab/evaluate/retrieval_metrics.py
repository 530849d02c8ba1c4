"""Retrieval metrics: recall@k and MRR@k from where each query's relevant passages were ranked.

Pure functions of rankings and scores (no model, no files). A query has a set of relevant passage ids
(usually one: the passage it was paired with). Its ranks are the 1-based places of its relevant passages in
the ranked list; a relevant passage that is not in the list (a top-k list that missed it, or a corpus without
it) has no rank and counts as not found.

- recall@k: the share of the query's relevant passages in the top k, averaged over queries; in [0, 1]. With
  one relevant passage per query it is the share of queries whose passage is in the top k (the "top-k
  accuracy" of dense-retrieval papers). k larger than the list: the whole list counts.
- MRR@k: 1 / (place of the first relevant passage), 0 when none is in the top k, averaged; in [0, 1].

Ties in scores (`ranks_from_scores`) are counted against the query: a relevant passage is placed after every
passage scoring the same, so a model that gives all passages one score finds nothing rather than whatever
comes first in the corpus order.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

KS = (1, 5, 10)
MRR_K = 10
METRIC_KEYS = ("recall@1", "recall@5", "recall@10", "mrr@10")


def ranks_from_rankings(rankings: Sequence[Sequence[Hashable]], relevant: Sequence[set]) -> list[list[int]]:
    """For each query, the sorted 1-based places of its relevant ids in its ranked list (missing ones left
    out). A ranked list naming one id twice counts its first place."""
    out = []
    for ranked, rel in zip(rankings, relevant, strict=True):
        first: dict[Hashable, int] = {}
        for place, pid in enumerate(ranked, start=1):
            first.setdefault(pid, place)
        out.append(sorted(first[p] for p in rel if p in first))
    return out


def ranks_from_scores(scores: np.ndarray, relevant: Sequence[set[int]]) -> list[list[int]]:
    """Ranks of relevant passages given a (Q, P) score matrix (higher is better) and, per query, the set of
    relevant column indices. Ties count against the query: place = 1 + passages scoring higher + the other
    passages scoring the same (relevant or not)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = []
    for row, rel in zip(scores, relevant, strict=True):
        places = []
        for p in rel:
            higher = int((row > row[p]).sum())
            tied = int((row == row[p]).sum()) - 1
            places.append(1 + higher + tied)
        out.append(sorted(places))
    return out


def recall_at_k(ranks: Sequence[Sequence[int]], n_relevant: Sequence[int], k: int) -> float:
    """Mean over queries of (relevant passages placed in the top k) / (relevant passages of the query)."""
    if not ranks:
        return 0.0
    return float(np.mean([sum(r <= k for r in rs) / max(1, n) for rs, n in zip(ranks, n_relevant, strict=True)]))


def mrr_at_k(ranks: Sequence[Sequence[int]], k: int = MRR_K) -> float:
    """Mean over queries of 1 / (place of the first relevant passage), 0 when it is not in the top k."""
    if not ranks:
        return 0.0
    return float(np.mean([1.0 / rs[0] if rs and rs[0] <= k else 0.0 for rs in ranks]))


def retrieval_metrics(ranks: Sequence[Sequence[int]], n_relevant: Sequence[int]) -> dict:
    """recall@1, recall@5, recall@10, mrr@10 and n (queries) from the ranks of each query's relevant passages."""
    metrics = {f"recall@{k}": recall_at_k(ranks, n_relevant, k) for k in KS}
    metrics[f"mrr@{MRR_K}"] = mrr_at_k(ranks, MRR_K)
    metrics["n"] = len(ranks)
    return metrics
