"""Documents -> passages: read a corpus (a folder of .txt/.md files, one text file, or a file of records) and
cut each document into overlapping windows of tokens.

Windows are cut with the tokenizer's offset mapping, so every passage is an exact slice of its document
(`document[start:end]`, unicode included), and they end at word boundaries where a word fits, so a passage
re-tokenizes to the tokens it was cut from. A window holds `chunk_size` tokens counting the encoder's special
tokens ([CLS] ... [SEP]); the next one starts `overlap` tokens before the previous one ended.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.errors import DataError, TunelabError

TEXT_SUFFIXES = (".txt", ".md")  # read as one document each
RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")  # read as records, one document each


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


@dataclass(frozen=True)
class Passage:
    """A slice of a document: `text == document[start:end]`; id `<doc_id>#<chunk number from 0>`."""

    passage_id: str
    doc_id: str
    start: int
    end: int
    text: str

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Reading a corpus


def read_documents(corpus: str | Path, *, text_field: str = "text", id_field: str = "id") -> list[Document]:
    """The documents of `corpus`, in a stable order (a folder: sorted by relative path).

    A folder is read recursively (.txt and .md files; hidden files and folders skipped; doc id = the path
    relative to the folder); a .txt/.md file is one document (id = its name); a .jsonl/.json/.csv/.tsv/.parquet
    file holds one document per record (`text_field`; id = `id_field`, or the record number from 1 where no
    record has that field). Empty documents are kept here: chunking skips and counts them.
    """
    path = check_corpus(corpus)
    if path.is_dir():
        return _folder_documents(path)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [Document(path.name, _read_text(path))]
    if suffix in RECORD_SUFFIXES:
        return _record_documents(path, text_field, id_field)
    raise DataError(path, f"unsupported corpus file type {path.suffix!r}; use a folder, "
                          f"{', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)}")


def check_corpus(corpus: str | Path) -> Path:
    """The corpus path, or an error where it does not exist (checked before a model loads)."""
    path = Path(corpus).expanduser()
    if not path.exists():
        raise DataError(path.absolute(), "does not exist; --corpus takes a folder of .txt/.md files, a .txt/.md "
                                         "file, or a .jsonl/.csv/.parquet file of records")
    return path


def _read_text(path: Path) -> str:
    from tunelab.data.sources import _read_text as read  # UTF-8 (a BOM dropped), errors name the line

    return read(path)


def _folder_documents(folder: Path) -> list[Document]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(folder, f"has no {' or '.join(TEXT_SUFFIXES)} files (searched recursively); put the "
                                "documents there, or pass a .jsonl/.csv/.parquet file of records")
    documents, legacy = [], []
    for p in files:
        doc_id = p.relative_to(folder).as_posix()
        try:
            text = _read_text(p)
        except DataError:  # not UTF-8: one such file must not stop a corpus of thousands
            text = p.read_bytes().decode("cp1252", errors="replace")
            legacy.append(doc_id)
        documents.append(Document(doc_id, text))
    if legacy:
        from tunelab.data.sources import default_log

        shown = ", ".join(legacy[:3]) + (", ..." if len(legacy) > 3 else "")
        default_log(f"{folder}: {len(legacy)} file{'s are' if len(legacy) > 1 else ' is'} not valid UTF-8 and "
                    f"{'were' if len(legacy) > 1 else 'was'} read as Windows-1252 ({shown}); re-save as UTF-8 "
                    "if that is wrong")
    return documents


def _record_documents(path: Path, text_field: str, id_field: str) -> list[Document]:
    from tunelab.data.sources import load_records

    records = load_records(str(path))
    numbered = not any(id_field in r for r in records)  # no ids at all: the record numbers are the ids
    documents, seen = [], {}
    for i, record in enumerate(records, start=1):
        line = record.get("_line")  # the file's line (JSONL, CSV), where the reader knows it
        text = record.get(text_field)
        if not isinstance(text, str):
            what = "has no field" if text_field not in record else f"has a {type(text).__name__} in field"
            fields = ", ".join(str(k) for k in record if not str(k).startswith("_"))
            raise DataError(path, f"record {i} {what} {text_field!r} (fields: {fields}); set --text-field to the "
                                  "field holding the document text", line)
        doc_id = str(i) if numbered else record.get(id_field)
        if doc_id is None or doc_id == "":
            raise DataError(path, f"record {i} has no {id_field!r} (other records have one); give every record "
                                  "an id, or set --id-field", line)
        doc_id = str(doc_id)
        if doc_id in seen:
            raise DataError(path, f"records {seen[doc_id]} and {i} have the same id {doc_id!r}; ids must be "
                                  "unique", line)
        seen[doc_id] = i
        documents.append(Document(doc_id, text))
    return documents


# ---------------------------------------------------------------------------------------------
# Cutting documents into passages


def check_chunking(chunk_size: int, overlap: int, tokenizer, max_length: int) -> int:
    """Refuse sizes that cannot work; returns the tokens of text per window (chunk_size - special tokens)."""
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    if chunk_size > max_length:
        raise TunelabError(f"--chunk-size {chunk_size}: the encoder reads at most {max_length} tokens; give "
                           f"--chunk-size {max_length} or less")
    body = chunk_size - specials
    if body < 1:
        raise TunelabError(f"--chunk-size {chunk_size}: leaves no room for text beside the {specials} special "
                           f"tokens; give --chunk-size {specials + 16} or more")
    if not 0 <= overlap < body:
        raise TunelabError(f"--overlap {overlap}: must be at least 0 and less than the {body} text tokens of a "
                           f"chunk (--chunk-size {chunk_size} minus {specials} special tokens)")
    if not getattr(tokenizer, "is_fast", False):
        raise TunelabError("the encoder's tokenizer has no offset mapping (not a fast tokenizer); chunking "
                           "needs one to cut passages out of the text: use a model with a tokenizer.json")
    return body


def chunk_documents(documents: list[Document], tokenizer, chunk_size: int, overlap: int, max_length: int
                    ) -> tuple[list[Passage], int]:
    """(passages of every document in order, number of empty documents skipped)."""
    body = check_chunking(chunk_size, overlap, tokenizer, max_length)
    passages, empty = [], 0
    for doc in documents:
        chunks = chunk_text(doc.text, tokenizer, body, overlap)
        empty += not chunks
        passages += [Passage(f"{doc.doc_id}#{n}", doc.doc_id, s, e, doc.text[s:e]) for n, (s, e) in enumerate(chunks)]
    return passages, empty


def chunk_text(text: str, tokenizer, body: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans (start, end) of windows of at most `body` tokens of `text`; [] for a text without tokens.

    A window ends before the first token of a word where one fits (a word longer than a window is cut). The
    next starts at the first word start among the last `overlap` tokens of the previous window (so windows
    share at most `overlap` tokens, and none where a long word fills that stretch), and always reaches past it.
    """
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                         verbose=False)
    offsets = encoding["offset_mapping"]  # (T, 2) character spans of the tokens
    words = encoding.word_ids()  # (T,) which word each token belongs to
    starts = [j == 0 or words[j] is None or words[j] != words[j - 1] for j in range(len(offsets))]
    spans, start, last_end = [], 0, 0
    while start < len(offsets):  # each window ends past the previous one: the loop ends
        end = _window_end(start, body, starts)
        if end <= last_end:  # the word-aligned window would end inside the previous one: no overlap instead
            start = last_end
            end = _window_end(start, body, starts)
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end == len(offsets):
            break
        last_end = end
        start = next((j for j in range(max(end - overlap, start + 1), end) if starts[j]), end)
    return spans


def _window_end(start: int, body: int, starts: list[bool]) -> int:
    """The end (exclusive) of the window from token `start`: at most `body` tokens, ending before a word
    start where one lies past `start`, else cut at `body` tokens (a word longer than the window)."""
    end = min(start + body, len(starts))
    if end == len(starts):
        return end
    return next((j for j in range(end, start, -1) if starts[j]), end)
