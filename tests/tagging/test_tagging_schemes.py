"""Tag schemes: detection from training tags, conversion of every scheme to IOB2 on hand-written cases,
the repair rule and its counts, and entity spans."""
from __future__ import annotations

import pytest

from tunelab.data.tagging import SCHEMES, convert_records, detect_scheme, spans_of, to_iob2
from tunelab.errors import DataError, TunelabError

# One sentence, "Ann Lee met Bob in New York City", written in every scheme; its IOB2 form and entity spans.
IOB2 = ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "I-LOC", "I-LOC"]
WRITTEN = {
    "iob2": IOB2,
    "iob1": ["I-PER", "I-PER", "O", "I-PER", "O", "I-LOC", "I-LOC", "I-LOC"],
    "bioes": ["B-PER", "E-PER", "O", "S-PER", "O", "B-LOC", "I-LOC", "E-LOC"],
    "bilou": ["B-PER", "L-PER", "O", "U-PER", "O", "B-LOC", "I-LOC", "L-LOC"],
    "plain": ["PER", "PER", "O", "PER", "O", "LOC", "LOC", "LOC"],
}
SPANS = [("PER", 0, 2), ("PER", 3, 4), ("LOC", 5, 8)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_is_detected_and_converts_to_the_same_iob2(scheme):
    tags = WRITTEN[scheme]
    assert detect_scheme([tags]) == scheme
    converted, repaired = to_iob2(tags, scheme)
    assert converted == IOB2 and repaired == 0
    assert spans_of(converted) == SPANS


def test_iob1_uses_b_only_between_two_entities_of_one_type():
    tags = ["I-PER", "B-PER", "O", "I-ORG", "I-ORG", "I-LOC"]  # two adjacent PERs; ORG then LOC touch
    assert detect_scheme([tags]) == "iob1"
    assert to_iob2(tags, "iob1") == (["B-PER", "B-PER", "O", "B-ORG", "I-ORG", "B-LOC"], 0)
    # A B- after O is not IOB1: the data is IOB2 with an invalid I- (repaired below)
    assert detect_scheme([["I-PER", "O"], ["O", "B-PER", "I-PER"]]) == "iob2"


def test_only_b_tags_or_only_o_tags():
    assert detect_scheme([["B-PER", "O", "B-LOC"]]) == "iob2"
    assert detect_scheme([["O", "O"], []]) == "plain"


@pytest.mark.parametrize("scheme, tags, expected, repaired", [
    ("iob2", ["O", "I-PER", "I-PER", "B-LOC", "I-ORG"], ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"], 2),
    ("iob2", ["I-PER"], ["B-PER"], 1),
    ("bioes", ["S-PER", "I-PER", "E-PER", "E-LOC", "O"], ["B-PER", "B-PER", "I-PER", "B-LOC", "O"], 2),
    ("bioes", ["B-PER", "E-PER", "E-PER"], ["B-PER", "I-PER", "B-PER"], 1),  # E- ends: the next E- begins
    ("bilou", ["U-LOC", "L-LOC", "B-ORG", "I-ORG"], ["B-LOC", "B-LOC", "B-ORG", "I-ORG"], 1),  # open end kept
    ("iob1", ["I-PER", "I-LOC", "O", "I-LOC"], ["B-PER", "B-LOC", "O", "B-LOC"], 0),
])
def test_invalid_sequences_are_repaired_and_counted(scheme, tags, expected, repaired):
    assert to_iob2(tags, scheme) == (expected, repaired)


def test_plain_runs_are_entities_and_types_keep_hyphens():
    assert to_iob2(["PER", "PER", "LOC", "O", "LOC"], "plain") == (["B-PER", "I-PER", "B-LOC", "O", "B-LOC"], 0)
    assert to_iob2(["B-WORK-OF-ART", "I-WORK-OF-ART"], "iob2") == (["B-WORK-OF-ART", "I-WORK-OF-ART"], 0)
    assert spans_of(["B-WORK-OF-ART", "I-WORK-OF-ART", "O"]) == [("WORK-OF-ART", 0, 2)]


def test_spans_of_reads_a_stray_i_as_a_beginning():
    assert spans_of(["I-PER", "I-PER", "I-LOC", "B-LOC", "O", "B-PER"]) == [
        ("PER", 0, 2), ("LOC", 2, 3), ("LOC", 3, 4), ("PER", 5, 6)]
    assert spans_of([]) == [] and spans_of(["O"]) == []


def test_mixed_or_foreign_tags_are_errors():
    with pytest.raises(TunelabError, match="mix prefixed"):
        detect_scheme([["B-PER", "LOC"]])
    with pytest.raises(TunelabError, match="BIOES .* BILOU"):
        detect_scheme([["S-PER"], ["U-LOC"]])
    with pytest.raises(TunelabError, match="'E-PER' is not in the IOB2 scheme"):
        to_iob2(["B-PER", "E-PER"], "iob2")
    with pytest.raises(TunelabError, match="unknown tag scheme 'bio'"):
        to_iob2(["O"], "bio")


def test_convert_records_names_the_record_and_logs_repairs():
    records = [{"tokens": ["a", "b"], "tags": ["I-X", "I-X"], "_file": "f.jsonl", "_line": 1, "_where": "record 1"},
               {"tokens": ["a"], "tags": None, "_file": "f.jsonl", "_line": 2, "_where": "record 2"},
               {"tokens": ["a", "b"], "tags": ["O", "I-Y"], "_file": "f.jsonl", "_line": 3, "_where": "record 3"}]
    lines = []
    assert convert_records(records, "iob2", "f.jsonl", lines.append) == 2
    assert records[0]["tags"] == ["B-X", "I-X"] and records[1]["tags"] is None
    assert lines == ["f.jsonl: repaired 2 invalid tags (IOB2): an I- that does not continue an entity of its "
                     "type begins one (read as B-)"]
    bad = [{"tokens": ["a"], "tags": ["S-X"], "_file": "f.jsonl", "_line": 4, "_where": "record 4"}]
    with pytest.raises(DataError, match=r"^f.jsonl:4: record 4: tag 'S-X' is not in the IOB2 scheme"):
        convert_records(bad, "iob2", "f.jsonl")


def test_underscore_prefixes_are_prefixes_and_untyped_chunk_tags_are_refused():
    assert detect_scheme([["B_PER", "I_PER", "O"]]) == "iob2"
    assert to_iob2(["B_PER", "I_PER", "O"], "iob2") == (["B-PER", "I-PER", "O"], 0)
    with pytest.raises(TunelabError, match="tags B, I look like chunk tags without a type"):
        detect_scheme([["B", "I", "I", "O", "B"]])
