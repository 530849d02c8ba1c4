"""`tunelab index build / add / query` as a user meets them: the lines printed, --json, questions on standard
input, and every mistake as one line with exit code 2 (in-process through tunelab.cli.main)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from tunelab.cli import main
from tunelab.cli.index import shorten

DOCS = {
    "sport.txt": "goal match team coach player score league win " * 3,
    "food.txt": "bread cheese soup apple cook taste rice salad " * 3,
    "tech/chips.md": "computer software chip code robot data phone web " * 3,
}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def docs(tmp_path) -> Path:
    for name, text in DOCS.items():
        (tmp_path / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / name).write_text(text, encoding="utf-8")
    return tmp_path / "docs"


@pytest.fixture
def built(docs, tiny_bert, capsys) -> Path:
    assert main(["index", "build", "--corpus", str(docs), "--model", str(tiny_bert), "--output", "idx",
                 "--chunk-size", "16", "--overlap", "4", "--no-progress"]) == 0
    capsys.readouterr()
    return Path("idx")


def test_no_progress_quiets_that_command_only(built):
    from tunelab.train import logging as tl_logging

    assert built.is_dir() and tl_logging._enabled is True  # the build ran with --no-progress


def error_of(capsys, argv: list[str]) -> str:
    """Run a command that must fail: exit code 2, one line on stderr, no traceback; returns the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


def test_build_query_add(docs, tiny_bert, capsys, tmp_path, monkeypatch):
    assert main(["index", "build", "--corpus", str(docs), "--model", str(tiny_bert), "--output", "idx",
                 "--chunk-size", "16", "--overlap", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    # 24 tokens a document, 14 per window, 10 new each: 2 windows each
    assert out.startswith("indexed 3 documents as 6 passages in ") and out.endswith(
        " passages/s), exact search; written to idx"), out

    assert main(["index", "query", "idx", "--text", "bread cheese soup", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(" 1   ") and " food.txt#" in lines[0]
    assert lines[0].split()[0] == "1" and float(lines[0].split()[1]) > float(lines[1].split()[1])

    monkeypatch.setattr("sys.stdin", io.StringIO("robot chip code\n\nbread soup\n"))
    assert main(["index", "query", "idx", "-k", "1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in rows] == ["robot chip code", "bread soup"]
    hit = rows[0]["hits"][0]
    assert set(hit) == {"passage_id", "doc_id", "text", "score", "rank", "start", "end"}
    assert DOCS[hit["doc_id"]][hit["start"]:hit["end"]] == hit["text"] and hit["rank"] == 1

    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "music.txt").write_text("music guitar " * 4, encoding="utf-8")
    (tmp_path / "more" / "blank.txt").write_text("", encoding="utf-8")
    assert main(["index", "add", "idx", "--corpus", "more", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("added 1 documents (1 empty skipped) as 1 passages in ")
    assert out.endswith("; idx now holds 4 documents, 7 passages")
    assert main(["index", "query", "idx", "--text", "guitar", "-k", "1"]) == 0
    assert "music.txt#0  music guitar music guitar" in capsys.readouterr().out


def test_mistakes_are_one_line_errors(built, docs, tiny_bert, capsys, tmp_path, monkeypatch):
    assert "already holds an index; add --overwrite" in error_of(
        capsys, ["index", "build", "--corpus", str(docs), "--output", "idx"])
    assert "is a folder that is not a tunelab index; it is never replaced" in error_of(
        capsys, ["index", "build", "--corpus", str(docs), "--output", str(docs), "--overwrite"])
    assert "nope: does not exist; --corpus takes a folder" in error_of(
        capsys, ["index", "build", "--corpus", "nope", "--model", str(tiny_bert), "--output", "x"])
    assert "--chunk-size 128: the encoder reads at most 64 tokens" in error_of(
        capsys, ["index", "build", "--corpus", str(docs), "--model", str(tiny_bert), "--output", "x"])
    assert "is not a tunelab index (no index.json)" in error_of(capsys, ["index", "query", str(docs), "--text", "a"])
    assert "-k 0: give the number of passages to show" in error_of(capsys, ["index", "query", "idx", "--text", "a",
                                                                            "-k", "0"])
    assert "ids are already in idx (e.g. food.txt, sport.txt, tech/chips.md); add --skip-existing" in error_of(
        capsys, ["index", "add", "idx", "--corpus", str(docs)])
    monkeypatch.setattr("sys.stdin", io.StringIO("\n  \n"))
    assert "give --text \"...\" (repeatable) or questions on standard input" in error_of(
        capsys, ["index", "query", "idx"])
    assert not Path("x").exists()


def test_another_encoder_is_refused(built, capsys):
    line = error_of(capsys, ["index", "query", "idx", "--text", "goal", "--model", "builtin:minilm-l6"])
    assert line.startswith("error: idx was built with encoder ")
    assert "; builtin:minilm-l6 is another (fingerprint" in line


def test_a_run_of_another_task_is_not_an_encoder(tiny_bert, data_dir, tmp_path, helpers, docs, capsys):
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "cls-run")
    run = helpers.train_quietly(cfg)
    assert error_of(capsys, ["index", "build", "--corpus", str(docs), "--model", str(run), "--output", "x"]) == (
        f"error: {run} is a classification run, not an encoder; pass a run of task retrieval or a model reference "
        "such as builtin:minilm-l6 (--model)")


def test_shorten():
    assert shorten("a  b\n\tc", 10) == "a b c"
    assert shorten("abcdef ghij", 8) == "abcdef…"
    assert len(shorten("x" * 50, 20)) == 20


def test_a_retrieval_run_is_an_encoder(tiny_bert, tmp_path, helpers, docs, capsys):
    """A finished run of task retrieval embeds with its own weights, pooling and max_length."""
    from tunelab.config import config_from_dict
    from tunelab.retrieval.embed import load_encoder
    from tunelab.retrieval.index import load_index

    pairs = helpers.write_jsonl(tmp_path / "pairs.jsonl", [
        {"query": f"{a} {b}", "positive": f"{b} {a} news"} for a in ("goal", "bread", "chip", "team", "soup")
        for b in ("match", "cheese", "code", "coach")])
    cfg = config_from_dict({
        "task": "retrieval", "model": {"name": str(tiny_bert), "max_length": 16},
        "data": {"train": str(pairs), "val_fraction": 0.0, "test_fraction": 0.0}, "retrieval": {"pooling": "cls"},
        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "seed": 0, "device": "cpu",
                  "precision": "fp32", "early_stopping": {"patience": None}},
        "output_dir": str(tmp_path / "retriever")})
    run = helpers.train_quietly(cfg)
    encoder = load_encoder(str(run))
    assert (encoder.pooling, encoder.max_length, encoder.name) == ("cls", 16, str(run))
    assert encoder.fingerprint != load_encoder(str(tiny_bert)).fingerprint  # trained weights, other pooling
    assert main(["index", "build", "--corpus", str(docs), "--model", str(run), "--output", "idx",
                 "--chunk-size", "16", "--overlap", "4", "--no-progress"]) == 0
    index = load_index("idx")
    assert index.meta["encoder"]["fingerprint"] == encoder.fingerprint
    assert np.allclose(index.vectors, encoder.embed([p["text"] for p in index.passages], desc=None), atol=1e-6)
