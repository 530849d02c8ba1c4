"""Windows over long contexts and the span search: offsets round-trip exactly (unicode, MiniLM's lower-casing
and accent stripping, byte-level BPE, across window boundaries); best span, n-best, max_answer_length,
no-answer score and threshold on hand-made logits."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.data.squad import check_offsets, flat_records
from tunelab.tasks.extractive_qa import (Answer, Window, answer_of, answer_tokens, best_span, build_windows,
                                         choose_threshold, decide)

UNICODE = [
    ("Café Müller in São Paulo met 東京 friends 😀 at 9:30 — a naïve résumé, Größe Übersetzung.",
     ["São Paulo", "東京", "résumé", "Müller", "Übersetzung", "9:30"]),
    ("Ångström wrote “quoted words” and ÉCOLE Normale; then 北京大学 hosted the ﬁnal (Zoë).",
     ["Ångström", "ÉCOLE Normale", "北京大学", "Zoë", "quoted words"]),
]


def records_of(pairs) -> list[dict]:
    """One flat question per gold answer (the question is the same few words each time)."""
    rows = [{"question": "what is it", "context": c, "answers": {"text": [a], "answer_start": [c.index(a)]}}
            for c, answers in pairs for a in answers]
    recs = flat_records(rows, "t", "question", "context", "answers")
    check_offsets(recs, False)
    return recs


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from tunelab.models.registry import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("builtin:minilm-l6")))


@pytest.fixture(scope="module")
def bpe_tokenizer():
    from tunelab.tokenizer_train import build_tokenizer

    return build_tokenizer([c for c, _ in UNICODE] * 3, 300, "bpe")


def recovered(split, recs) -> list[str]:
    """For each question, the text its labelled windows point at (the labels' character span)."""
    out = []
    for rec, idx in zip(recs, split.by_question):
        texts = {rec["context"][w.offsets[w.start - w.context_start][0]:w.offsets[w.end - w.context_start][1]]
                 for w in (split.windows[i] for i in idx) if w.start}
        out.append(texts)
    return out


# answers (of 11) that no window holds whole: longer (in tokens) than the stride + 1; the 300-token BPE spells
# most words in several pieces
LOST = {("minilm_tokenizer", 64): 0, ("minilm_tokenizer", 12): 0, ("minilm_tokenizer", 10): 4,
        ("bpe_tokenizer", 64): 0, ("bpe_tokenizer", 12): 9, ("bpe_tokenizer", 10): 11}


@pytest.mark.parametrize("tok", ["minilm_tokenizer", "bpe_tokenizer"])
@pytest.mark.parametrize("max_length, stride", [(64, 16), (12, 3), (10, 0)])
def test_every_gold_answer_is_recovered_from_the_windows(tok, max_length, stride, request):
    tokenizer = request.getfixturevalue(tok)
    recs = records_of(UNICODE)
    split = build_windows(recs, "t", tokenizer, max_length, stride, use_types=True)
    lost = 0
    for rec, texts in zip(recs, recovered(split, recs)):
        # byte-level BPE tokens carry their leading space: the label span may start with it
        assert {t.strip() for t in texts} <= {rec["answers"][0]}, (rec["answers"], texts)
        # an answer of k tokens lies whole in some window when windows share at least k - 1 tokens
        k = len(tokenizer(" " + rec["answers"][0], add_special_tokens=False)["input_ids"])
        assert texts or k > stride + 1, (rec["answers"], k)
        lost += not texts
    assert lost == LOST[tok, max_length]
    assert all(len(w.ids) <= max_length for w in split.windows)
    if max_length < 20:
        assert max(len(idx) for idx in split.by_question) >= 3  # the answers lie across several windows


@pytest.mark.parametrize("max_length, stride", [(12, 3), (11, 0), (16, 7)])
def test_windows_cover_the_context_and_overlap_by_the_stride(minilm_tokenizer, max_length, stride):
    recs = records_of(UNICODE[:1])[:1]
    split = build_windows(recs, "t", minilm_tokenizer, max_length, stride, use_types=True)
    enc = minilm_tokenizer(recs[0]["context"], add_special_tokens=False, return_offsets_mapping=True)
    windows = split.windows
    assert [o for o in windows[0].offsets] == [tuple(o) for o in enc["offset_mapping"][:len(windows[0].offsets)]]
    joined = []
    for a, b in zip(windows, windows[1:]):
        shared = len(set(a.offsets) & set(b.offsets))
        assert shared == stride
    for w in windows:
        joined += [o for o in w.offsets if o not in joined]
        assert w.ids[0] == minilm_tokenizer.cls_token_id and w.ids[w.context_start - 1] == minilm_tokenizer.sep_token_id
        assert w.ids[-1] == minilm_tokenizer.sep_token_id and len(w.types) == len(w.ids)
        assert w.types[w.context_start - 1] == 0 and w.types[w.context_start] == 1
    assert joined == [tuple(o) for o in enc["offset_mapping"]]  # every context token, in order, once


def test_minilm_offsets_map_back_to_the_original_characters(minilm_tokenizer):
    context = UNICODE[0][0]
    enc = minilm_tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    pieces = [context[a:b] for a, b in enc["offset_mapping"]]
    assert "Café" in pieces and "東" in pieces and "😀" in pieces and "Über" in "".join(pieces)
    assert minilm_tokenizer.convert_ids_to_tokens(enc["input_ids"][:2]) == ["cafe", "muller"]


def test_a_bpe_tokenizer_without_cls_frames_the_row_with_bos_and_eos(bpe_tokenizer):
    split = build_windows(records_of(UNICODE[:1])[:1], "t", bpe_tokenizer, 32, 8, use_types=False)
    w = split.windows[0]
    assert w.ids[0] == bpe_tokenizer.bos_token_id and w.ids[-1] == bpe_tokenizer.eos_token_id and w.types == []


def test_answer_tokens_covers_partial_tokens():
    offsets = [(0, 4), (5, 10), (10, 12), (13, 15)]
    assert answer_tokens(offsets, 5, 12) == (1, 2)
    assert answer_tokens(offsets, 6, 11) == (1, 2)  # inside tokens: the tokens that hold it
    assert answer_tokens(offsets, 4, 5) is None  # only the space between tokens


# ---------------------------------------------------------------------------------------------
# Span search on hand-made logits: row = [CLS] q [SEP] c0 c1 c2 c3 c4 [SEP], context at positions 3..7

START = np.array([9.0, 0, 0, 1.0, 2.0, 6.0, 0.5, 0.0, 8.0])
END = np.array([9.0, 0, 0, 0.0, 7.0, 1.0, 3.0, 5.0, 8.0])


def test_best_span_stays_inside_the_context_with_start_before_end():
    # the best pair overall would be [CLS] (9 + 9) or the final [SEP] (8 + 8): both outside the context;
    # start 5 (6.0) + end 4 (7.0) = 13 has end < start; the best valid is start 5 + end 7 = 11
    assert best_span(START, END, 3, 5, n_best=5, max_answer_length=30) == (11.0, 2, 4)


def test_max_answer_length_limits_the_span():
    assert best_span(START, END, 3, 5, n_best=5, max_answer_length=2) == (9.0, 2, 3)  # 6 + 3
    assert best_span(START, END, 3, 5, n_best=5, max_answer_length=1) == (9.0, 1, 1)  # 2 + 7 beats 6 + 1


def test_n_best_limits_the_candidates():
    # top starts: 5 (6.0), 4 (2.0); top ends: 4 (7.0), 7 (5.0) -> 5 + 7 = 11 is still there
    assert best_span(START, END, 3, 5, n_best=2, max_answer_length=30) == (11.0, 2, 4)
    # top start 5 and top end 4 only: end before start, no span at all
    assert best_span(START, END, 3, 5, n_best=1, max_answer_length=30) is None


def test_answer_of_takes_the_best_window_and_the_lowest_no_answer_score():
    context = "zero one two three four five six seven"
    w1 = Window(0, [0] * 9, [], 3, [(0, 4), (5, 8), (9, 12), (13, 18), (19, 23)])
    w2 = Window(0, [0] * 9, [], 3, [(9, 12), (13, 18), (19, 23), (24, 28), (29, 32)])
    logits2 = (START + 1.0, END - 3.0)  # its best span scores 11 - 2 = 9, its [CLS] 10 + 6 = 16
    answer = answer_of(context, [w1, w2], [(START, END), logits2], n_best=5, max_answer_length=30)
    assert (answer.text, answer.start, answer.end, answer.span_score) == ("two three four", 9, 23, 11.0)
    assert answer.null_score == 16.0 and answer.margin == 5.0


def test_a_leading_space_of_a_token_is_not_part_of_the_answer():
    w = Window(0, [0] * 4, [], 1, [(3, 8), (8, 12)])  # byte-level BPE: " word" starts at the space
    answer = answer_of("ab  word two", [w], [(np.array([0, 5.0, 0, 0]), np.array([0, 0, 5.0, 0]))], 5, 30)
    assert (answer.text, answer.start, answer.end) == ("word two", 4, 12)


def test_the_threshold_decides_no_answer():
    answer = Answer("Paris", 10, 15, span_score=7.0, null_score=9.0)  # margin 2
    assert decide(answer, 1.5) == {"answer": "", "score": 9.0, "start": None, "end": None}
    assert decide(answer, 2.0) == {"answer": "Paris", "score": 7.0, "start": 10, "end": 15}
    assert decide(answer, None)["answer"] == "Paris"  # None: a run that never answers "no answer"


def test_the_threshold_chosen_on_validation_maximises_f1():
    answers = [Answer("Paris", 0, 5, 5.0, 1.0), Answer("Rome", 0, 4, 3.0, 6.0), Answer("x", 0, 1, 1.0, 2.5),
               Answer("Oslo", 0, 4, 2.0, 2.5)]
    records = [{"answers": ["Paris"]}, {"answers": []}, {"answers": []}, {"answers": ["Oslo"]}]
    # margins -4, 3, 1.5, 0.5: "no answer" above 0.5 gets all four right
    threshold, f1 = choose_threshold(answers, records)
    assert f1 == 1.0 and 0.5 <= threshold < 1.5
    assert all(decide(a, threshold)["answer"] == (r["answers"] or [""])[0] for a, r in zip(answers, records))


def test_a_question_without_any_span_is_no_answer():
    answer = answer_of("ab", [Window(0, [0, 0, 0], [], 1, [(0, 2)])],
                       [(np.array([0, 1.0, 0]), np.array([0, 1.0, 0]))], n_best=1, max_answer_length=30)
    assert answer.text == "ab"
    none = Answer("", None, None, -math.inf, 3.0)
    assert decide(none, None) == {"answer": "", "score": 3.0, "start": None, "end": None}


def test_a_span_of_white_space_tokens_alone_is_never_the_answer():
    # byte-level BPE: token 1 is a newline; its start and end logits are the highest, but a span of it alone
    # would strip to "" (and bypass the threshold): the best real span wins instead
    context = "alpha\nbeta"
    w = Window(0, [0] * 5, [], 1, [(0, 5), (5, 6), (6, 10)])
    answer = answer_of(context, [w], [(np.array([0, 1.0, 9.0, 2.0, 0]), np.array([0, 0.5, 9.0, 3.0, 0]))], 5, 30)
    assert (answer.text, answer.start, answer.end) == ("beta", 6, 10)
    only_blank = answer_of(" ", [Window(0, [0] * 3, [], 1, [(0, 1)])],
                           [(np.array([0, 5.0, 0]), np.array([0, 5.0, 0]))], 5, 30)
    assert only_blank.start is None


def test_a_long_question_still_advances_windows_by_a_quarter():
    from tunelab.tasks.extractive_qa import question_windows

    ids, offsets = list(range(100, 160)), [(i, i + 1) for i in range(60)]
    rows = question_windows(0, list(range(20)), ids, offsets, None, max_length=31, stride=7, cls=2, sep=3,
                            use_types=False)
    firsts = [w.offsets[0][0] for w in rows]  # budget 31 - 20 - 3 = 8 tokens: step max(8 - 7, 8 // 4) = 2
    assert firsts == list(range(0, 53, 2)) and all(len(w.ids) <= 31 for w in rows)
