"""Decoding word tag scores: argmax, the constrained Viterbi over valid IOB2 sequences (hand-worked numbers),
entities with character offsets or word indices, and the per-sentence loss sum the loop normalises."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunelab.tasks.token_classification import decode, entities_of, token_loss, transitions, viterbi

LABELS = ["O", "B-PER", "I-PER"]


def test_transitions_forbid_inside_tags_that_continue_nothing():
    first, allowed = transitions(["O", "B-LOC", "B-PER", "I-LOC", "I-PER"])
    assert first.tolist() == [True, True, True, False, False]
    # rows: from O, B-LOC, B-PER, I-LOC, I-PER; columns: to the same
    assert allowed.astype(int).tolist() == [[1, 1, 1, 0, 0],
                                            [1, 1, 1, 1, 0],
                                            [1, 1, 1, 0, 1],
                                            [1, 1, 1, 1, 0],
                                            [1, 1, 1, 0, 1]]


def test_constrained_decoding_turns_an_invalid_argmax_into_the_best_valid_sequence():
    # word probabilities over O, B-PER, I-PER
    probs = np.array([[0.45, 0.40, 0.15],
                      [0.05, 0.15, 0.80],
                      [0.90, 0.05, 0.05]])
    lp = np.log(probs)
    assert decode(lp, LABELS, constrained=False) == [0, 2, 0]  # O I-PER O: I-PER continues nothing
    # valid sequences by hand: B I O = .40*.80*.90 = .288 beats O B O = .45*.15*.90 = .06075 (what reading
    # the lone I- as B- gives), B B O = .054, O O O = .02025
    assert decode(lp, LABELS, constrained=True) == [1, 2, 0]
    path = viterbi(lp, *transitions(LABELS))
    assert math.isclose(float(np.exp(lp[[0, 1, 2], path].sum())), 0.288)


def test_constrained_decoding_keeps_a_valid_argmax_and_never_starts_inside():
    lp = np.log(np.array([[0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]))  # argmax I I: invalid at the start
    # by hand: B I = .2*.8 = .16, O B = .1*.1 = .01, B B = .02, O O = .01
    assert decode(lp, LABELS, constrained=True) == [1, 2]
    valid = np.log(np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]]))
    assert decode(valid, LABELS, True) == decode(valid, LABELS, False) == [1, 2, 0]
    assert decode(np.zeros((0, 3)), LABELS, True) == []


def test_inside_tags_of_another_type_are_not_a_continuation():
    labels = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    lp = np.log(np.array([[0.05, 0.05, 0.80, 0.05, 0.05],     # B-PER
                          [0.05, 0.05, 0.05, 0.60, 0.25]]))   # I-LOC .60 > I-PER .25
    # by hand: B-PER I-PER = .80*.25 = .20; B-PER B-LOC = .04; B-LOC I-LOC = .05*.60 = .03
    assert [labels[i] for i in decode(lp, labels, True)] == ["B-PER", "I-PER"]


def test_entities_carry_character_offsets_for_text_and_word_indices_for_words():
    from tunelab.data.tagging import words_of

    text = "Yesterday  Anna Smith flew to Oslo."
    tokens, offsets = words_of(text)
    tags = ["O", "B-PER", "I-PER", "O", "O", "B-LOC", "O"]
    probs = np.array([0.9, 0.8, 0.6, 0.9, 0.9, 0.5, 0.99])
    got = entities_of({"tokens": tokens, "text": text, "offsets": offsets}, tags, probs)
    assert got == [{"text": "Anna Smith", "label": "PER", "start": 11, "end": 21, "score": 0.7},
                   {"text": "Oslo", "label": "LOC", "start": 30, "end": 34, "score": 0.5}]
    words = entities_of({"tokens": tokens, "text": None, "offsets": None}, tags, probs)
    assert [(e["text"], e["start"], e["end"]) for e in words] == [("Anna Smith", 1, 3), ("Oslo", 5, 6)]


def test_token_loss_is_a_sum_over_labelled_positions_and_their_count():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]]])  # (1, 3, 2)
    labels = torch.tensor([[0, -100, 1]])
    loss, n = token_loss(logits, labels)
    expected = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(3) / (math.exp(1) + math.exp(3)))
    assert n == 2 and float(loss) == pytest.approx(expected)


def test_report_samples_mark_entities_and_escape_the_words():
    from tunelab.tasks.token_classification import highlighted, samples_html

    words = ["<b>Tom</b>", "&", "Mia", "met", "in", "Oslo"]
    tags = ["B-PER", "O", "B-PER", "O", "O", "B-LOC"]
    assert highlighted(words, tags) == ("<mark>&lt;b&gt;Tom&lt;/b&gt;<sub>PER</sub></mark> &amp; "
                                        "<mark>Mia<sub>PER</sub></mark> met in <mark>Oslo<sub>LOC</sub></mark>")
    table = samples_html([{"tokens": words, "gold": tags, "predicted": ["O"] * 6}])
    assert "<td>predicted</td><td>&lt;b&gt;Tom&lt;/b&gt; &amp; Mia met in Oslo</td>" in table


def test_metrics_score_the_entities_predict_gives_for_a_stray_inside_tag():
    # argmax "I-PER I-PER" is read as one PER by predict and the report: the metrics count it the same way
    from tunelab.tasks.token_classification import TagSplit, Tagged, scores

    split = TagSplit([{"tags": ["B-PER", "I-PER", "O"]}], "t", None)
    tagged = Tagged([["I-PER", "I-PER", "O"]], [np.ones(3)], 0.5)
    m = scores(split, tagged)
    assert m["entity_f1"] == 1.0 and m["loss"] == 0.5
    (entity,) = entities_of({"tokens": ["ann", "lee", "ran"], "text": None, "offsets": None},
                            ["I-PER", "I-PER", "O"], np.ones(3))
    assert (entity["label"], entity["start"], entity["end"]) == ("PER", 0, 2)


def test_the_label_set_has_both_tags_of_every_training_type():
    from tunelab.tasks.token_classification import label_set

    # every LOC of training is one word: a two-word LOC of validation still has its I-LOC
    assert label_set([["B-LOC", "O"], ["B-PER", "I-PER"]]) == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
