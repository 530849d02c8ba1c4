"""Data: every source format, label folders, seeded stratified splits, data.limit, and errors for bad input.

Every bad input must be a DataError naming the file (and the line where there is one); through the CLI it
must be exit code 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main
from tunelab.data.sources import load_records
from tunelab.data.splits import stratified_split, stratified_subset
from tunelab.errors import DataError
from tunelab.tasks.classification import label_set, raw_labels, split_records

FORMATS = ["jsonl", "json", "csv", "tsv", "parquet", "folder"]


def pairs(records: list[dict]) -> list[tuple[str, str]]:
    return sorted((r["text"], str(r["label"])) for r in records)


# ---------------------------------------------------------------------------------------------
# Sources


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_the_same_records(tmp_path, helpers, fmt):
    records = helpers.synthetic_records(4)
    loaded = load_records(str(helpers.write_records(tmp_path, fmt, records)))
    assert pairs(loaded) == pairs(records)


def test_label_folder_takes_labels_from_sub_folder_names(tmp_path, helpers):
    folder = helpers.write_records(tmp_path, "folder", helpers.synthetic_records(2))
    (folder / ".hidden").mkdir()  # dot-folders are not labels
    loaded = load_records(str(folder))
    assert Counter(r["label"] for r in loaded) == {"food": 2, "sport": 2, "tech": 2}
    assert all(Path(r["_file"]).parent.name == r["label"] for r in loaded)


def test_jsonl_records_remember_their_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n')
    assert [r["_line"] for r in load_records(str(path))] == [1, 3]


def test_csv_keeps_line_breaks_inside_quoted_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"line one\nline two",a\nplain,b\n', encoding="utf-8")
    records = load_records(str(path))
    assert [(r["text"], r["label"], r["_line"]) for r in records] == [("line one\nline two", "a", 3),
                                                                     ("plain", "b", 4)]


def test_jsonl_text_may_hold_unicode_line_separators(tmp_path):
    # Only "\n" ends a JSON Lines record; U+2028 / U+0085 are ordinary characters inside a string.
    texts = ["a\u2028b", "c\x85d", "e\x1cf"]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": "x"}, ensure_ascii=False) + "\n" for t in texts),
                    encoding="utf-8")
    assert [r["text"] for r in load_records(str(path))] == texts


def test_utf8_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nthe goal,sport\n")  # as spreadsheet programs save it
    assert pairs(load_records(str(path))) == [("the goal", "sport")]


def test_suffix_case_does_not_matter(tmp_path, helpers):
    records = helpers.synthetic_records(2)
    path = helpers.write_records(tmp_path, "tsv", records).rename(tmp_path / "DATA.TSV")
    assert pairs(load_records(str(path))) == pairs(records)


def test_integer_and_string_labels_are_the_same_label():
    records = [{"label": 3}, {"label": "3"}, {"label": 3.0}, {"label": 10}]
    labels = raw_labels(records, "label", "x.jsonl")
    assert labels == ["3", "3", "3", "10"]
    assert label_set(labels) == ["3", "10"]  # numeric order, not string order


@pytest.mark.parametrize("values, bad, kinds", [
    ([1, 2, "one"], 3, ("'one' is a string", "record 1 (x.jsonl:1) has an integer label (1)")),
    (["spam", "ham", True], 3, ("True is a boolean", "record 1 (x.jsonl:1) has a string label ('spam')")),
    ([True, False, 0], 3, ("0 is an integer", "has a boolean label (True)")),
    (["1", "one", 2], 3, ("2 is an integer", "record 2 (x.jsonl:2) has a string label ('one')"))])
def test_labels_of_mixed_json_types_are_an_error_naming_both_records(values, bad, kinds):
    # 1 and "one" (or true) used to become separate classes without a word.
    records = [{"label": v, "_line": i + 1} for i, v in enumerate(values)]
    with pytest.raises(DataError) as e:
        raw_labels(records, "label", "x.jsonl")
    assert (e.value.path, e.value.line) == ("x.jsonl", bad)
    assert all(k in str(e.value) for k in kinds), str(e.value)
    assert "labels of mixed JSON types would become separate classes" in str(e.value)


def test_labels_that_mix_compatibly_are_fine():
    assert raw_labels([{"label": v} for v in ("1", "one", "2")], "label", "x.csv") == ["1", "one", "2"]
    assert raw_labels([{"label": v} for v in (True, False)], "label", "x.jsonl") == ["True", "False"]


@pytest.mark.parametrize("value, text", [
    ([1, 2], "label field 'label' holds a list ([1, 2]); a label is one string or integer"),
    ({"name": "a"}, "label field 'label' holds an object ({'name': 'a'})"),
    (0.5, "label 0.5 is not a whole number; classification needs class labels (tunelab has no regression task "
          "yet)"),
    (None, "label field 'label' is missing or empty")])
def test_a_label_that_is_not_a_class_says_what_it_is(value, text):
    with pytest.raises(DataError, match=rf"^x.jsonl:2: record 2: {re.escape(text)}"):
        raw_labels([{"label": 1, "_line": 1}, {"label": value, "_line": 2}], "label", "x.jsonl")


# ---------------------------------------------------------------------------------------------
# Splits


def class_keys(counts: dict[str, int]) -> list[str]:
    return [k for k, n in counts.items() for _ in range(n)]


def test_split_is_stratified():
    keys = class_keys({"a": 40, "b": 20, "c": 10})
    rest, held = stratified_split(keys, 0.2, seed=0)
    assert sorted(rest + held) == list(range(len(keys)))
    assert Counter(keys[i] for i in held) == {"a": 8, "b": 4, "c": 2}


def test_split_with_same_seed_is_identical_and_other_seed_differs():
    keys = class_keys({"a": 40, "b": 20, "c": 10})
    assert stratified_split(keys, 0.2, seed=0) == stratified_split(keys, 0.2, seed=0)
    assert stratified_split(keys, 0.2, seed=0) != stratified_split(keys, 0.2, seed=1)


def test_small_class_appears_in_both_parts():
    keys = class_keys({"a": 40, "b": 2})
    rest, held = stratified_split(keys, 0.05, seed=0)
    assert {keys[i] for i in held} == {"a", "b"} and {keys[i] for i in rest} == {"a", "b"}


@pytest.mark.parametrize("counts, size", [({"a": 40, "b": 20, "c": 10}, 7), ({"a": 40, "b": 20, "c": 10}, 50),
                                          ({"a": 40, "b": 20, "c": 10}, 69), ({"a": 5, "b": 5, "c": 5}, 8),
                                          ({"a": 3, "b": 3, "c": 3, "d": 3}, 2)])
def test_subset_has_exactly_the_limit_and_keeps_proportions(counts, size):
    keys = class_keys(counts)
    subset = stratified_subset(keys, size, seed=0)
    assert len(subset) == len(set(subset)) == size
    got = Counter(keys[i] for i in subset)
    for k, n in counts.items():
        assert abs(got[k] - n * size / len(keys)) < 1, (k, got)


def test_subset_keeps_every_class_when_the_limit_allows():
    keys = class_keys({"a": 100, "b": 100, "c": 2})
    assert {keys[i] for i in stratified_subset(keys, 10, seed=0)} == {"a", "b", "c"}


def test_config_splits_are_stratified_and_seeded(make_config):
    splits = split_records(make_config(), log=lambda _: None)
    sizes = {name: Counter(r["label"] for r in recs) for name, (recs, _) in splits.items()}
    assert sizes == {"test": {"food": 4, "sport": 4, "tech": 4},       # round(30 * 0.15) each
                     "validation": {"food": 5, "sport": 5, "tech": 5},  # 0.15 of the file, from the rest
                     "train": {"food": 21, "sport": 21, "tech": 21}}
    lines = {name: sorted(r["_line"] for r in recs) for name, (recs, _) in splits.items()}
    again = split_records(make_config(), log=lambda _: None)
    assert {name: sorted(r["_line"] for r in recs) for name, (recs, _) in again.items()} == lines
    other = split_records(make_config({"train.seed": 1}), log=lambda _: None)
    assert sorted(r["_line"] for r in other["test"][0]) != lines["test"]


def test_config_limit_keeps_class_proportions(tmp_path, helpers, make_config):
    train = helpers.write_jsonl(tmp_path / "unbalanced.jsonl",
                                helpers.synthetic_records(0, counts={"food": 60, "sport": 30, "tech": 10}))
    cfg = make_config({"data.train": str(train), "data.limit": 40, "data.val_fraction": 0.1,
                       "data.test_fraction": 0.1})
    train_records, _ = split_records(cfg, log=lambda _: None)["train"]
    # 100 records: 10% test and 10% validation per class leave 48/24/8; half of that is the limit of 40.
    assert Counter(r["label"] for r in train_records) == {"food": 24, "sport": 12, "tech": 4}


# ---------------------------------------------------------------------------------------------
# Bad input: each case writes its files and returns (config overrides, file named, line or None, text)


def _jsonl_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _good_lines(n: int = 6) -> list[str]:
    labels = ["food", "sport", "tech"]
    words = {"food": "bread soup rice", "sport": "goal team win", "tech": "code chip data"}
    return [json.dumps({"text": f"the {words[labels[i % 3]]}", "label": labels[i % 3]}) for i in range(n)]


def malformed_json(d: Path):
    lines = _good_lines()
    lines[2] = '{"text": "the goal team", "label": '
    return {"data.train": str(_jsonl_lines(d / "train.jsonl", lines))}, "train.jsonl", 3, "malformed JSON"


def missing_text(d: Path):
    lines = _good_lines()
    lines[4] = json.dumps({"body": "the goal team", "label": "sport"})
    return {"data.train": str(_jsonl_lines(d / "train.jsonl", lines))}, "train.jsonl", 5, "text field 'text'"


def missing_label(d: Path):
    lines = _good_lines()
    lines[3] = json.dumps({"text": "the goal team"})
    return {"data.train": str(_jsonl_lines(d / "train.jsonl", lines))}, "train.jsonl", 4, "label field 'label'"


def empty_csv_label(d: Path):
    path = d / "train.csv"
    path.write_text("text,label\nthe goal,sport\nthe bread,food\nthe code,\nthe chip,tech\n", encoding="utf-8")
    return {"data.train": str(path)}, "train.csv", 4, "label field 'label'"


def empty_file(d: Path):
    (d / "train.jsonl").write_text("")
    return {"data.train": str(d / "train.jsonl")}, "train.jsonl", None, "no records"


def not_utf8(d: Path):
    lines = [line.encode() for line in _good_lines()]
    lines[2] = '{"text": "caf\u00e9 goal", "label": "sport"}'.encode("latin-1")
    (d / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return {"data.train": str(d / "train.jsonl")}, "train.jsonl", 3, "not valid UTF-8"


def unseen_label(split: str):
    def case(d: Path):
        lines = _good_lines(3)
        lines[1] = json.dumps({"text": "the guitar music", "label": "music"})
        return ({f"data.{split}": str(_jsonl_lines(d / f"{split}.jsonl", lines))}, f"{split}.jsonl", 2,
                "label 'music' does not occur in the training data")
    case.__name__ = f"unseen_label_in_{split}"
    return case


def missing_file(d: Path):
    return {"data.train": str(d / "nope.jsonl")}, "nope.jsonl", None, "does not exist"


def missing_folder(d: Path):
    return {"data.train": str(d / "no_such_folder")}, "no_such_folder", None, "does not exist"


def unsupported_extension(d: Path):
    (d / "train.xml").write_text("<data/>")
    return {"data.train": str(d / "train.xml")}, "train.xml", None, "unsupported file type '.xml'"


def mixed_label_types(d: Path):
    lines = _good_lines()
    lines[3] = json.dumps({"text": "the goal team", "label": 7})
    return {"data.train": str(_jsonl_lines(d / "train.jsonl", lines))}, "train.jsonl", 4, "mixed JSON types"


def fractional_label(d: Path):
    lines = _good_lines()
    lines[1] = json.dumps({"text": "the goal team", "label": 0.25})
    return {"data.train": str(_jsonl_lines(d / "train.jsonl", lines))}, "train.jsonl", 2, "not a whole number"


BAD_INPUTS = [malformed_json, missing_text, missing_label, mixed_label_types, fractional_label, empty_csv_label,
              empty_file, not_utf8,
              unseen_label("validation"), unseen_label("test"), missing_file, missing_folder,
              unsupported_extension]


@pytest.fixture
def bad_case_config(tmp_path, data_dir):
    """Config overrides for a bad-input case, with the good validation/test files unless the case sets one."""
    def make(case):
        folder = tmp_path / "bad"
        folder.mkdir()
        overrides, name, line, text = case(folder)
        base = {"data.train": str(data_dir / "train.jsonl"), "data.validation": str(data_dir / "valid.jsonl"),
                "data.test": str(data_dir / "test.jsonl")}
        return {**base, **overrides}, str(folder / name), line, text
    return make


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.__name__)
def test_bad_input_is_a_data_error_with_file_and_line(bad_case_config, make_config, helpers, case):
    overrides, path, line, text = bad_case_config(case)
    with pytest.raises(DataError) as e:
        helpers.train_quietly(make_config(overrides))
    assert e.value.path == path
    assert e.value.line == line
    assert text in str(e.value)
    assert str(e.value).startswith(f"{path}:{line}: " if line else f"{path}: ")


def write_config(tmp_path: Path, overrides: dict, helpers, tiny_bert) -> Path:
    cfg = helpers.tiny_config(tiny_bert, Path("unused.jsonl"), tmp_path / "run", overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.__name__)
def test_bad_input_via_cli_exits_2_with_one_line(tmp_path, bad_case_config, helpers, tiny_bert, capsys, case):
    overrides, path, line, text = bad_case_config(case)
    config = write_config(tmp_path, overrides, helpers, tiny_bert)
    assert main(["train", str(config), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}:{line}: " if line else f"error: {path}: ")
    assert text in err
    assert "Traceback" not in out + err


def test_bad_input_in_a_real_process_exits_2_without_traceback(tmp_path, bad_case_config, helpers, tiny_bert):
    overrides, path, line, _ = bad_case_config(malformed_json)
    config = write_config(tmp_path, overrides, helpers, tiny_bert)
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(config), "--no-progress"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {path}:{line}: malformed JSON")
    assert "Traceback" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# Training batches: length grouping only where it saves padding


def test_group_by_length_auto_groups_only_when_it_saves_padding():
    from tunelab.data.batching import length_grouped_batches, random_batches, training_batches

    varied = [5, 200, 7, 180, 6, 190, 8, 170] * 8      # random batches pad the short ones to ~200
    assert training_batches(varied, 4, seed=3) == length_grouped_batches(varied, 4, seed=3)
    nearly_equal = [256] * 60 + [250, 240, 230, 255]  # grouping could save under 1%
    assert training_batches(nearly_equal, 4, seed=3) == random_batches(64, 4, seed=3)
    assert training_batches(nearly_equal, 4, 3, mode="always") == length_grouped_batches(nearly_equal, 4, seed=3)
    assert training_batches(varied, 4, 3, mode="never") == random_batches(64, 4, seed=3)
    for plan in (training_batches(varied, 4, 3), training_batches(nearly_equal, 4, 3)):
        assert sorted(i for b in plan for i in b) == list(range(64))  # every example once per epoch


def test_padded_size_counts_each_batch_at_its_longest_example():
    from tunelab.data.batching import padded_size

    assert padded_size([[0, 1], [2]], [3, 5, 4]) == 2 * 5 + 4
