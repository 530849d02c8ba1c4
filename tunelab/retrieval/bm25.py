"""The BM25 baseline the retrieval task is measured against: lexical ranking with rank_bm25's Okapi BM25.

The tokeniser is deliberately simple, so the baseline is easy to reproduce: lower-case the text and keep
its runs of letters and digits (`\\w+`, Unicode-aware), with no stemming and no stop-word list (BM25's idf
already weighs common words down). "Time-Warner's" -> ["time", "warner", "s"].
BM25 reads passages whole: it has no length limit, unlike the encoder, which sees the first
model.max_length tokens of each passage.
"""
from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)

K1, B = 1.5, 0.75  # rank_bm25's defaults (the usual Okapi values)


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters and digits."""
    return _WORD.findall(text.lower())


class BM25Index:
    """Okapi BM25 over a list of passages; `scores(queries)` -> (Q, P) scores, higher is better."""

    def __init__(self, passages: list[str], k1: float = K1, b: float = B):
        from rank_bm25 import BM25Okapi

        if not passages:
            raise ValueError("BM25 needs at least one passage")
        # rank_bm25 divides by the mean passage length: a corpus of passages without words gets one dummy token
        tokens = [tokenize(p) for p in passages]
        if not any(tokens):
            tokens[0] = ["\0"]
        self.bm25 = BM25Okapi(tokens, k1=k1, b=b)
        self.size = len(passages)

    def scores(self, queries: list[str]) -> np.ndarray:
        """(Q, P) float64 BM25 scores of every passage for each query."""
        out = np.zeros((len(queries), self.size))
        for i, query in enumerate(queries):
            out[i] = self.bm25.get_scores(tokenize(query))
        return out


def bm25_scores(queries: list[str], passages: list[str]) -> np.ndarray:
    """(Q, P) BM25 scores of `passages` for each of `queries`."""
    return BM25Index(passages).scores(queries)
