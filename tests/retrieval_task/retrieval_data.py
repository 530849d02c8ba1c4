"""Synthetic retrieval pairs for the tiny BERT of tests/conftest.py: a passage is three words of one half of
the vocabulary, its query the same three ideas written with the other half (a fixed word-to-word code), so
query and passage share no word: BM25 finds nothing and only learning the code finds the passage."""
from __future__ import annotations

import random

# words of the tiny BERT's vocabulary (tests/conftest.py: KEYWORDS + FILLER + music, guitar)
QUERY_WORDS = ["bread", "cheese", "soup", "apple", "cook", "taste", "rice", "salad", "goal", "match", "team",
               "player", "score", "coach", "league", "win", "the", "a"]
PASSAGE_WORDS = ["computer", "software", "chip", "code", "robot", "data", "phone", "web", "today", "news",
                 "report", "about", "some", "new", "very", "this", "music", "guitar"]
CODE = dict(zip(PASSAGE_WORDS, QUERY_WORDS))  # passage word -> the query word that stands for it


def coded_pairs(n: int, seed: int = 0, words: int = 3) -> list[dict]:
    """n records {query, positive}: distinct passages of `words` passage words, queries in the code."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        chosen = tuple(rng.sample(PASSAGE_WORDS, words))
        if frozenset(chosen) in seen:
            continue
        seen.add(frozenset(chosen))
        query = [CODE[w] for w in chosen]
        rng.shuffle(query)
        out.append({"query": " ".join(query), "positive": " ".join(chosen)})
    return out
