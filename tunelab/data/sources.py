"""Read records (plain dicts) from the files a user has: JSONL, CSV/TSV, Parquet, text, label folders.

Every read error is a `DataError` naming the file and, where there is one, the line. Whatever a reader
skips (a label folder's non-.txt files, ShareGPT chats that cannot be trained on) is counted and reported
through a `log` callback, one line per reason; without one it goes to the `tunelab.data` logger (stderr).
Relative paths are read from the current directory.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable

from tunelab.errors import DataError

Log = Callable[[str], None]


def default_log(message: str) -> None:
    """Where drop reports go when the caller passes no `log`: a warning on the `tunelab.data` logger."""
    logging.getLogger("tunelab.data").warning(message)


def report_dropped(source: str, dropped: dict[str, list[str]], log: Log | None, examples: int = 3) -> None:
    """One log line per reason: `source: skipped N <reason> (e.g. a, b, c)`."""
    for reason, items in dropped.items():
        shown = ", ".join(items[:examples]) + (", ..." if len(items) > examples else "")
        (log or default_log)(f"{source}: skipped {len(items)} {reason} (e.g. {shown})")


SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # spreadsheet exports start with one
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: bom + e.start].count(b"\n") + 1
        raise DataError(path, f"bytes at offset {bom + e.start} are not valid UTF-8; re-save the file as UTF-8",
                        line) from None


def read_jsonl(path: Path) -> list[dict]:
    records = []
    # Only "\n" ends a JSON Lines record; str.splitlines() would also split at U+2028, U+0085, ... in a text.
    for i, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"malformed JSON ({e.msg} at column {e.colno}); each line must be one JSON "
                                  "object", i) from None
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object per line, got {type(obj).__name__}", i)
        obj["_line"] = i
        records.append(obj)
    return records


def read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON ({e.msg})", e.lineno) from None
    if _is_squad(data):  # one record per question
        from tunelab.data.squad import squad_as_flat

        return squad_as_flat(data, str(path))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(path, "a .json file must hold a list of objects; use .jsonl for one object per line")
    return data


def _is_squad(data) -> bool:
    """A SQuAD-style object: {"data": [{"paragraphs": [...]}, ...]} (not any {"data": [...]} wrapper)."""
    articles = data.get("data") if isinstance(data, dict) else None
    return isinstance(articles, list) and bool(articles) and isinstance(articles[0], dict) \
        and "paragraphs" in articles[0]


def read_csv(path: Path) -> list[dict]:
    text = _read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # newline="" keeps the line breaks inside quoted fields (splitlines() would drop them)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = []
    try:
        for row in reader:
            if None in row:
                raise DataError(path, f"row has more fields than the header ({len(reader.fieldnames)})",
                                reader.line_num)
            row["_line"] = reader.line_num
            records.append(row)
    except csv.Error as e:
        raise DataError(path, f"malformed CSV: {e}", reader.line_num) from None
    return records


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(path, f"cannot read Parquet: {e}") from None
    return table.to_pylist()


def read_txt(path: Path) -> list[dict]:
    """A plain text file: one record with the whole text (for causal LM / pretraining corpora)."""
    return [{"text": _read_text(path)}]


def read_label_folder(path: Path, log: Log | None = None) -> list[dict]:
    """A folder with one sub-folder per label, each holding .txt files (one example per file).

    Hidden sub-folders (.name) are not labels. Everything else that is not read (files beside the label
    folders, non-.txt files and folders inside them) is counted and reported through `log`.
    """
    entries = sorted(path.iterdir())
    subdirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if not subdirs:
        raise DataError(path, "folder has no sub-folders; expected one sub-folder of .txt files per label")
    records, dropped = [], defaultdict(list)
    for p in entries:
        if not p.is_dir():
            dropped["files beside the label sub-folders (only files inside them are read)"].append(p.name)
    for sub in subdirs:
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() == ".txt":
                records.append({"text": _read_text(f).strip(), "label": sub.name, "_file": str(f)})
            else:
                kind = "files that are not .txt" if f.is_file() else "folders inside label folders"
                dropped[f"{kind} (one example per .txt file; rename or move them to use them)"].append(
                    f"{sub.name}/{f.name}")
    report_dropped(str(path), dropped, log)
    return records


READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".tsv": read_csv,
           ".parquet": read_parquet, ".txt": read_txt}


def missing_path_error(path: Path, what: str = "check the path (or use builtin:bbc-news)") -> DataError:
    """The error for a data path that does not exist, naming the absolute path that was looked at."""
    note = "" if path.is_absolute() else "; relative paths are read from the current directory"
    return DataError(path.absolute(), f"does not exist{note}; {what}")


def load_records(ref: str, log: Log | None = None) -> list[dict]:
    """Load a data reference (builtin:NAME, a file or a folder) into a list of dict records.

    `log` receives one line per reason for records or files that were skipped (default: `default_log`).
    """
    if ref.startswith("builtin:"):
        from tunelab.data.builtin import load_builtin

        records = load_builtin(ref.removeprefix("builtin:"), log)
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            raise missing_path_error(path)
        if path.is_dir():
            records = read_label_folder(path, log)
        elif path.suffix.lower() in READERS:
            records = READERS[path.suffix.lower()](path)
        else:
            raise DataError(path, f"unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)} "
                                  "or a folder")
    if not records:
        raise DataError(ref, "contains no records; the file is empty")
    return records
