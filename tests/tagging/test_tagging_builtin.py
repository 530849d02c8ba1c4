"""builtin:ner-synthetic: deterministic, valid IOB2, all five types, the hard names and long sentences present."""
from __future__ import annotations

import hashlib
import json
from collections import Counter

from tunelab.config import DataConfig
from tunelab.data import ner_synthetic as ns
from tunelab.data.tagging import detect_scheme, load_tagged, spans_of, to_iob2


def digest(records):
    return hashlib.sha256(json.dumps([(r["tokens"], r["tags"]) for r in records]).encode()).hexdigest()[:16]


def test_same_sentences_every_time_and_read_as_word_records():
    logged = []
    recs = load_tagged("builtin:ner-synthetic", DataConfig(), logged.append)
    assert len(recs) == 3000 and logged == []
    assert digest(recs) == digest(ns.ner_synthetic()) == "bd7066a26104e890"
    assert recs[0]["tokens"] == ["Shares", "of", "Nestlé", "fell", "sharply", "after", "Hannah", "Becker",
                                 "resigned", "."]
    assert recs[0]["tags"] == ["O", "O", "B-ORG", "O", "O", "O", "B-PER", "I-PER", "O", "O"]
    assert (recs[0]["_file"], recs[0]["_where"]) == ("builtin:ner-synthetic", "record 1")
    assert digest(ns.ner_synthetic(seed=1)) != digest(recs)


def test_tags_are_valid_iob2_over_five_types_and_match_the_word_lists():
    recs = ns.ner_synthetic()
    tags = [r["tags"] for r in recs]
    assert detect_scheme(tags) == "iob2"
    assert all(to_iob2(t, "iob2") == (t, 0) for t in tags)  # nothing to repair
    entities = Counter()
    names = {kind: set(pool) for kind, pool in (("PER", ns.PER), ("LOC", ns.LOC), ("ORG", ns.ORG),
                                                ("MISC", ns.MISC))}
    for r in recs:
        assert len(r["tokens"]) == len(r["tags"]) and all(w and " " not in w for w in r["tokens"])
        for kind, start, end in spans_of(r["tags"]):
            entities[kind] += 1
            if kind in names:  # every tagged span is exactly one slot value
                assert " ".join(r["tokens"][start:end]) in names[kind]
    assert entities == {"LOC": 2223, "PER": 1877, "ORG": 1606, "DATE": 1138, "MISC": 925}


def test_hard_names_and_long_sentences_occur():
    recs = ns.ner_synthetic()
    words = {w for r in recs for w in r["tokens"]}
    assert {"José", "Zoë", "Müller", "Jean-Luc", "Stratford-upon-Avon", "O'Neill"} <= words
    lengths = sorted(len(r["tokens"]) for r in recs)
    assert lengths[-1] == 116 and sum(n >= 40 for n in lengths) == 167
    assert sum(not spans_of(r["tags"]) for r in recs) == 139  # sentences without an entity
    assert len(ns.TEMPLATES) == 60
