"""Source/target pairs for seq2seq tasks (translation, summarization) from the three kinds of reference.

- a data file (jsonl/json/csv/tsv/parquet, read by `tunelab.data.sources.load_records`) whose records hold
  the two texts in `source_field` / `target_field`;
- a mapping `{"source": PATH, "target": PATH}` of two aligned plain-text files, one pair per line;
- `builtin:gettext`, the translated software messages on this machine (`tunelab.data.gettext`).

Every pair is a record `{"source": str, "target": str}`; a data file's other fields are kept. Pairs with an
empty (or all-space) side are counted and dropped, one log line per reason; bad input is a DataError that
names the file and the line.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tunelab.data.gettext import DIRECTIONS, LOCALE_ROOT, gettext_languages, gettext_pairs
from tunelab.data.sources import Log, _read_text, default_log, load_records, missing_path_error, report_dropped
from tunelab.errors import DataError

__all__ = ["load_pairs", "gettext_languages"]
EMPTY = "pairs with an empty side"


def load_pairs(ref, *, source_field: str = "source", target_field: str = "target", language: str | None = None,
               direction: str = "to_english", max_placeholder_share: float = 0.5, max_chars: int | None = None,
               log: Log | None = print, locale_root: Path | str = LOCALE_ROOT) -> list[dict]:
    """Pairs `{"source", "target"}` from `ref` (see the module docstring for the kinds of reference).

    language, direction (to_english | from_english), max_placeholder_share and locale_root apply to
    builtin:gettext only; max_chars (drop pairs with a side longer than this) to every kind.
    """
    log = log or default_log
    if direction not in DIRECTIONS:
        raise DataError(str(ref), f"unknown direction {direction!r}; use one of: {', '.join(DIRECTIONS)} "
                                  "(data.direction)")
    if str(ref) == "builtin:gettext":
        return gettext_pairs(language, direction=direction, max_placeholder_share=max_placeholder_share,
                             max_chars=max_chars, root=locale_root, log=log)
    if isinstance(ref, dict):
        pairs, name = aligned_pairs(ref, log), "aligned files"
    else:
        pairs, name = field_pairs(str(ref), source_field, target_field, log), str(ref)
    if max_chars is not None:
        pairs = drop_long(pairs, max_chars, name, log)
    if not pairs:
        raise DataError(name, "holds no pair with both sides non-empty")
    return pairs


def drop_long(pairs: list[dict], max_chars: int, name: str, log: Log) -> list[dict]:
    """The pairs whose sides are both at most `max_chars` characters; the others are counted to `log`."""
    kept, long = [], []
    for k, pair in enumerate(pairs, start=1):
        if max(len(pair["source"]), len(pair["target"])) <= max_chars:
            kept.append(pair)
        else:
            long.append(_where(pair, k))
    if long:
        report_dropped(name, {f"pairs longer than max_chars={max_chars} (either side)": long}, log)
    return kept


def aligned_pairs(paths: dict, log: Log) -> list[dict]:
    """Pairs from two plain-text files read line by line: line i of "source" goes with line i of "target"."""
    if set(paths) != {"source", "target"}:
        raise DataError(str(paths), f"aligned files need exactly the keys source and target, got "
                                    f"{', '.join(map(str, paths)) or 'none'}")
    sides = {}
    for side, path in paths.items():
        path = Path(path).expanduser()
        if not path.is_file():
            raise missing_path_error(path, "check the path of the aligned text file")
        sides[side] = (path, _lines(path))
    (src_path, sources), (tgt_path, targets) = sides["source"], sides["target"]
    if len(sources) != len(targets):
        raise DataError(src_path, f"has {len(sources):,} lines but {tgt_path} has {len(targets):,}; aligned "
                                  "files need one line per pair in both")
    pairs, empty = [], []
    for i, (source, target) in enumerate(zip(sources, targets), start=1):
        if source.strip() and target.strip():
            pairs.append({"source": source, "target": target, "_line": i})
        else:
            empty.append(f"line {i}")
    if empty:
        report_dropped(f"{src_path} + {tgt_path}", {EMPTY: empty}, log)
    return pairs


def _lines(path: Path) -> list[str]:
    """The lines of a text file without their line ends ("\\n" or "\\r\\n"); a final newline ends no pair."""
    text = _read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def field_pairs(ref: str, source_field: str, target_field: str, log: Log) -> list[dict]:
    """Pairs from a data file's records: `source_field` -> "source", `target_field` -> "target"."""
    dropped, pairs = defaultdict(list), []
    for k, record in enumerate(load_records(ref, log), start=1):
        texts = []
        for field, key in ((source_field, "source"), (target_field, "target")):
            if field not in record:
                raise _record_error(ref, record, k, f"has no field {field!r} (data.{key}_field); its fields: "
                                    f"{', '.join(f for f in record if not f.startswith('_')) or 'none'}")
            value = record[field]
            if value is not None and not isinstance(value, str):
                raise _record_error(ref, record, k, f"field {field!r} holds {type(value).__name__} "
                                    f"{value!r}, not text")
            texts.append(value or "")
        if not (texts[0].strip() and texts[1].strip()):
            dropped[EMPTY].append(_where(record, k))
            continue
        rest = {f: v for f, v in record.items() if f not in (source_field, target_field)}
        pairs.append({**rest, "source": texts[0], "target": texts[1]})
    report_dropped(ref, dropped, log)
    return pairs


def _record_error(ref: str, record: dict, k: int, message: str) -> DataError:
    """A DataError at the record's line, or naming its position when the format has no lines."""
    if "_line" in record:
        return DataError(ref, f"record {message}", record["_line"])
    return DataError(ref, f"record {k} {message}")


def _where(record: dict, k: int) -> str:
    """How a drop report names a record: its line where it has one, else its position."""
    return f"line {record['_line']}" if "_line" in record else f"record {k}"
