"""Text corpora for pretraining and tokenizer training: documents read from files, folders or builtin
sets, split into train / validation / test, and cut into next-token blocks.

A .txt file is one document, a folder one document per .txt file, a record file (or builtin:NAME) one per
record's text field. Documents are split with tunelab.data.splits (seeded); `make_blocks` joins a split's
documents into one token stream with an end-of-document token after each and cuts it into blocks.
"""
from __future__ import annotations

from pathlib import Path

from tunelab.errors import DataError, TunelabError


def corpus_documents(ref: str, text_field: str = "text", log=None) -> list[str]:
    """The documents of one corpus reference, in a stable order; empty documents are dropped and counted.

    A .txt file is one document; a folder is every .txt file under it (recursively), one document each;
    builtin:NAME and record files (.jsonl .json .csv .tsv .parquet) give the `text_field` of each record.
    What is skipped is reported through `log` (default: tunelab.data.sources.default_log).
    """
    from tunelab.data.sources import load_records, missing_path_error, read_txt, report_dropped

    path = Path(ref).expanduser()
    if not ref.startswith("builtin:"):
        if not path.exists():
            raise missing_path_error(path, "give a .txt file, a folder of .txt files, a .jsonl file or "
                                           "builtin:bbc-news")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise DataError(path, "the folder holds no .txt files (searched recursively)")
            others = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.suffix != ".txt")
            report_dropped(ref, {"files that are not .txt (a corpus folder is read as its .txt files)": others}
                           if others else {}, log)
            return _non_empty(ref, [(str(f.relative_to(path)), read_txt(f)[0]["text"]) for f in files], log)
        if path.suffix.lower() == ".txt":
            return _non_empty(ref, [(path.name, read_txt(path)[0]["text"])], log)
    texts = []
    for i, record in enumerate(load_records(ref, log)):
        value = record.get(text_field)
        if not isinstance(value, str):
            fields = ", ".join(k for k in record if not k.startswith("_"))
            raise DataError(record.get("_file", ref), f"record {i + 1}: text field {text_field!r} is missing or "
                                                      f"not a string; set data.text_field to one of: {fields}",
                            record.get("_line"))
        line = record.get("_line")
        texts.append((f"line {line}" if line is not None else f"record {i + 1}", value))
    return _non_empty(ref, texts, log)


def _non_empty(ref: str, named: list[tuple[str, str]], log) -> list[str]:
    """The texts of (name, text) pairs that hold more than whitespace; the others are reported as dropped."""
    from tunelab.data.sources import report_dropped

    empty = [name for name, text in named if not text.strip()]
    report_dropped(ref, {"empty documents (only whitespace; nothing to learn from)": empty} if empty else {}, log)
    return [text for _, text in named if text.strip()]


def end_of_document_id(tokenizer) -> int:
    """The token put after every document: EOS (BPE tokenizers) or SEP (WordPiece/BERT tokenizers)."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return token_id
    raise TunelabError("model.tokenizer: the tokenizer has neither an EOS nor a SEP token to end documents "
                       "with; train one with `tunelab tokenizer train` (BPE adds </s>)")


def make_blocks(documents: list[list[int]], eos_id: int, block_size: int) -> list[list[int]]:
    """Token blocks of up to `block_size` from the documents joined with `eos_id` after each.

    Consecutive blocks share one token (stride block_size - 1): a block's targets are its tokens 1..T-1,
    so each token of the stream but the first is predicted once. The last block may be shorter.
    """
    stream = [t for ids in documents for t in (*ids, eos_id)]
    step = block_size - 1
    return [stream[i:i + block_size] for i in range(0, len(stream) - 1, step)]


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (and no warning about long texts: they are cut later)."""
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []


def corpus_splits(d, seed: int, log) -> dict[str, tuple[list[str], str]]:
    """Document texts of each split (train, and validation / test when they have any) with their source."""
    from tunelab.data.splits import held_out, split_indices

    docs = corpus_documents(d.train, d.text_field, log)  # empty documents are dropped and reported
    if not docs:
        raise DataError(d.train, "holds no text to pretrain on")
    parts = split_indices(len(docs), d.val_fraction, d.test_fraction, seed, hold_out=held_out(d), draw="once")
    splits = {name: ([docs[i] for i in idx], f"{d.train} ({name} split)" if name != "train" else d.train)
              for name, idx in parts.items() if idx}
    if d.limit is not None and "train" in splits and len(splits["train"][0]) > d.limit:
        splits["train"] = (splits["train"][0][: d.limit], d.train)
        log(f"data.limit: using {d.limit} training documents")
    for name, given in (("validation", d.validation), ("test", d.test)):
        if given:
            splits[name] = (corpus_documents(given, d.text_field, log), given)
    return splits
