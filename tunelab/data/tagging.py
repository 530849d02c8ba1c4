"""Token-tagging data (NER and any per-word tags): three layouts read into one record form, and tag schemes.

The one form, a dict per sentence (or text):
    {"tokens": [word, ...], "tags": [tag, ...] | None, "text": str | None, "offsets": [(start, end), ...] | None,
     "_file": path, "_line": line or None, "_where": "record 3" | "sentence 12", "_record": source dict | None}
`tags` are as written in the data (any scheme); `to_iob2` converts them. `text` and `offsets` (each word's
character span in `text`, end exclusive) are set for raw-text records only.

Layouts, told apart by the file and its first record (errors say which layout was read):
- CoNLL text (.conll, .txt; always this layout, for prediction input too: raw text goes in records with
  data.text_field): one word per line, columns split on white space, the word in the first column and
  its tag in column data.tag_column (default: the last); a blank line ends a sentence; `-DOCSTART-` lines are
  skipped.
- word records (JSONL / JSON / CSV / Parquet / builtin:): data.tokens_field and data.tags_field, one tag per
  word (a list, or in a CSV cell a JSON list or words separated by spaces).
- raw-text records: data.text_field and data.entities_field holding [{start, end, label}] (or [start, end,
  label] triples), character offsets into the text, end exclusive. The text is cut into words: a word is a run
  of letters, digits, underscores and combining marks, joined by inner hyphens and apostrophes; every other
  character that is not white space is a word on its own ("Jean-Luc's (x)" -> Jean-Luc's ( x )). Each entity must start at a word's start and end at a
  word's end and must not overlap another; otherwise it is a DataError naming the record and the entity, or,
  with data.skip_bad_spans, it is dropped and counted. Entities become IOB2 tags.

Schemes (`SCHEMES`): IOB2 (B- begins every entity), IOB1 (I- begins an entity; B- only between two entities of
one type), BIOES (S- single, E- end) and BILOU (U- unit, L- last), and plain labels (no prefix; a run of one
label is one entity; "O" is outside). Invalid sequences are repaired one way for every scheme: an I- (or E-/L-)
that does not continue an entity of its type begins a new entity (it becomes B-); `to_iob2` returns how many
it changed so callers can log it. A B-/I- that never sees its E-/L- ends where the next tag does not continue it.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from tunelab.errors import DataError, TunelabError

Log = Callable[[str], None]

SCHEMES = ("iob2", "iob1", "bioes", "bilou", "plain")
CONLL_SUFFIXES = (".conll", ".txt")
OUTSIDE = "O"
_PREFIXED = re.compile(r"^([BIESLU])[-_](.+)$")  # B-PER, and B_PER as some exports write it
# A word: letters, digits, underscore and combining marks (a decomposed "é" stays one word), joined by inner
# hyphens and apostrophes ("Jean-Luc", "O'Neill": one word, as CoNLL data and builtin:ner-synthetic write
# them); any other character is a word of its own.
_COMBINING = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_PART = rf"(?:\w|[{_COMBINING}])+"
WORD = re.compile(rf"{_PART}(?:['\u2019-]{_PART})*|[^\w\s{_COMBINING}]")


# ---------------------------------------------------------------------------------------------
# Reading


def load_tagged(ref: str, data_cfg, log: Log | None = None, labelled: bool = True) -> list[dict]:
    """The sentences of one data reference (a file or builtin:NAME) as tagged records (see the module doc).

    `data_cfg` is the run's DataConfig (field names, tag_column, skip_bad_spans). `labelled=False` reads
    prediction input: tags (or entities) may be absent, and are then None. What is dropped (data.skip_bad_spans)
    is counted in one line to `log` (default: the `tunelab.data` logger, as tunelab.data.sources does).
    """
    from tunelab.data.sources import default_log

    log = log or default_log
    path = Path(ref).expanduser()
    if not ref.startswith("builtin:") and path.suffix.lower() in CONLL_SUFFIXES:
        from tunelab.data.sources import missing_path_error

        if not path.exists():
            raise missing_path_error(path, "check the path")
        records = read_conll(path, data_cfg.tag_column, labelled)
    else:
        from tunelab.data.sources import load_records

        records = records_to_tagged(load_records(ref, log), ref, data_cfg, log, labelled)
    if not records:
        raise DataError(ref, "holds no sentences")
    return records


def read_conll(path: Path, tag_column: int = -1, labelled: bool = True) -> list[dict]:
    """Sentences of a CoNLL-style file: word in column 0, tag in `tag_column`, blank lines between sentences.

    Unlabelled (`labelled=False`), a file whose lines all have one column gives sentences with tags None.
    """
    from tunelab.data.sources import _read_text

    if tag_column == 0:
        raise TunelabError("data.tag_column: 0 is the word column; set the column of the tags (-1 = the last)")
    needed = tag_column + 1 if tag_column > 0 else 1 - tag_column  # columns a line needs: word + tag
    lines = _read_text(path).split("\n")
    with_tags = labelled or any(len(line.split()) > 1 for line in lines)
    sentences, words, tags, first = [], [], [], None
    for number, line in enumerate(lines, start=1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                sentences.append(_sentence(words, tags if with_tags else None, str(path), first, len(sentences)))
            words, tags = [], []
            continue
        if with_tags and len(cols) < needed:
            raise DataError(path, f"{len(cols)} column{'s' if len(cols) != 1 else ''} ({line.strip()!r}); read as "
                                  f"CoNLL (one word per line, tag in column {tag_column}): each line needs at "
                                  f"least {needed}; set data.tag_column or fix the line", number)
        first = number if not words else first
        words.append(cols[0])
        tags.append(cols[tag_column] if with_tags else None)
    if words:
        sentences.append(_sentence(words, tags if with_tags else None, str(path), first, len(sentences)))
    return sentences


def _sentence(words: list[str], tags: list[str] | None, file: str, line: int, index: int) -> dict:
    return {"tokens": words, "tags": tags, "text": None, "offsets": None, "_file": file, "_line": line,
            "_where": f"sentence {index + 1}", "_record": None}


def records_to_tagged(records: list[dict], source: str, d, log: Log, labelled: bool = True) -> list[dict]:
    """Tagged records from loaded dict records: word records or raw-text records, told by the first record."""
    first = records[0]
    if d.tokens_field in first:
        layout = "word"
    elif d.text_field in first:
        layout = "text"
    else:
        raise DataError(first.get("_file", source), f"record 1 has neither '{d.tokens_field}' (words + "
                        f"'{d.tags_field}') nor '{d.text_field}' (raw text + '{d.entities_field}'); its fields: "
                        f"{', '.join(k for k in first if not k.startswith('_'))}; set data.tokens_field or "
                        "data.text_field", first.get("_line"))
    out, dropped = [], Counter()
    for i, rec in enumerate(records, start=1):
        file, line, where = rec.get("_file", source), rec.get("_line"), f"record {i}"
        if layout == "word":
            tokens, tags = _word_record(rec, d, file, line, where, labelled)
            text = offsets = None
        else:
            text, tokens, offsets, tags = _text_record(rec, d, file, line, where, labelled, dropped)
        out.append({"tokens": tokens, "tags": tags, "text": text, "offsets": offsets, "_file": file,
                    "_line": line, "_where": where, "_record": rec})
    if dropped:
        parts = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items()))
        log(f"{source}: data.skip_bad_spans dropped {sum(dropped.values())} entities ({parts})")
    return out


def _listish(value, what: str, file: str, line, where: str, layout: str) -> list[str]:
    """A list of strings from a list, or (CSV cells) a JSON list or space-separated words in one string."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                raise DataError(file, f"{where}: '{what}' looks like a JSON list but is not valid JSON "
                                      f"({layout})", line) from None
        else:
            value = stripped.split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                       for v in value):
        raise DataError(file, f"{where}: '{what}' must be a list of strings, got {str(value)[:60]!r} ({layout})",
                        line)
    return [str(v) for v in value]


def _word_record(rec: dict, d, file: str, line, where: str, labelled: bool):
    layout = f"read as word records: '{d.tokens_field}' + '{d.tags_field}'"
    if d.tokens_field not in rec:
        raise DataError(file, f"{where}: no '{d.tokens_field}' field ({layout}, detected from record 1)", line)
    tokens = _listish(rec[d.tokens_field], d.tokens_field, file, line, where, layout)
    if not tokens or any(not t.strip() for t in tokens):
        raise DataError(file, f"{where}: '{d.tokens_field}' is empty or holds an empty word ({layout})", line)
    if rec.get(d.tags_field) is None:
        if labelled:
            raise DataError(file, f"{where}: no '{d.tags_field}' field ({layout}); set data.tags_field", line)
        return tokens, None
    raw_tags = rec[d.tags_field]
    if isinstance(raw_tags, (list, tuple)) and any(isinstance(v, int) and not isinstance(v, bool) for v in raw_tags):
        raise DataError(file, f"{where}: '{d.tags_field}' holds integers ({str(raw_tags)[:40]}): tag ids, not tag "
                              "names; write the names (e.g. B-PER, I-PER, O) instead of their ids", line)
    tags = _listish(raw_tags, d.tags_field, file, line, where, layout)
    if len(tags) != len(tokens):
        raise DataError(file, f"{where}: {len(tokens)} words but {len(tags)} tags ({layout}); each word needs "
                              "one tag", line)
    if any(not t.strip() for t in tags):
        raise DataError(file, f"{where}: an empty tag in '{d.tags_field}' ({layout}); use 'O' outside entities",
                        line)
    return tokens, tags


def words_of(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The words of a raw text and their character spans (end exclusive), by the rule in the module doc."""
    matches = list(WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def _text_record(rec: dict, d, file: str, line, where: str, labelled: bool, dropped: Counter):
    layout = f"read as raw-text records: '{d.text_field}' + '{d.entities_field}'"
    text = rec.get(d.text_field)
    if not isinstance(text, str) or not text.strip():
        raise DataError(file, f"{where}: '{d.text_field}' must be a non-empty string ({layout}, detected from "
                              "record 1)", line)
    tokens, offsets = words_of(text)
    if rec.get(d.entities_field) is None:
        if labelled:
            raise DataError(file, f"{where}: no '{d.entities_field}' field ({layout}); set data.entities_field",
                            line)
        return text, tokens, offsets, None
    entities = rec[d.entities_field]
    if isinstance(entities, str):  # a CSV cell
        try:
            entities = json.loads(entities)
        except json.JSONDecodeError:
            raise DataError(file, f"{where}: '{d.entities_field}' is not a JSON list ({layout})", line) from None
    if not isinstance(entities, list):
        raise DataError(file, f"{where}: '{d.entities_field}' must be a list of {{start, end, label}}, got "
                              f"{str(entities)[:60]!r} ({layout})", line)
    spans = [_entity(e, text, file, line, where, layout) for e in entities]
    tags = entity_tags(spans, text, offsets, lambda msg, why: _bad_span(msg, why, d, file, line, where, dropped))
    return text, tokens, offsets, tags


def _entity(e, text: str, file: str, line, where: str, layout: str) -> tuple[int, int, str]:
    """(start, end, label) of one entity, checked for types and range."""
    if isinstance(e, dict) and {"start", "end", "label"} <= e.keys():
        start, end, label = e["start"], e["end"], e["label"]
    elif isinstance(e, (list, tuple)) and len(e) == 3:
        start, end, label = e
    else:
        raise DataError(file, f"{where}: entity {str(e)[:80]} is not {{start, end, label}} ({layout})", line)
    if not (isinstance(start, int) and isinstance(end, int) and not isinstance(start, bool)
            and not isinstance(end, bool)) or not 0 <= start < end <= len(text):
        raise DataError(file, f"{where}: entity {str(e)[:80]} needs integer offsets with 0 <= start < end <= "
                              f"{len(text)} (the text's length; end is exclusive) ({layout})", line)
    if not isinstance(label, str) or not label.strip() or label == OUTSIDE:
        raise DataError(file, f"{where}: entity {str(e)[:80]} needs a label (a non-empty string, not 'O') "
                              f"({layout})", line)
    return start, end, label


def _bad_span(message: str, why: str, d, file: str, line, where: str, dropped: Counter) -> None:
    if not d.skip_bad_spans:
        raise DataError(file, f"{where}: {message}; fix the offsets or set data.skip_bad_spans: true to drop "
                              "such entities", line)
    dropped[why] += 1


def entity_tags(spans: list[tuple[int, int, str]], text: str, offsets: list[tuple[int, int]],
                bad: Callable[[str, str], None]) -> list[str]:
    """IOB2 tags of the words (`offsets`) from character-span entities; `bad(message, reason)` is called for
    an entity off word boundaries or overlapping an earlier one (it raises, or the entity is dropped)."""
    starts = {s: i for i, (s, _) in enumerate(offsets)}
    ends = {e: i for i, (_, e) in enumerate(offsets)}
    tags = [OUTSIDE] * len(offsets)
    for start, end, label in sorted(spans, key=lambda s: (s[0], s[1])):
        shown = f"entity {label} [{start}, {end}) {text[start:end]!r}"
        if start not in starts or end not in ends:
            bad(f"{shown} does not start and end on word boundaries (words are split at white space and "
                "punctuation)", "not on word boundaries")
            continue
        first, last = starts[start], ends[end]
        if any(t != OUTSIDE for t in tags[first:last + 1]):
            bad(f"{shown} overlaps another entity", "overlapping another")
            continue
        tags[first] = f"B-{label}"
        tags[first + 1:last + 1] = [f"I-{label}"] * (last - first)
    return tags


# ---------------------------------------------------------------------------------------------
# Schemes


def split_tag(tag: str) -> tuple[str | None, str]:
    """(prefix, type) of a tag: ("B", "PER") for B-PER, (None, "O") for O, (None, tag) for a plain label."""
    match = _PREFIXED.match(tag)
    return (match.group(1), match.group(2)) if match else (None, tag)


def detect_scheme(tag_lists: Sequence[Sequence[str]]) -> str:
    """The scheme of training tags: "bioes" / "bilou" by their S-/E- or U-/L- prefixes; "iob1" when an I-
    begins an entity (after O, another type or the sentence start) and every B- sits between two entities of
    one type; "iob2" for other B-/I- tags; "plain" when no tag has a prefix."""
    prefixes, plain = set(), set()
    for tags in tag_lists:
        for tag in tags:
            prefix, _ = split_tag(tag)
            if prefix:
                prefixes.add(prefix)
            elif tag != OUTSIDE:
                plain.add(tag)
    if not prefixes:
        if plain and plain <= set("BIESLU"):
            raise TunelabError(f"tags {', '.join(sorted(plain))} look like chunk tags without a type: write them "
                               "with one (B-X, I-X, e.g. B-KEY) so entities can be read from them")
        return "plain"
    if plain:
        raise TunelabError(f"tags mix prefixed labels ({', '.join(sorted(prefixes))}-) with unprefixed ones "
                           f"({', '.join(sorted(plain)[:3])}); use one tag scheme throughout")
    if prefixes & {"E", "S"} and prefixes & {"L", "U"}:
        raise TunelabError("tags mix BIOES (E-/S-) and BILOU (L-/U-) prefixes; use one scheme throughout")
    if prefixes & {"E", "S"}:
        return "bioes"
    if prefixes & {"L", "U"}:
        return "bilou"
    return "iob1" if _looks_iob1(tag_lists) else "iob2"


def _looks_iob1(tag_lists: Sequence[Sequence[str]]) -> bool:
    i_begins, b_elsewhere = False, False
    for tags in tag_lists:
        previous = OUTSIDE
        for tag in tags:
            prefix, kind = split_tag(tag)
            _, before = split_tag(previous)
            continues = previous != OUTSIDE and before == kind
            if prefix == "I" and not continues:
                i_begins = True
            elif prefix == "B" and not continues:
                b_elsewhere = True
            previous = tag
    return i_begins and not b_elsewhere


# prefix -> (IOB2 prefix, continues the open entity, ends it); S/U are single-word entities.
_PREFIX_RULES = {"B": ("B", False, False), "I": ("I", True, False), "E": ("I", True, True),
                 "L": ("I", True, True), "S": ("B", False, True), "U": ("B", False, True)}
_ALLOWED = {"iob2": "BI", "iob1": "BI", "bioes": "BIES", "bilou": "BILU"}


def to_iob2(tags: Sequence[str], scheme: str) -> tuple[list[str], int]:
    """`tags` in `scheme` as IOB2, and how many invalid tags were repaired (an I-/E-/L- that does not continue
    an entity of its type begins one). IOB1's I- beginning an entity is that scheme's rule, not a repair."""
    if scheme not in SCHEMES:
        raise TunelabError(f"unknown tag scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if scheme == "plain":
        return _plain_to_iob2(tags), 0
    out, repaired, open_type = [], 0, None  # open_type: type of the entity the next tag may continue
    for tag in tags:
        if tag == OUTSIDE:
            out.append(OUTSIDE)
            open_type = None
            continue
        prefix, kind = split_tag(tag)
        if prefix is None or prefix not in _ALLOWED[scheme]:
            allowed = ", ".join(_ALLOWED[scheme])
            raise TunelabError(f"tag {tag!r} is not in the {scheme.upper()} scheme (prefixes {allowed} or 'O'); "
                               "set data.tag_scheme to the data's scheme")
        iob2, continues, ends = _PREFIX_RULES[prefix]
        if continues and open_type != kind:
            iob2 = "B"
            repaired += scheme != "iob1"  # IOB1 begins entities with I- by design
        out.append(f"{iob2}-{kind}")
        open_type = None if ends else kind
    return out, repaired


def _plain_to_iob2(tags: Sequence[str]) -> list[str]:
    out, previous = [], OUTSIDE
    for tag in tags:
        out.append(OUTSIDE if tag == OUTSIDE else f"{'I' if tag == previous else 'B'}-{tag}")
        previous = tag
    return out


def spans_of(iob2_tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of IOB2 tags as (type, first word, last word + 1); an I- that does not continue its type
    begins an entity (the repair rule of `to_iob2`)."""
    spans, current = [], None  # current: [type, start, end] of the open entity
    for i, tag in enumerate(iob2_tags):
        prefix, kind = split_tag(tag)
        if prefix == "I" and current and current[0] == kind:
            current[2] = i + 1
            continue
        if current:
            spans.append(tuple(current))
        current = [kind, i, i + 1] if prefix in ("B", "I") else None
    if current:
        spans.append(tuple(current))
    return spans


def convert_records(records: list[dict], scheme: str, source: str, log: Log | None = None) -> int:
    """Replace each labelled record's tags by IOB2 in place; a tag foreign to `scheme` is a DataError naming
    the record. Logs and returns how many tags were repaired."""
    total = 0
    for rec in records:
        if rec["tags"] is None:
            continue
        try:
            rec["tags"], repaired = to_iob2(rec["tags"], scheme)
        except TunelabError as e:
            raise DataError(rec["_file"], f"{rec['_where']}: {e}", rec["_line"]) from None
        total += repaired
    if total and log:
        log(f"{source}: repaired {total} invalid tag{'s' if total != 1 else ''} ({scheme.upper()}): an I- that "
            "does not continue an entity of its type begins one (read as B-)")
    return total
