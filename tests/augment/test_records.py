"""augment_records, the entry prepare_splits calls on the training split: seeded copies that do not depend on
the other records, labels and other fields kept, data.augment's settings honoured, copies equal to their
record not added, and the log line that counts them per edit."""
from __future__ import annotations

import pytest

from tunelab.config import config_from_dict
from tunelab.data.augment import AUGMENTED, added_by_kind, augment_records
from tunelab.data.prepare import DataView
from tunelab.errors import ConfigError

# A classification-like view: one text per record, rewritten in a copy (what a task's data_view gives)
VIEW = DataView(texts=lambda r: [r["text"]], label=lambda r: r["label"],
                augment=lambda r, fn: {**r, "text": fn(r["text"])})
RECORDS = [
    {"id": 0, "text": "The firm said profits rose sharply after strong sales.", "label": "business"},
    {"id": 1, "text": "Fans praised the team after a quick and brilliant victory.", "label": "sport"},
    {"id": 2, "text": "Critics found the film boring but the songs wonderful.", "label": "entertainment"},
    {"id": 3, "text": "Ministers rejected the proposal to reduce the annual budget.", "label": "politics"},
    {"id": 4, "text": "The new phone is fast, cheap and popular with customers.", "label": "tech"},
]


def cfg(**augment):
    return config_from_dict({"task": "classification", "data": {"train": "train.jsonl", "augment": augment},
                             "train": {"seed": 3}})


def run(records=RECORDS, view=VIEW, **augment):
    lines: list[str] = []
    return augment_records(records, view, cfg(**augment), lines.append), lines


def test_copies_per_record_with_labels_and_fields_kept_and_the_count_logged():
    added, lines = run(copies=2)
    # one copy of record 3 came back as it was (deletion at rate 0.1 drew none of its 9 words): not added
    assert len(added) == 9 and [r["id"] for r in added] == [0, 0, 1, 1, 2, 2, 3, 4, 4]
    for copy in added:
        original = RECORDS[copy["id"]]
        assert copy["label"] == original["label"] and copy["text"] != original["text"]
        assert set(copy) == {"id", "text", "label", AUGMENTED}
    kinds = added_by_kind(added)
    assert sum(kinds.values()) == 9 and set(kinds) <= {"synonym", "insert", "swap", "delete"}
    per_edit = ", ".join(f"{e} {kinds.get(e, 0)}" for e in ("synonym", "insert", "swap", "delete"))
    assert lines == [f"data.augment: added 9 edited copies of 5 training records ({per_edit}, seed 3, rate 0.1); "
                     "1 not added: equal to their record or an earlier copy"]
    assert RECORDS[0]["text"] == "The firm said profits rose sharply after strong sales."  # records untouched


def test_same_seed_same_copies_other_seed_other_copies():
    assert run(copies=3)[0] == run(copies=3)[0]
    assert run(copies=3, seed=3)[0] == run(copies=3)[0]  # data.augment.seed null = train.seed (3)
    other = run(copies=3, seed=4)[0]
    assert [r["text"] for r in other] != [r["text"] for r in run(copies=3)[0]]


def test_a_records_copies_do_not_depend_on_the_other_records():
    alone = run(records=RECORDS[:1], copies=3)[0]
    together = run(copies=3)[0]
    assert alone == [r for r in together if r["id"] == 0]
    # and a change to another record changes nothing of record 0's copies
    changed = [RECORDS[0], {**RECORDS[1], "text": "Something else entirely happened today."}] + RECORDS[2:]
    assert [r for r in run(records=changed, copies=3)[0] if r["id"] == 0] == alone


def test_only_the_named_edits_are_drawn():
    for edit in ("synonym", "insert", "swap", "delete"):
        added, _ = run(copies=4, edits=[edit], rate=0.3)
        assert added and added_by_kind(added) == {edit: len(added)}
    added, _ = run(copies=6, edits=["swap", "delete"])
    assert set(added_by_kind(added)) == {"swap", "delete"}


def test_the_rate_sets_how_many_words_an_edit_changes():
    record = {"text": "big quick cheap strong happy rare famous serious modern honest", "label": "x"}  # 10 words
    for rate, n in ((0.1, 1), (0.3, 3), (0.55, 5)):
        added, _ = run(records=[record], copies=5, edits=["synonym"], rate=rate)
        for copy in added:
            assert sum(a != b for a, b in zip(record["text"].split(), copy["text"].split())) == n
        added, _ = run(records=[record], copies=5, edits=["insert"], rate=rate)
        assert {len(c["text"].split()) for c in added} == {10 + n}


def test_copies_equal_to_their_record_or_each_other_are_not_added_but_counted():
    records = [{"text": "word", "label": "a"}, {"text": "[EMAIL] 2005", "label": "b"}]  # nothing to edit
    added, lines = run(records=records, copies=3)
    assert added == []
    assert lines == ["data.augment: added 0 edited copies of 2 training records (synonym 0, insert 0, swap 0, "
                     "delete 0, seed 3, rate 0.1); 6 not added: equal to their record or an earlier copy"]
    # two words, swap only: the first swap changes the text, the next ones give it back or repeat it
    added, lines = run(records=[{"text": "alpha beta", "label": "a"}], copies=3, edits=["swap"])
    assert [r["text"] for r in added] == ["beta alpha"] and lines[0].endswith("2 not added: equal to their "
                                                                                "record or an earlier copy")


def test_records_with_several_texts_get_one_edit_in_all_of_them():
    view = DataView(texts=lambda r: [r["q"], r["a"]],
                    augment=lambda r, fn: {**r, "q": fn(r["q"]), "a": fn(r["a"])})
    rec = {"q": "Why did profits rise so quickly", "a": "Strong sales helped the firm greatly"}
    added, lines = run(records=[rec], view=view, copies=4, edits=["synonym"], rate=0.3)
    assert all(c["q"] != rec["q"] and c["a"] != rec["a"] for c in added)
    # one word of each (n = 1 of 6 words): the fourth copy repeated an earlier one
    assert len(added) == 3 and lines[0].endswith("1 not added: equal to their record or an earlier copy")


def test_nothing_to_do_adds_nothing_and_logs_nothing():
    assert run(copies=0) == ([], [])
    assert run(records=[], copies=2) == ([], [])


def test_a_task_that_cannot_augment_its_records_is_refused_with_its_reason():
    view = DataView(texts=lambda r: [r["text"]], rewrite=lambda r, fn: {**r, "text": fn(r["text"])},
                    no_augment="the text is all target")  # rewritable (redaction), yet not augmented
    with pytest.raises(ConfigError, match=r"data.augment: the text is all target; remove data.augment"):
        run(view=view, copies=1)
