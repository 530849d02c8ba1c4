"""Words -> sub-tokens -> words: the alignment of tags to first sub-tokens, and windows over long sentences that
lose no word (MiniLM's WordPiece, the tiny BERT fixture and a byte-level BPE from `tunelab tokenizer train`)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from tunelab.data.tokens import IGNORE_INDEX
from tunelab.tasks.token_classification import (build_windows, most_central, pieces_by_word_ids,
                                                 pieces_word_by_word, window_ranges, word_pieces)

LONG_WORD = "pneumonoultramicroscopicsilicovolcanoconiosis"
HARD_WORDS = ["São", "Paulo", "naïve", "Jean-Luc", "well-known", "北京", "😀", "Größe", LONG_WORD, "\u200b", "co-op's"]


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    from tunelab.models.registry import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("builtin:minilm-l6")))


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert))


@pytest.fixture(scope="module")
def bpe():
    from tunelab.tokenizer_train import build_tokenizer

    return build_tokenizer(["São Paulo is well-known; Jean-Luc is naïve about Größe"] * 5, 300, "bpe")


@pytest.mark.parametrize("name", ["minilm", "tiny_tokenizer", "bpe"])
def test_every_word_keeps_its_own_pieces_in_order(name, request):
    tok = request.getfixturevalue(name)
    words = HARD_WORDS + ["goal", "match"]
    pieces = word_pieces(tok, [words])[0]
    assert len(pieces) == len(words) and all(pieces)
    # one call with word ids gives the same pieces as each word alone (the fallback of slow tokenizers)
    alone = pieces_word_by_word(tok, [words])[0]
    assert [p or [tok.unk_token_id] for p in alone] == pieces
    # concatenated, they are the tokenizer's own encoding of the pre-split sentence (without the word it drops)
    kept = [w for w in words if w != "\u200b"]
    whole = tok(kept, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert [i for p in word_pieces(tok, [kept])[0] for i in p] == whole


def test_minilm_round_trip_word_to_subtokens_to_word(minilm):
    words = HARD_WORDS
    pieces = word_pieces(minilm, [words])[0]
    norm = minilm.backend_tokenizer.normalizer.normalize_str
    for word, ids in zip(words, pieces):
        text = minilm.decode(ids).replace(" ", "")
        if ids != [minilm.unk_token_id]:
            assert text == norm(word).replace(" ", ""), word  # lower-cased, accents stripped
    assert len(pieces[words.index(LONG_WORD)]) == 17
    assert minilm.convert_ids_to_tokens(pieces[words.index("Jean-Luc")]) == ["jean", "-", "luc"]
    assert pieces[words.index("\u200b")] == [minilm.unk_token_id]  # dropped by the tokenizer: still one token


@pytest.mark.parametrize("name", ["minilm", "tiny_tokenizer"])
def test_labels_sit_on_first_subtokens_and_read_back_per_word(name, request):
    tok = request.getfixturevalue(name)
    words = [w for w in HARD_WORDS if w != "\u200b"] * 3  # (a dropped word gets one [UNK] of its own)
    tags = [i % 4 for i in range(len(words))]
    split = build_windows([{"tokens": words}], [tags], "t", tok, max_length=512, stride=None)
    (w,) = split.windows
    assert w.ids[0] == tok.cls_token_id and w.ids[-1] == tok.sep_token_id
    labelled = [i for i, lab in enumerate(w.labels) if lab != IGNORE_INDEX]
    assert labelled == w.word_pos and [w.labels[i] for i in labelled] == tags
    enc = tok(words, is_split_into_words=True)  # the tokenizer's own word ids agree with the positions
    firsts = [enc.word_ids().index(i) for i in range(len(words)) if i in enc.word_ids()]
    assert w.word_pos == firsts


def test_windows_cover_every_word_and_respect_the_length(minilm):
    rng = random.Random(0)
    words = [rng.choice(HARD_WORDS + ["a", "the", "river"]) for _ in range(120)]
    tags = [rng.randrange(5) for _ in words]
    split = build_windows([{"tokens": words}], [tags], "t", minilm, max_length=16, stride=4)
    windows = [split.windows[i] for i in split.by_sentence[0]]
    assert len(windows) > 10 and all(len(w.ids) <= 16 for w in windows)
    covered = set()
    for w in windows:
        covered |= set(range(w.first, w.first + len(w.word_pos)))
        for k, pos in enumerate(w.word_pos):  # each window labels its words' first sub-tokens
            assert w.labels[pos] == tags[w.first + k]
    assert covered == set(range(len(words)))
    # merged: every word read from exactly one window, the one where it is most central
    picks = most_central(windows, len(words))
    assert [windows[k].first + windows[k].word_pos.index(pos) for k, pos in picks] == list(range(len(words)))
    assert split.words_cut == words.count(LONG_WORD)  # 17 pieces > 14 in a window: cut to its first pieces


def test_window_ranges_overlap_by_at_most_the_stride():
    rng = random.Random(1)
    for _ in range(200):
        counts = [rng.randint(1, 5) for _ in range(rng.randint(1, 60))]
        budget, stride = rng.randint(5, 20), rng.randint(0, 4)
        ranges = window_ranges(counts, budget, stride)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(counts)
        for (a, b), (c, d) in zip(ranges, ranges[1:]):
            assert a < c <= b < d  # progress, no gap
            assert sum(counts[c:b]) <= stride
        assert all(sum(counts[a:b]) <= budget for a, b in ranges)


def test_window_ranges_by_hand():
    assert window_ranges([2, 2, 2, 2, 2], budget=6, stride=2) == [(0, 3), (2, 5)]
    assert window_ranges([2, 2, 2, 2, 2], budget=6, stride=0) == [(0, 3), (3, 5)]
    assert window_ranges([6, 1], budget=6, stride=3) == [(0, 1), (1, 2)]


def test_most_central_prefers_the_window_with_more_context():
    from tunelab.tasks.token_classification import Window

    # words 0..5 in window A, words 3..8 in window B: word 3 and 4 are more central in A? A: 3 -> min(3, 2) = 2;
    # B: 3 -> min(0, 5) = 0, so A; word 5: A min(5, 0) = 0, B min(2, 3) = 2, so B
    a = Window(0, 0, [], [10, 11, 12, 13, 14, 15], [])
    b = Window(0, 3, [], [20, 21, 22, 23, 24, 25], [])
    picks = most_central([a, b], 9)
    assert picks == [(0, 10), (0, 11), (0, 12), (0, 13), (0, 14), (1, 22), (1, 23), (1, 24), (1, 25)]


def test_a_long_sentence_is_tagged_whole_by_a_model(minilm, tmp_path):
    """The merged word log-probs of a windowed sentence come from the model rows of each word's window."""
    import torch

    from tunelab.tasks.token_classification import word_log_probs

    class Echo(torch.nn.Module):  # logits = one-hot of (input id mod 3): a position-free "model"
        def forward(self, input_ids, attention_mask):
            from types import SimpleNamespace

            return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids % 3, 3).float() * 10)

    words = ["river", "the", "a", "naïve", "well-known"] * 20
    split = build_windows([{"tokens": words}], None, "t", minilm, max_length=12, stride=3)
    (log_probs,), loss = word_log_probs(Echo(), split, 4, 0, "cpu")
    firsts = [p[0] for p in word_pieces(minilm, [words])[0]]
    assert log_probs.shape == (100, 3) and np.isnan(loss)
    assert list(log_probs.argmax(1)) == [i % 3 for i in firsts]
