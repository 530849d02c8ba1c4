"""Readers of token-tagging data: CoNLL text, word records (JSONL / JSON / CSV) and raw text with character-span
entities; every error is one line naming the file and the line or record."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tunelab.config import DataConfig
from tunelab.data.tagging import load_tagged, words_of
from tunelab.errors import DataError, TunelabError

D = DataConfig()

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- O O
Zoë NNP B-NP B-PER
"""


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(path: Path, records: list[dict]) -> str:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def test_conll_sentences_docstart_and_lines(tmp_path):
    recs = load_tagged(write(tmp_path / "a.conll", CONLL), D)
    assert [r["tokens"] for r in recs] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["Zoë"]]
    assert [r["tags"] for r in recs] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-PER"]]
    assert [(r["_line"], r["_where"]) for r in recs] == [(3, "sentence 1"), (7, "sentence 2"), (11, "sentence 3")]
    assert recs[0]["text"] is None and recs[0]["offsets"] is None and recs[0]["_record"] is None


def test_conll_tag_column_and_txt_suffix(tmp_path):
    ref = write(tmp_path / "a.txt", CONLL)
    chunks = load_tagged(ref, replace(D, tag_column=2))
    assert chunks[1]["tags"] == ["B-NP", "I-NP"]
    assert load_tagged(ref, replace(D, tag_column=-2))[0]["tags"] == ["B-NP", "B-VP", "B-NP"]
    with pytest.raises(TunelabError, match="data.tag_column: 0 is the word column"):
        load_tagged(ref, replace(D, tag_column=0))


def test_conll_too_few_columns_names_file_and_line(tmp_path):
    ref = write(tmp_path / "bad.conll", "John\tB-PER\nsmith\n\n")
    with pytest.raises(DataError) as e:
        load_tagged(ref, D)
    assert str(e.value) == (f"{ref}:2: 1 column ('smith'); read as CoNLL (one word per line, tag in column -1): "
                            "each line needs at least 2; set data.tag_column or fix the line")
    with pytest.raises(DataError, match=r"a.conll:1: 4 columns .* at least 5"):
        load_tagged(write(tmp_path / "a.conll", CONLL.split("\n", 2)[2]), replace(D, tag_column=4))


def test_conll_unlabelled_words_only(tmp_path):
    ref = write(tmp_path / "words.conll", "Paris\nis\n\nnice\n")
    recs = load_tagged(ref, D, labelled=False)
    assert [(r["tokens"], r["tags"]) for r in recs] == [(["Paris", "is"], None), (["nice"], None)]
    with pytest.raises(DataError, match="words.conll:1: 1 column"):
        load_tagged(ref, D)


def test_word_records_jsonl_json_csv(tmp_path):
    records = [{"tokens": ["Ann", "Lee", "ran"], "tags": ["B-PER", "I-PER", "O"], "id": 7}]
    for ref in (jsonl(tmp_path / "a.jsonl", records), write(tmp_path / "a.json", json.dumps(records))):
        (rec,) = load_tagged(ref, D)
        assert rec["tokens"] == ["Ann", "Lee", "ran"] and rec["tags"] == ["B-PER", "I-PER", "O"]
        assert rec["_where"] == "record 1" and rec["_record"]["id"] == 7
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerows([["words", "labels"], ["Ann Lee ran", '["B-PER", "I-PER", "O"]']])
    (rec,) = load_tagged(str(tmp_path / "a.csv"), replace(D, tokens_field="words", tags_field="labels"))
    assert (rec["tokens"], rec["tags"], rec["_line"]) == (["Ann", "Lee", "ran"], ["B-PER", "I-PER", "O"], 2)


def test_word_record_errors_name_the_record(tmp_path):
    ref = jsonl(tmp_path / "a.jsonl", [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError) as e:
        load_tagged(ref, D)
    assert str(e.value) == (f"{ref}:2: record 2: 2 words but 1 tags (read as word records: 'tokens' + 'tags'); "
                            "each word needs one tag")
    ref = jsonl(tmp_path / "b.jsonl", [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a"]}])
    with pytest.raises(DataError, match=r"b.jsonl:2: record 2: no 'tags' field"):
        load_tagged(ref, D)
    assert load_tagged(ref, D, labelled=False)[1]["tags"] is None
    ref = jsonl(tmp_path / "c.jsonl", [{"tokens": ["a"], "tags": ["O"]}, {"text": "a"}])
    with pytest.raises(DataError, match=r"c.jsonl:2: record 2: no 'tokens' field .*detected from record 1"):
        load_tagged(ref, D)
    ref = jsonl(tmp_path / "d.jsonl", [{"words": ["a"]}])
    with pytest.raises(DataError, match=r"d.jsonl:1: record 1 has neither 'tokens' .* its fields: words"):
        load_tagged(ref, D)
    ref = jsonl(tmp_path / "e.jsonl", [{"tokens": ["a", 3.5], "tags": ["O", "O"]}])
    with pytest.raises(DataError, match=r"e.jsonl:1: record 1: 'tokens' must be a list of strings"):
        load_tagged(ref, D)


TEXT = "José Müller-Lüdenscheid flew to São Paulo, didn't he?"


def test_words_of_splits_at_space_and_punctuation_keeping_offsets():
    words, offsets = words_of(TEXT)
    # inner hyphens and apostrophes join a word (as CoNLL data writes "Müller-Lüdenscheid" and "didn't")
    assert words == ["José", "Müller-Lüdenscheid", "flew", "to", "São", "Paulo", ",", "didn't", "he", "?"]
    assert words_of("a - b -c 'd' e")[0] == ["a", "-", "b", "-", "c", "'", "d", "'", "e"]
    assert [TEXT[s:e] for s, e in offsets] == words
    decomposed = "Zoe\u0308 cafe\u0301."  # combining marks stay inside their word
    assert words_of(decomposed)[0] == ["Zoe\u0308", "cafe\u0301", "."]


def test_text_entities_become_iob2_tags(tmp_path):
    ents = [{"start": 0, "end": 23, "label": "PER"}, [32, 41, "LOC"]]
    (rec,) = load_tagged(jsonl(tmp_path / "t.jsonl", [{"text": TEXT, "entities": ents}]), D)
    assert rec["text"] == TEXT and rec["tokens"] == words_of(TEXT)[0] and rec["offsets"] == words_of(TEXT)[1]
    assert rec["tags"] == ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"] + ["O"] * 4
    unlabelled = load_tagged(jsonl(tmp_path / "u.jsonl", [{"text": TEXT}]), D, labelled=False)
    assert unlabelled[0]["tags"] is None and unlabelled[0]["tokens"][0] == "José"


@pytest.mark.parametrize("entity, message", [
    ({"start": 1, "end": 4, "label": "PER"}, "entity PER [1, 4) 'osé' does not start and end on word boundaries"),
    ({"start": 0, "end": 5, "label": "PER"}, "entity PER [0, 5) 'José ' does not start and end on word"),
    ({"start": 5, "end": 23, "label": "ORG"}, "entity ORG [5, 23) 'Müller-Lüdenscheid' overlaps another entity"),
    ({"start": 0, "end": 99, "label": "PER"}, "needs integer offsets with 0 <= start < end <= 53"),
    ({"start": 0, "end": 4}, "is not {start, end, label}"),
])
def test_bad_spans_are_errors_naming_record_and_entity(tmp_path, entity, message):
    ents = [{"start": 0, "end": 23, "label": "PER"}, entity] if "overlaps" in message else [entity]
    ref = jsonl(tmp_path / "t.jsonl", [{"text": "x", "entities": []}, {"text": TEXT, "entities": ents}])
    with pytest.raises(DataError) as e:
        load_tagged(ref, D)
    assert str(e.value).startswith(f"{ref}:2: record 2: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_skip_bad_spans_drops_and_counts(tmp_path):
    records = [{"text": TEXT, "entities": [{"start": 0, "end": 23, "label": "PER"},
                                           {"start": 5, "end": 23, "label": "ORG"},   # overlaps
                                           {"start": 1, "end": 4, "label": "PER"},    # inside a word
                                           {"start": 32, "end": 41, "label": "LOC"}]},
               {"text": "Zoë sang.", "entities": [{"start": 0, "end": 2, "label": "PER"}]}]
    lines = []
    recs = load_tagged(jsonl(tmp_path / "t.jsonl", records), replace(D, skip_bad_spans=True), lines.append)
    assert recs[0]["tags"][:6] == ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]
    assert recs[1]["tags"] == ["O", "O", "O"]
    assert lines == [f"{tmp_path / 't.jsonl'}: data.skip_bad_spans dropped 3 entities (2 not on word boundaries, "
                     "1 overlapping another)"]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tagged(str(tmp_path / "none.conll"), D)
    with pytest.raises(DataError, match="holds no sentences"):
        load_tagged(write(tmp_path / "empty.conll", "-DOCSTART- O\n\n"), D)


def test_csv_raw_text_with_entities_cell_and_other_field_names(tmp_path):
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["sentence", "spans"], ["Zoë visited Kraków.", '[[0, 3, "PER"], [12, 18, "LOC"]]'],
                                 ["Nothing here.", "[]"]])
    d = replace(D, text_field="sentence", entities_field="spans")
    recs = load_tagged(str(tmp_path / "t.csv"), d)
    assert [(r["tokens"], r["tags"]) for r in recs] == [(["Zoë", "visited", "Kraków", "."],
                                                         ["B-PER", "O", "B-LOC", "O"]),
                                                        (["Nothing", "here", "."], ["O", "O", "O"])]
    assert recs[1]["offsets"] == [(0, 7), (8, 12), (12, 13)] and recs[1]["_line"] == 3
    with pytest.raises(DataError, match=r"t.jsonl:1: record 1: entity .* needs a label \(a non-empty string, not"):
        load_tagged(jsonl(tmp_path / "t.jsonl", [{"text": "a b", "entities": [[0, 1, "O"]]}]), D)


def test_integer_tags_are_refused_as_tag_ids(tmp_path):
    ref = jsonl(tmp_path / "ids.jsonl", [{"tokens": ["Ada", "wrote"], "tags": [1, 0]}])
    with pytest.raises(DataError, match="record 1: 'tags' holds integers .*tag ids, not tag names"):
        load_tagged(ref, D)
