"""tunelab.io.not_a_folder: the one check behind every "--output-dir X is a file" refusal (train, tune,
ensemble), for absolute and relative paths alike."""
from __future__ import annotations

from pathlib import Path

from tunelab.io import not_a_folder


def test_a_folder_or_a_path_that_can_become_one_passes(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path)
    for path in (tmp_path / "here", tmp_path / "new" / "deeper", Path("here"), Path("new"), Path(".")):
        assert not_a_folder(path) is None, path


def test_a_file_or_a_path_under_one_says_which(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("mine")
    monkeypatch.chdir(tmp_path)
    for path in (tmp_path / "a_file", Path("a_file")):  # relative: the file itself, not "under" it
        assert not_a_folder(path) == "is a file", path
    for path in (tmp_path / "a_file" / "run", Path("a_file/run/x")):
        assert not_a_folder(path) == f"is under {tmp_path / 'a_file'}, which is a file", path
    assert (tmp_path / "a_file").read_text() == "mine"
