"""recall@k / MRR@k against rankings worked out by hand (ties, k beyond the list, a missing positive), the BM25
baseline against the Okapi formula, and the in-batch loss with duplicate passages masked, by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunelab.evaluate.retrieval_metrics import (mrr_at_k, ranks_from_rankings, ranks_from_scores, recall_at_k,
                                                retrieval_metrics)


def test_metrics_from_hand_worked_rankings():
    rankings = [["a", "b", "c"],  # its passage first
                ["b", "a"],  # second
                ["c"],  # one of its two passages first, the other (d) missing from the list
                ["x", "y"],  # its passage missing: a miss, still counted
                [str(i) for i in range(12)]]  # 11th: beyond MRR@10 and recall@10
    relevant = [{"a"}, {"a"}, {"c", "d"}, {"z"}, {"10"}]
    ranks = ranks_from_rankings(rankings, relevant)
    assert ranks == [[1], [2], [1], [], [11]]
    n_rel = [len(r) for r in relevant]
    assert recall_at_k(ranks, n_rel, 1) == pytest.approx((1 + 0 + 0.5 + 0 + 0) / 5)
    assert recall_at_k(ranks, n_rel, 5) == pytest.approx((1 + 1 + 0.5 + 0 + 0) / 5)
    assert recall_at_k(ranks, n_rel, 12) == pytest.approx((1 + 1 + 0.5 + 0 + 1) / 5)
    assert recall_at_k(ranks, n_rel, 50) == recall_at_k(ranks, n_rel, 12)  # k past every list: the whole list
    assert mrr_at_k(ranks, 10) == pytest.approx((1 + 1 / 2 + 1 + 0 + 0) / 5)
    assert mrr_at_k(ranks, 11) == pytest.approx((1 + 1 / 2 + 1 + 0 + 1 / 11) / 5)
    assert retrieval_metrics(ranks, n_rel) == {"recall@1": pytest.approx(0.3), "recall@5": pytest.approx(0.5),
                                               "recall@10": pytest.approx(0.5), "mrr@10": pytest.approx(0.5),
                                               "n": 5}
    assert ranks_from_rankings([["a", "a", "b"]], [{"b"}]) == [[3]]  # a repeated id keeps its first place
    assert retrieval_metrics([], []) == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "n": 0}


def test_ties_in_scores_count_against_the_query():
    scores = np.array([[0.5, 0.9, 0.5, 0.1],  # passage 0 ties with 2 and is beaten by 1: place 3
                       [0.1, 0.2, 0.7, 0.3],  # passage 2 clearly first
                       [1.0, 1.0, 1.0, 1.0]])  # every score equal: found last, not first
    ranks = ranks_from_scores(scores, [{0}, {2}, {0}])
    assert ranks == [[3], [1], [4]]
    assert retrieval_metrics(ranks, [1, 1, 1])["recall@1"] == pytest.approx(1 / 3)
    assert ranks_from_scores(np.array([[0.2, 0.9, 0.2]]), [{0, 2}]) == [[3, 3]]


def test_bm25_follows_the_okapi_formula_with_the_simple_tokeniser():
    from tunelab.retrieval.bm25 import bm25_scores, tokenize

    assert tokenize("Time-Warner's profit, 76% UP: Größe") == ["time", "warner", "s", "profit", "76", "up", "größe"]
    passages = ["the cat sat", "the dog sat down", "a bird", "cats and dogs"]
    scores = bm25_scores(["cat sat", "fish"], passages)
    docs = [tokenize(p) for p in passages]
    avgdl = sum(map(len, docs)) / len(docs)

    def idf(word):  # rank_bm25's Okapi idf; no idf here is negative, so its floor does not apply
        n = sum(word in d for d in docs)
        return math.log(len(docs) - n + 0.5) - math.log(n + 0.5)

    def score(query, doc, k1=1.5, b=0.75):
        return sum(idf(w) * doc.count(w) * (k1 + 1) / (doc.count(w) + k1 * (1 - b + b * len(doc) / avgdl))
                   for w in query if any(w in d for d in docs))

    assert scores[0] == pytest.approx([score(["cat", "sat"], d) for d in docs])
    assert scores[0].argmax() == 0 and scores[0][2] == 0 and scores[0][3] == 0  # "cats" is not "cat"
    assert scores[1].tolist() == [0, 0, 0, 0]  # no word in common: all tied (a miss under the tie rule)


def unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def hand_loss(q, cols, keep, temperature):
    """Sum over rows i of -s_ii + log sum_{j in keep[i]} exp(s_ij), s = q . cols / temperature."""
    s = (q @ cols.T / temperature).tolist()
    return sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in keep[i])) for i in range(len(keep)))


def test_in_batch_loss_masks_duplicate_passages_by_hand():
    from tunelab.tasks.retrieval import in_batch_loss

    q = unit([1.0, 0.2], [0.1, 1.0], [0.9, -0.4])
    # columns: the positives of rows 0, 1, 2 (row 2's is the same text as row 0's), then row 0's hard negative,
    # which is the same text as row 1's positive
    cols = unit([1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.3, 1.0])
    positive_group, passage_group = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0, 1])
    loss, n = in_batch_loss(q, cols, torch.tensor([0, 1, 2]), positive_group, passage_group, 0.5)
    keep = [[0, 1, 3],  # row 0: column 2 is its own passage again (masked); its hard negative counts
            [0, 1, 2],  # row 1: column 3 is its own passage's text (masked)
            [1, 2, 3]]  # row 2: column 0 is its own passage's text (masked)
    assert n == 3
    assert float(loss) == pytest.approx(hand_loss(q, cols, keep, 0.5), rel=1e-6)  # the loss is taken in float32
    assert float(loss) == pytest.approx(0.9591291, rel=1e-6)
    unmasked = hand_loss(q, cols, [[0, 1, 2, 3]] * 3, 0.5)
    assert float(loss) < unmasked  # the duplicates would have been pushed away as negatives


def test_rows_asking_the_same_query_do_not_push_each_others_passages_away():
    from tunelab.tasks.retrieval import in_batch_loss

    q = unit([1.0, 0.0], [1.0, 0.0], [0.0, 1.0])  # rows 0 and 1: one query text, two different passages
    cols = unit([1.0, 0.3], [1.0, -0.3], [0.2, 1.0])
    loss, _ = in_batch_loss(q, cols, torch.tensor([5, 5, 6]), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), 0.5)
    assert float(loss) == pytest.approx(hand_loss(q, cols, [[0, 2], [1, 2], [0, 1, 2]], 0.5), rel=1e-6)  # float32


def test_a_batch_holds_rows_groups_and_masks(tiny_bert):
    from transformers import AutoTokenizer

    from tunelab.tasks.retrieval import Pairs, PairSet

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    pairs = Pairs(["goal team", "bread", "goal team"], ["chip code robot", "web", "chip code robot"],
                  ["web", "chip code robot", "data"], "mem")
    data = PairSet(tok, pairs, max_length=16)
    b = data.batch([2, 1], pad_id=0)
    assert b["query_group"].tolist() == [0, 1] and b["passage_group"].tolist() == [0, 1]
    assert b["negative_group"].tolist() == [2, 0]  # "data" is new; "chip code robot" is row 2's positive
    assert b["passage_input_ids"].shape == (2, 5) and b["passage_attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert {k for k in b if k.endswith("attention_mask")} == {"query_attention_mask", "passage_attention_mask",
                                                              "negative_attention_mask"}
