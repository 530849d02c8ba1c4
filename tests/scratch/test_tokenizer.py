"""`tunelab tokenizer train`: corpora in every accepted form, both kinds, AutoTokenizer round trips, errors."""
from __future__ import annotations

import argparse
import json

import pytest
from transformers import AutoTokenizer

from tunelab.errors import DataError, TunelabError
from tunelab.cli.data import add_commands
from tunelab.data.corpus import corpus_documents
from tunelab.tokenizer_train import train_tokenizer

TEXT = "The cat chases the house. The dog guards the river!"


def test_wordpiece_round_trip(wordpiece_dir):
    tok = AutoTokenizer.from_pretrained(str(wordpiece_dir))
    assert [tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token] == \
           ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert [tok.pad_token_id, tok.unk_token_id] == [0, 1] and len(tok) <= 120
    ids = tok("Goal match TEAM")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "goal match team"  # lowercased


def test_wordpiece_ids_are_in_a_fixed_order(wordpiece_dir):
    vocab = AutoTokenizer.from_pretrained(str(wordpiece_dir)).get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokens[5:] == sorted(tokens[5:], key=lambda t: (len(t.removeprefix("##")), t.startswith("##"), t))


def test_bpe_round_trip_is_lossless(bpe_dir):
    tok = AutoTokenizer.from_pretrained(str(bpe_dir))
    assert [tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert [tok.pad_token_id, tok.eos_token_id] == [0, 3] and len(tok) == 300
    for text in (TEXT, "Ünïcode ☃ never seen, 42 %"):  # byte level: any text, no unknown token
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == text
    assert len(tok("the cat chases the house")["input_ids"]) < 12  # merges learned (24 bytes)
    info = json.loads((bpe_dir / "tunelab_tokenizer.json").read_text())
    assert (info["kind"], info["vocab_size"], info["documents"]) == ("bpe", 300, 80 + 90)


def test_every_corpus_form_is_read(tmp_path, helpers):
    folder = tmp_path / "texts"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "a.txt").write_text("first document")
    (folder / "sub" / "deeper" / "b.txt").write_text("second document")
    (folder / "sub" / "notes.md").write_text("not read")
    (folder / "empty.txt").write_text("  \n")
    assert corpus_documents(str(folder)) == ["first document", "second document"]
    assert corpus_documents(str(folder / "a.txt")) == ["first document"]
    helpers.write_jsonl(tmp_path / "r.jsonl", [{"body": "one"}, {"body": ""}, {"body": "two"}])
    assert corpus_documents(str(tmp_path / "r.jsonl"), "body") == ["one", "two"]
    bbc = corpus_documents("builtin:bbc-news")
    assert len(bbc) == 2225 and all(isinstance(t, str) and t for t in bbc)


def test_a_missing_text_field_names_file_and_line(tmp_path, helpers):
    helpers.write_jsonl(tmp_path / "r.jsonl", [{"text": "ok"}, {"body": "no text field"}])
    with pytest.raises(DataError, match=r"r\.jsonl:2: record 2: text field 'text' is missing.*body"):
        train_tokenizer([str(tmp_path / "r.jsonl")], 300, tmp_path / "tok")


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=100, kind="bpe"), "at least 260"),
    (dict(vocab_size=300, kind="sentencepiece"), "unknown --kind"),
])
def test_bad_settings_are_one_line_errors(tmp_path, kwargs, message):
    (tmp_path / "c.txt").write_text(TEXT)
    with pytest.raises(TunelabError, match=message):
        train_tokenizer([str(tmp_path / "c.txt")], output=tmp_path / "tok", **kwargs)


def test_output_replaces_only_a_tokenizer_folder(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(TunelabError, match="not a tokenizer folder"):
        train_tokenizer([str(tmp_path / "c.txt")], 300, tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").is_file()
    first = train_tokenizer([str(tmp_path / "c.txt")], 300, tmp_path / "tok")
    assert train_tokenizer([str(tmp_path / "c.txt")], 280, first) == first  # a tokenizer folder: replaced
    assert json.loads((first / "tunelab_tokenizer.json").read_text())["vocab_size_asked"] == 280


def test_the_command_line(tmp_path, capsys):
    (tmp_path / "c.txt").write_text(TEXT)
    parser = argparse.ArgumentParser(prog="tunelab")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tokenizer", "train", "--input", str(tmp_path / "c.txt"), "--input",
                              str(tmp_path / "c.txt"), "--vocab-size", "50", "--output", str(tmp_path / "wp"),
                              "--kind", "wordpiece", "--lowercase"])
    assert args.func(args) == 0
    assert f"model.tokenizer: {tmp_path / 'wp'}" in capsys.readouterr().out
    assert AutoTokenizer.from_pretrained(str(tmp_path / "wp")).pad_token == "[PAD]"
