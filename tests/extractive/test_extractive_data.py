"""Extractive QA data: SQuAD JSON (v1, v2) and flat records, offset checks and data.fix_offsets, splits by
context, and the built-in BBC questions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.squad import load_qa_records, nearest_occurrence, split_by_context
from tunelab.errors import DataError

CONTEXT = "Ada Lovelace wrote the first program in 1843. Lovelace worked with Babbage."


def squad(version2: bool = False) -> dict:
    qas = [{"id": "a1", "question": "Who wrote the first program?",
            "answers": [{"text": "Ada Lovelace", "answer_start": 0}, {"text": "Lovelace", "answer_start": 4}]},
           {"id": "a2", "question": "When?", "answers": [{"text": "1843", "answer_start": 40}]}]
    if version2:
        qas.append({"id": "a3", "question": "Who paid?", "answers": [], "is_impossible": True,
                    "plausible_answers": [{"text": "Babbage", "answer_start": 67}]})
    return {"version": "v2.0" if version2 else "1.1",
            "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas},
                                                   {"context": "Another one.", "qas": []}]}]}


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_squad_v1_json(tmp_path):
    records = load_qa_records(str(write(tmp_path / "s.json", squad())))
    assert [r["id"] for r in records] == ["a1", "a2"]
    assert records[0]["answers"] == ["Ada Lovelace", "Lovelace"] and records[0]["starts"] == [0, 4]
    assert records[1]["context"] == CONTEXT and records[1]["_where"] == "data[0].paragraphs[0].qas[1]"


def test_squad_v2_unanswerable_has_no_answers_and_ignores_plausible_ones(tmp_path):
    records = load_qa_records(str(write(tmp_path / "s.json", squad(version2=True))))
    assert records[2]["id"] == "a3" and records[2]["answers"] == [] and records[2]["starts"] == []


def test_flat_jsonl_and_csv_with_json_cells(tmp_path):
    rows = [{"q": "When?", "c": CONTEXT, "a": {"text": ["1843"], "answer_start": [40]}},
            {"q": "Who paid?", "c": CONTEXT, "a": {"text": [], "answer_start": []}}]
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_qa_records(str(tmp_path / "f.jsonl"), question_field="q", context_field="c", answers_field="a")
    assert [(r["answers"], r["starts"], r["_line"]) for r in records] == [(["1843"], [40], 1), ([], [], 2)]
    import csv

    with open(tmp_path / "f.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["q", "c", "a"])
        w.writeheader()
        w.writerows({**r, "a": json.dumps(r["a"])} for r in rows)
    again = load_qa_records(str(tmp_path / "f.csv"), question_field="q", context_field="c", answers_field="a")
    assert [r["answers"] for r in again] == [["1843"], []]


def test_a_json_list_is_flat_records(tmp_path):
    rows = [{"question": "When?", "context": CONTEXT, "answers": {"text": ["1843"], "answer_start": [40]}}]
    assert load_qa_records(str(write(tmp_path / "l.json", rows)))[0]["answers"] == ["1843"]


def test_a_misplaced_answer_names_file_record_line_and_both_strings(tmp_path):
    rows = [{"question": "When?", "context": CONTEXT, "answers": {"text": ["1843"], "answer_start": [40]}},
            {"question": "Who?", "context": CONTEXT, "answers": {"text": ["Babbage"], "answer_start": [60]}}]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        load_qa_records(str(path))
    message = str(e.value)
    assert str(path) in message and ":2" in message and "record 2" in message
    assert "'Babbage'" in message and "answer_start 60" in message and "'d with '" in message
    assert "data.fix_offsets" in message and "\n" not in message


def test_a_misplaced_squad_answer_names_its_place(tmp_path):
    data = squad()
    data["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 39
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id a2\): the answer '1843' is "
                                        r"not at answer_start 39: the context has ' 184' there"):
        load_qa_records(str(write(tmp_path / "s.json", data)))


def test_fix_offsets_moves_to_the_nearest_occurrence_and_counts(tmp_path):
    rows = [{"question": "Who?", "context": CONTEXT, "answers": {"text": ["Lovelace"], "answer_start": [50]}},
            {"question": "Who?", "context": CONTEXT, "answers": {"text": ["Lovelace"], "answer_start": [2]}},
            {"question": "Who?", "context": CONTEXT, "answers": {"text": ["Lovelace"], "answer_start": [4]}}]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = []
    records = load_qa_records(str(path), fix_offsets=True, log=lines.append)
    assert [r["starts"] for r in records] == [[46], [4], [4]]
    assert lines == [f"{path}: data.fix_offsets moved 2 answers to where their text is in the context (the nearest "
                     "occurrence to the given answer_start)"]
    rows[0]["answers"]["text"] = ["Turing"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="the answer 'Turing' does not occur anywhere in the context"):
        load_qa_records(str(path), fix_offsets=True)


def test_nearest_occurrence_prefers_the_earlier_on_a_tie():
    assert nearest_occurrence("ab..ab..ab", "ab", 5) == 4
    assert nearest_occurrence("ab..ab", "ab", 1) == 0
    assert nearest_occurrence("abc", "x", 0) is None


@pytest.mark.parametrize("row, message", [
    ({"context": CONTEXT, "answers": {"text": [], "answer_start": []}}, "field 'question' is missing"),
    ({"question": "q", "context": CONTEXT, "answers": {"text": ["x"]}}, "field 'answers' must be"),
    ({"question": "q", "context": CONTEXT, "answers": {"text": ["Ada"], "answer_start": ["0"]}},
     "answer_start '0' of 'Ada' is not a character offset"),
    ({"question": "q", "context": CONTEXT, "answers": {"text": [" "], "answer_start": [0]}}, "an answer text is ' '"),
])
def test_bad_records_are_one_line_errors(tmp_path, row, message):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message) as e:
        load_qa_records(str(path))
    assert f"{path}:1" in str(e.value) and "\n" not in str(e.value)


def test_a_json_object_without_data_is_refused(tmp_path):
    with pytest.raises(DataError, match="SQuAD-style JSON file holds"):
        load_qa_records(str(write(tmp_path / "x.json", {"version": 1})))


def test_splits_keep_the_questions_of_a_context_together():
    records = [{"context": f"c{i % 10}"} for i in range(50)]
    parts = split_by_context(records, 0.2, 0.2, seed=0, hold_out=("validation", "test"))
    assert sorted(i for p in parts.values() for i in p) == list(range(50))
    contexts = {name: {records[i]["context"] for i in idx} for name, idx in parts.items()}
    assert contexts == {"test": {"c7", "c8"}, "validation": {"c1", "c4"},
                        "train": {"c0", "c2", "c3", "c5", "c6", "c9"}}
    assert not (contexts["train"] & contexts["test"]) and not (contexts["train"] & contexts["validation"])
    assert parts == split_by_context(records, 0.2, 0.2, seed=0, hold_out=("validation", "test"))


def test_builtin_bbc_qa_is_seeded_exact_and_a_quarter_unanswerable():
    from tunelab.data.bbc_qa import bbc_qa

    records = bbc_qa()
    assert len(records) == 4425
    unanswerable = [r for r in records if not r["answers"]["text"]]
    assert len(unanswerable) == 1110
    for r in records:
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"]):
            assert r["context"][start:start + len(text)] == text
    # an unanswerable question's span is not in the article it is paired with
    assert all(r["question"].rstrip("?") not in r["context"] for r in unanswerable)
    assert [r["id"] for r in records[:3]] == [r["id"] for r in bbc_qa()[:3]]


def test_a_squad_question_without_answers_is_unlabelled_not_unanswerable(tmp_path):
    data = squad(version2=True)
    del data["data"][0]["paragraphs"][0]["qas"][1]["answers"]
    records = load_qa_records(str(write(tmp_path / "s.json", data)))
    assert [r["answers"] for r in records] == [["Ada Lovelace", "Lovelace"], None, []]


def test_a_data_wrapper_that_is_not_squad_keeps_the_records_message(tmp_path):
    from tunelab.data.sources import load_records

    with pytest.raises(DataError, match="must hold a list of objects"):
        load_records(str(write(tmp_path / "d.json", {"data": [{"text": "x", "label": "a"}]})))
