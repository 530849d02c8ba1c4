"""Today's split indices, pinned: any change of which record lands in which split must be deliberate.

Synthetic records carry their index `i`; each test pins the indices of every split that a task's own
split code produces (classification: stratified by label; causal_lm: random, with data.limit's pool;
pretraining: documents, and blocks/chunks when too few documents can be held out).
"""
from __future__ import annotations

import json

from tunelab.config import config_from_dict

NOTHING = lambda _: None  # noqa: E731 - a log that drops everything


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _indices(splits):
    return {name: [r["i"] for r in recs] for name, (recs, _) in splits.items()}


CLASSIFICATION = {
    (): {"test": [3, 6, 8, 12, 14, 17, 27, 28, 33], "validation": [11, 13, 21, 30],
         "train": [0, 1, 2, 4, 5, 7, 9, 10, 15, 16, 18, 19, 20, 22, 23, 24, 25, 26, 29, 31, 32, 34, 35, 36, 37, 38,
                   39]},
    (("limit", 15),): {"test": [3, 6, 8, 12, 14, 17, 27, 28, 33], "validation": [11, 13, 21, 30],
                       "train": [0, 1, 4, 9, 10, 18, 20, 22, 23, 31, 34, 35, 36, 37, 38]},
    (("val_fraction", 0.2), ("test_fraction", 0.0)): {
        "validation": [3, 6, 8, 12, 14, 17, 27, 28, 33],
        "train": [0, 1, 2, 4, 5, 7, 9, 10, 11, 13, 15, 16, 18, 19, 20, 21, 22, 23, 24, 25, 26, 29, 30, 31, 32, 34, 35,
                  36, 37, 38, 39]},
}


def test_classification_splits_are_stratified_and_pinned(tmp_path):
    from tunelab.tasks.classification import split_records

    labels = ["a"] * 20 + ["b"] * 13 + ["c"] * 5 + ["d"] * 2
    path = _write(tmp_path / "c.jsonl", [{"text": f"t{i}", "label": labels[i * 7 % 40], "i": i} for i in range(40)])
    for extra, expected in CLASSIFICATION.items():
        cfg = config_from_dict({"data": {"train": path, "val_fraction": 0.1, "test_fraction": 0.2, **dict(extra)},
                                "train": {"seed": 3}})
        assert _indices(split_records(cfg, NOTHING)) == expected, extra


CAUSAL = {
    (): {"test": [9, 11, 18, 26, 28, 37, 38, 42, 46, 48], "validation": [4, 22, 27, 29, 47],
         "train": [0, 1, 2, 3, 5, 6, 7, 8, 10, 12, 13, 14, 15, 16, 17, 19, 20, 21, 23, 24, 25, 30, 31, 32, 33, 34, 35,
                   36, 39, 40, 41, 43, 44, 45, 49]},
    (("limit", 12),): {"test": [10, 15, 16, 24], "validation": [6, 7],
                       "train": [1, 3, 22, 23, 29, 30, 33, 39, 40, 41, 44, 47]},
    (("limit", 30), ("test_fraction", 0.0)): {
        "validation": [8, 10, 25],
        "train": [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17, 19, 20, 22, 23, 24, 29, 30, 32, 33, 34, 36, 39, 40,
                  41, 43, 44]},
}


def test_causal_lm_splits_with_data_limit_are_pinned(tmp_path):
    from tunelab.tasks.causal_lm import split_records

    records = [{"prompt": f"p{i}", "completion": "c", "i": i} for i in range(50)]
    path = _write(tmp_path / "l.jsonl", records)
    for extra, expected in CAUSAL.items():
        cfg = config_from_dict({"task": "causal_lm", "data": {"train": path, "val_fraction": 0.1,
                                                              "test_fraction": 0.2, **dict(extra)}})
        assert _indices(split_records(cfg.data, 5, records, NOTHING)) == expected, extra


def test_pretraining_documents_are_split_and_pinned(tmp_path):
    from tunelab.data.corpus import corpus_splits

    path = _write(tmp_path / "docs.jsonl", [{"text": f"doc {i}"} for i in range(23)])
    for limit, train in ((None, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 20, 22]),
                         (5, [0, 1, 2, 3, 4])):
        cfg = config_from_dict({"task": "pretrain", "model": {"name": "scratch:gpt"},
                                "data": {"train": path, "val_fraction": 0.1, "test_fraction": 0.1, "limit": limit}})
        splits = corpus_splits(cfg.data, 7, NOTHING)
        got = {name: [int(text.split()[1]) for text in texts] for name, (texts, _) in splits.items()}
        assert got == {"test": [5, 18], "validation": [15, 21], "train": train}


def test_chunk_and_block_splits_are_pinned():
    """When too few documents can be held out: causal_lm text chunks and pretraining blocks."""
    from tunelab.data.splits import split_indices

    def carve(n, val, test, carve_val, carve_test, seed):  # causal_lm's text chunks (was causal_lm.carve)
        hold_out = [name for name, wanted in (("validation", carve_val), ("test", carve_test)) if wanted]
        return split_indices(n, val, test, seed, hold_out=hold_out)

    def split_documents(n, val, test, seed):  # pretraining's blocks (was pretrain.split_documents)
        return split_indices(n, val, test, seed, draw="once")

    rest = [0, 1, 2, 3, 4, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 22]
    assert carve(23, 0.1, 0.1, True, True, 7) == {"test": [5, 18], "validation": [8, 21], "train": rest}
    assert carve(23, 0.1, 0.1, True, False, 7) == {"validation": [5, 18],
                                                   "train": [i for i in range(23) if i not in (5, 18)]}
    assert split_documents(23, 0.1, 0.1, 7) == {"test": [5, 18], "validation": [15, 21],
                                                "train": [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17,
                                                          19, 20, 22]}
    assert split_documents(7, 0.1, 0.1, 0) == {"test": [4], "validation": [2], "train": [0, 1, 3, 5, 6]}


def test_seq2seq_pair_splits_are_pinned(tmp_path):
    """seq2seq: pairs split at random (no stratification); data.limit cuts the training pairs afterwards."""
    from tunelab.tasks.seq2seq import load_split_pairs

    path = _write(tmp_path / "p.jsonl", [{"source": f"s{i}", "target": f"t{i}", "i": i} for i in range(30)])
    got = {}
    for limit in (None, 5):
        cfg = config_from_dict({"task": "seq2seq", "data": {"train": path, "val_fraction": 0.1,
                                                            "test_fraction": 0.2, "limit": limit}})
        got[limit] = _indices(load_split_pairs(cfg.data, 4, NOTHING))
    rest = [0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 14, 15, 16, 17, 20, 21, 22, 23, 25, 27, 28]
    held = {"test": [6, 10, 13, 18, 19, 24], "validation": [12, 26, 29]}
    assert got == {None: {**held, "train": rest}, 5: {**held, "train": [0, 1, 2, 3, 4]}}
