"""Duplicates and leakage (tunelab.data.dedup) on planted cases, and data.dedup through prepare_splits: exactly
the planted training records go, validation and test stay as they were."""
from __future__ import annotations

import copy
import random

import pytest

from tunelab.config import config_from_dict
from tunelab.data.dedup import find_duplicates, jaccard, normalise, shingle_set
from tunelab.data.prepare import DataView, prepare_splits, rewrite_fields

VOCAB = [f"w{i}" for i in range(3000)]


def text(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def changed(t: str, positions: list[int], rng: random.Random) -> str:
    """`t` with the words at `positions` replaced by words of no other text."""
    words = t.split()
    for p in positions:
        words[p] = f"new{rng.randrange(10**6)}"
    return " ".join(words)


def planted() -> tuple[list[str], list[str], list[str]]:
    """(train, validation, test) texts of 60 random words from 3,000, with:
    train[10], train[11] exact repeats of train[3] (case and white space changed), train[12] a near repeat of
    train[5] (one word changed: Jaccard 55/61 = 0.90), train[13] a far copy of train[6] (6 words changed far
    apart: Jaccard 0.52, not a duplicate); validation[0] = train[20], validation[1] near train[21]; test[0] =
    train[22] with punctuation added (no exact match; Jaccard 1.0, a near one)."""
    rng = random.Random(0)
    train = [text(rng) for _ in range(30)]
    train[10] = "  " + train[3].upper()
    train[11] = train[3].replace(" ", "\n", 5)
    train[12] = changed(train[5], [30], rng)
    train[13] = changed(train[6], [5, 14, 23, 32, 41, 50], rng)
    validation = [train[20], changed(train[21], [40], rng), text(rng), text(rng)]
    test = [train[22].replace(" ", ", ", 3) + ".", text(rng), text(rng)]
    return train, validation, test


def keys(texts: list[str]) -> list[tuple[str, str]]:
    return [("", t) for t in texts]


def test_planted_duplicates_and_leaks_are_found_exactly():
    train, validation, test = planted()
    found = find_duplicates(keys(train), {"validation": keys(validation), "test": keys(test)}, 0.8)
    assert [(m.index, m.other, m.kind) for m in found.repeats] == [(10, 3, "exact"), (11, 3, "exact"),
                                                                     (12, 5, "near")]
    assert round(found.repeats[2].similarity, 4) == round(55 / 61, 4)
    assert [(m.index, m.other, m.kind) for m in found.leaks["validation"]] == [(20, 0, "exact"), (21, 1, "near")]
    assert [(m.index, m.other, m.kind, m.similarity) for m in found.leaks["test"]] == [(22, 0, "near", 1.0)]
    assert found.dropped() == {10, 11, 12, 20, 21, 22}
    assert jaccard(shingle_set(train[6]), shingle_set(train[13])) < 0.6  # the far copy is no duplicate


def test_near_duplicates_just_above_the_threshold_are_all_found():
    """300 pairs at Jaccard 53/63 = 0.84 (three adjacent words of 60 changed), threshold 0.8: every pair is
    found, as repeats inside train and as leaks into test (an LSH banded at the threshold itself catches a pair
    at 0.84 about 6 times in 10)."""
    rng = random.Random(2)
    originals = [text(rng) for _ in range(300)]
    copies = [changed(t, [28, 29, 30], rng) for t in originals]
    assert {round(jaccard(shingle_set(a), shingle_set(b)), 4) for a, b in zip(originals, copies)} == {
        round(53 / 63, 4)}
    found = find_duplicates(keys(originals + copies), {"test": keys(copies)}, 0.8)
    assert [(m.index, m.other, m.kind) for m in found.repeats] == [(300 + i, i, "near") for i in range(300)]
    assert [(m.index, m.other) for m in found.leaks["test"] if m.kind == "near"] == [(i, i) for i in range(300)]


def test_unrelated_texts_are_not_flagged():
    rng = random.Random(1)
    found = find_duplicates(keys([text(rng) for _ in range(200)]), {"test": keys([text(rng) for _ in range(50)])})
    assert found.repeats == [] and found.leaks == {"test": []}


def test_threshold_decides_near_duplicates():
    """At 0.95 the one-word change (0.90) is no near duplicate; exact ones stay."""
    train, validation, test = planted()
    found = find_duplicates(keys(train), {"validation": keys(validation)}, 0.95)
    assert [(m.index, m.kind) for m in found.repeats] == [(10, "exact"), (11, "exact")]
    assert [(m.index, m.kind) for m in found.leaks["validation"]] == [(20, "exact")]


def test_groups_compare_within_a_group_only():
    """Extractive QA keys (context, question): another question on the same context is no duplicate, the same
    question on another context neither; the same question on the same context is."""
    ctx_a, ctx_b = "The tower was built in 1889 in Paris.", "The bridge opened in 1937 over the bay."
    train = [(ctx_a, "When was the tower built?"), (ctx_a, "Where is the tower?"),
             (ctx_b, "When was the tower built?")]
    test = [(ctx_a, "when was the tower  built?"), (ctx_b, "What opened in 1937?")]
    found = find_duplicates(train, {"test": test})
    assert found.repeats == []
    assert [(m.index, m.other, m.kind) for m in found.leaks["test"]] == [(0, 0, "exact")]


def test_normalise_and_shingles():
    assert normalise("  A  b\n\tC ") == "a b c"
    assert shingle_set("One, two") == {("one", "two")}
    assert shingle_set("a b c d") == {("a", "b", "c"), ("b", "c", "d")}
    assert shingle_set("") == set()


def config(**data) -> object:
    return config_from_dict({"task": "classification", "model": {"name": "builtin:minilm-l6", "max_length": 16},
                             "data": {"train": "train.jsonl", **data}, "output_dir": "unused"})


VIEW = DataView(texts=lambda r: [r["text"]], label=lambda r: r["label"],
                rewrite=lambda r, fn: rewrite_fields(r, ("text",), fn))


def splits_of(train: list[str], validation: list[str], test: list[str]) -> dict:
    recs = {name: [{"text": t, "label": "a" if i % 2 else "b", "_line": i + 1} for i, t in enumerate(texts)]
            for name, texts in (("train", train), ("validation", validation), ("test", test))}
    return {name: (r, f"{name}.jsonl") for name, r in recs.items()}


def test_dedup_drops_exactly_the_planted_training_records():
    """data.dedup: train loses records 10, 11, 12 (repeats) and 20, 21, 22 (leaks), in order otherwise;
    validation and test are the same record objects as before; the summary counts each reason."""
    splits = splits_of(*planted())
    lines: list[str] = []
    out = prepare_splits(splits, VIEW, config(dedup=True), lines.append)
    kept = [r["_line"] - 1 for r in out["train"][0]]
    assert kept == [i for i in range(30) if i not in {10, 11, 12, 20, 21, 22}]
    for name in ("validation", "test"):
        assert out[name][0] == splits[name][0] and all(a is b for a, b in zip(out[name][0], splits[name][0]))
    assert out.summary.dropped == {"repeats in train": 3, "also in validation": 2, "also in test": 1}
    assert out.summary.records == {"train": 24, "validation": 4, "test": 3}
    assert "data.dedup: dropped 6 of 30 training records (3 repeats in train, 2 also in validation, 1 also in " \
           "test)" in lines


def test_dedup_without_check_finds_the_same():
    splits = splits_of(*planted())
    out = prepare_splits(splits, VIEW, config(dedup=True, check=False), lambda _: None)
    assert len(out["train"][0]) == 24 and out.summary.check is None


@pytest.mark.parametrize("check", [True, False])
def test_defaults_change_no_record(check):
    """data.check on or off, nothing else set: every split holds the very records it was given, unchanged (a
    check that edited a record in place would pass an identity test alone)."""
    splits = splits_of(*planted())
    before = copy.deepcopy(splits)
    out = prepare_splits(splits, VIEW, config(check=check), lambda _: None)
    for name, (records, source) in splits.items():
        assert out[name][1] == source and all(a is b for a, b in zip(out[name][0], records))
        assert len(out[name][0]) == len(records)
    assert {name: out[name] for name in splits} == before
