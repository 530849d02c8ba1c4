"""Deletion curves and AOPC (tunelab.explain.faithfulness) on a tiny BERT trained so that one keyword sets the
label: curves start at the unperturbed probability, deletion removes tokens (never special ones), IG beats
random deletion, and an explanation that ranks the keyword last scores lower than one that ranks it first
(the measure can fail a method)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.explain import Explanation, Span
from tunelab.explain.attribute import encode, explain_text, target_probability
from tunelab.explain.faithfulness import (FRACTIONS, aopc, deleted_rows, deletion_counts, deletion_curve, evaluate,
                                          position_scores, random_curve, ranked)

KEYWORD = "goal"  # a word of the conftest tiny BERT's vocabulary
FILLER = ["the", "a", "today", "news", "report", "about", "some", "new", "very", "this"]
TEXTS = ["the goal today news report about",  # the keyword in three places
         "goal some new very this a",
         "today news a very this goal"]


@pytest.fixture(scope="module")
def run(tiny_bert, tmp_path_factory, helpers):
    """The tiny BERT trained (100 steps, seed 0) to say "yes" exactly when the keyword is there (the lowest
    validation loss kept: the first checkpoint with the best F1 is still unsure)."""
    from tunelab.runs import load_run

    folder = tmp_path_factory.mktemp("faithful")
    data = helpers.write_jsonl(folder / "train.jsonl", helpers.keyword_records(120, 0, KEYWORD, FILLER, ("yes", "no")))
    cfg = helpers.tiny_config(tiny_bert, data, folder / "run", {
        "train.max_steps": 100, "train.lr": 5e-3, "train.precision": "fp32", "train.eval_every": None,
        "train.early_stopping.metric": "loss"})
    return load_run(helpers.train_quietly(cfg))


def keyword_scores(enc, first: bool) -> list[float]:
    """Hand-made scores: the keyword ranked first (highest) or last (lowest) of the text's tokens."""
    scores = [0.0 if s else float(i) for i, s in enumerate(enc.special)]  # later tokens rank higher
    where = enc.tokens.index(KEYWORD)
    scores[where] = 100.0 if first else -100.0
    return scores


def test_counts_ranking_and_aopc_by_hand():
    assert deletion_counts(6, FRACTIONS) == [0, 1, 2, 2, 3, 3]  # ceil(f * 6): any fraction above 0 deletes one
    assert deletion_counts(1, FRACTIONS) == [0, 1, 1, 1, 1, 1]
    assert deletion_counts(10, FRACTIONS) == [0, 1, 2, 3, 4, 5]
    assert ranked([9.0, 0.5, 0.1, 0.5, 9.0], [1, 2, 3]) == [1, 3, 2]  # special 0 and 4 left out; ties by place
    assert aopc([0.9, 0.5, 0.3]) == pytest.approx((0.0 + 0.4 + 0.6) / 3)
    assert aopc([0.4, 0.6]) == pytest.approx(-0.1)  # deleting can raise the probability: AOPC goes negative


def test_deletion_removes_tokens_and_never_special_ones(run):
    enc = encode(run, TEXTS[0])
    assert enc.tokens == ["[CLS]", "the", "goal", "today", "news", "report", "about", "[SEP]"]
    order = ranked(keyword_scores(enc, first=True), [i for i, s in enumerate(enc.special) if not s])
    rows = deleted_rows(enc.ids, order, deletion_counts(6, FRACTIONS))
    assert [len(r) for r in rows] == [8, 7, 6, 6, 5, 5]  # shorter rows: removed, not replaced by [PAD]/[MASK]
    cls, sep = enc.ids[0], enc.ids[-1]
    assert all(r[0] == cls and r[-1] == sep for r in rows)
    assert run.tokenizer.convert_ids_to_tokens(rows[1]) == ["[CLS]", "the", "today", "news", "report", "about",
                                                           "[SEP]"]  # the keyword went first


def test_curves_start_at_the_unperturbed_probability(run):
    expl = explain_text(run, TEXTS[0], "ig", steps=20)
    curve = deletion_curve(run, expl)  # an Explanation: re-encoded, its own token scores and target
    reference = random_curve(run, encode(run, TEXTS[0]), expl.target)
    assert len(curve) == len(reference) == len(FRACTIONS)
    assert curve[0] == pytest.approx(expl.probability, abs=1e-6)
    assert reference[0] == pytest.approx(expl.probability, abs=1e-6)
    assert expl.target == "yes" and expl.probability > 0.9  # the model learned the keyword
    assert curve[1] < 0.5 < reference[1]  # IG's first deletion is the keyword; a random one rarely is


def test_position_scores_put_an_explanation_back_in_place(run):
    enc = encode(run, TEXTS[1])  # goal some new very this a
    spans = [Span(w, 0, 0, s) for w, s in zip(TEXTS[1].split(), [2.0, 0.5, -1.0, 0.0, 0.25, 3.0])]
    expl = Explanation(TEXTS[1], "hand", "yes", "yes", 0.9, tokens=spans)
    assert position_scores(enc, expl) == [0.0, 2.0, 0.5, -1.0, 0.0, 0.25, 3.0, 0.0]
    with pytest.raises(TunelabError, match="scores 2 tokens where the text has 6"):
        position_scores(enc, Explanation(TEXTS[1], "hand", "yes", "yes", 0.9, tokens=spans[:2]))


def test_tokens_that_share_their_offsets_keep_their_own_scores():
    """A byte-level BPE splits one emoji into several tokens with the same character span: each keeps its own
    score at its own position (matching by offsets would give them all one)."""
    enc = SimpleNamespace(ids=[0, 11, 12, 13, 1], special=[True, False, False, False, True])
    tokens = [Span("\U0001f600", 0, 1, 0.5), Span("\U0001f600", 0, 1, -0.25), Span("ok", 2, 4, 1.0)]
    expl = Explanation("\U0001f600 ok", "hand", "a", "a", 0.5, tokens=tokens)
    assert position_scores(enc, expl) == [0.0, 0.5, -0.25, 1.0, 0.0]


def test_the_measure_can_fail_a_method(run):
    """Scores that put the keyword last must give a lower AOPC than scores that put it first."""
    first, last = [], []
    for text in TEXTS:
        enc = encode(run, text)
        first.append(aopc(deletion_curve(run, enc, keyword_scores(enc, first=True), "yes")))
        last.append(aopc(deletion_curve(run, enc, keyword_scores(enc, first=False), "yes")))
    assert min(first) > 0.5 and max(last) < 0.01, (first, last)  # the keyword's deletion is the whole drop
    assert sum(first) / 3 == pytest.approx(0.7990, abs=2e-3)
    assert sum(last) / 3 == pytest.approx(0.0, abs=2e-3)


def test_random_reference_is_seeded_and_batched_like_single_rows(run):
    enc = encode(run, TEXTS[2])
    a, b = random_curve(run, enc, "yes", seed=3), random_curve(run, enc, "yes", seed=3)
    assert a == b
    assert a != random_curve(run, enc, "yes", seed=4)
    one_by_one = [target_probability(run, [row], "yes")[0] for row in deleted_rows(enc.ids, [1, 2, 3], [0, 1, 2])]
    together = target_probability(run, deleted_rows(enc.ids, [1, 2, 3], [0, 1, 2]), "yes")
    assert together == pytest.approx(one_by_one, abs=1e-6)  # rows of different lengths padded and masked


def test_ig_is_more_faithful_than_random_deletion(run):
    torch.manual_seed(0)
    rows = evaluate(run, TEXTS, ["ig", "occlusion"], settings={"steps": 20}, log=lambda _: None)
    by = {r["method"]: r for r in rows}
    for method in ("ig", "occlusion"):
        r = by[method]
        assert r["n"] == 3 and r["seconds_per_explanation"] > 0 and len(r["curve"]) == len(FRACTIONS)
        assert r["difference"] == pytest.approx(r["aopc"] - r["random_aopc"], abs=1e-5)
        assert r["difference"] > 0.2, r
    assert by["ig"]["random_aopc"] == by["occlusion"]["random_aopc"]  # one reference for every method
    assert by["ig"]["aopc"] == pytest.approx(0.7990, abs=2e-3)  # = the keyword-first AOPC: IG ranks it first
    assert by["ig"]["random_aopc"] == pytest.approx(0.3196, abs=2e-3)
