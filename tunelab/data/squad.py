"""Extractive question answering data: SQuAD-style JSON (v1.1, and v2.0 with unanswerable questions) and flat
records (JSONL / JSON list / CSV / builtin:) read into one form, with every answer offset checked.

The one form, a `QARecord` dict per question:
    {"id": str, "question": str, "context": str, "answers": [text, ...], "starts": [char offset, ...],
     "_file": path, "_line": line or None, "_where": "record 7" | "data[0].paragraphs[2].qas[1]"}
`answers` is empty for a question the context does not answer (SQuAD v2 `is_impossible`, or empty lists).

Layouts:
- SQuAD JSON: {"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question", "answers": [{"text",
  "answer_start"}], "is_impossible"}]}]}]} (a v2 question with is_impossible has no answers; its
  `plausible_answers` are not gold answers and are ignored);
- flat records: data.question_field, data.context_field, and data.answers_field holding
  {"text": [...], "answer_start": [...]} (the Hugging Face `squad` layout); a JSON string there is read too
  (CSV cells).

An answer whose text is not at its answer_start is an error naming the file, the record and both strings;
with data.fix_offsets the occurrence of the text nearest the given start is used instead, and the number
of answers moved is logged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from tunelab.errors import DataError

Log = Callable[[str], None]


def load_qa_records(ref: str, *, question_field: str = "question", context_field: str = "context",
                    answers_field: str = "answers", fix_offsets: bool = False, log: Log | None = None) -> list[dict]:
    """The questions of one data reference (a file or builtin:NAME) as QARecords, offsets checked."""
    from tunelab.data.sources import load_records, missing_path_error

    log = log or (lambda _line: None)
    path = Path(ref).expanduser()
    if not ref.startswith("builtin:") and path.suffix.lower() == ".json":
        if not path.exists():
            raise missing_path_error(path, "check the path")
        data = _read_json(path)
        if isinstance(data, dict):
            records = squad_records(data, str(path))
        else:
            records = flat_records(load_records(ref, log), ref, question_field, context_field, answers_field)
    else:
        records = flat_records(load_records(ref, log), ref, question_field, context_field, answers_field)
    moved = check_offsets(records, fix_offsets)
    if moved:
        log(f"{ref}: data.fix_offsets moved {moved} answer{'s' if moved != 1 else ''} to where their text is "
            "in the context (the nearest occurrence to the given answer_start)")
    if not records:
        raise DataError(ref, "holds no questions")
    return records


def _read_json(path: Path):
    from tunelab.data.sources import _read_text

    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON ({e.msg})", e.lineno) from None


# ---------------------------------------------------------------------------------------------
# SQuAD layout


def squad_records(data: dict, source: str) -> list[dict]:
    """QARecords of a SQuAD-style JSON object (v1.1 or v2.0)."""
    articles = data.get("data")
    if not isinstance(articles, list):
        raise DataError(source, "a SQuAD-style JSON file holds {\"data\": [{\"paragraphs\": [...]}]}; no 'data' "
                                "list found (for one question per record use JSONL with question, context and "
                                "answers fields)")
    out = []
    for a, article in enumerate(articles):
        for p, para in enumerate(_list(article, "paragraphs", f"data[{a}]", source)):
            where = f"data[{a}].paragraphs[{p}]"
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise DataError(source, f"{where}: 'context' is missing or not a non-empty string")
            for q, qa in enumerate(_list(para, "qas", where, source)):
                out.append(_squad_question(qa, context, f"{where}.qas[{q}]", source))
    return out


def squad_as_flat(data: dict, source: str) -> list[dict]:
    """A SQuAD-style JSON object as flat records (id, question, context, answers: {text, answer_start}), so
    `tunelab predict --input` / `eval --data` read it like JSONL (with the default field names)."""
    return [{"id": r["id"], "question": r["question"], "context": r["context"], "_file": source,
             **({} if r["answers"] is None else {"answers": {"text": r["answers"], "answer_start": r["starts"]}})}
            for r in squad_records(data, source)]


def _list(obj, key: str, where: str, source: str) -> list:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list):
        raise DataError(source, f"{where}: '{key}' is missing or not a list (SQuAD layout: data[].paragraphs[]"
                                ".qas[])")
    return value


def _squad_question(qa, context: str, where: str, source: str) -> dict:
    if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or not qa["question"].strip():
        raise DataError(source, f"{where}: 'question' is missing or not a non-empty string")
    if not qa.get("is_impossible") and "answers" not in qa:  # unlabelled (a hidden test set), not "no answer"
        return {"id": str(qa.get("id", where)), "question": qa["question"], "context": context, "answers": None,
                "starts": None, "_file": source, "_line": None, "_where": where}
    answers = [] if qa.get("is_impossible") else qa["answers"]
    if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
        raise DataError(source, f"{where}: 'answers' must be a list of {{text, answer_start}} objects")
    texts = [x.get("text") for x in answers]
    starts = [x.get("answer_start") for x in answers]
    _check_answer_types(texts, starts, where, source, None)
    return {"id": str(qa.get("id", where)), "question": qa["question"], "context": context, "answers": texts,
            "starts": starts, "_file": source, "_line": None, "_where": where}


# ---------------------------------------------------------------------------------------------
# Flat layout


def flat_records(records: list[dict], source: str, question_field: str, context_field: str,
                 answers_field: str | None) -> list[dict]:
    """QARecords of flat records (one question each); records without an answers field (or answers_field
    None: prediction inputs) get answers None."""
    out = []
    for i, rec in enumerate(records):
        file, line = rec.get("_file", source), rec.get("_line")
        where = f"record {i + 1}"
        for field, key in ((question_field, "data.question_field"), (context_field, "data.context_field")):
            value = rec.get(field)
            if not isinstance(value, str) or not value.strip():
                what = "missing" if field not in rec else f"not a non-empty string ({value!r:.40})"
                raise DataError(file, f"{where}: field '{field}' is {what}; set {key} to the field holding it "
                                      f"(fields here: {', '.join(k for k in rec if not k.startswith('_'))})", line)
        value = rec.get(answers_field) if answers_field else None
        texts, starts = _flat_answers(value, answers_field, where, file, line)
        out.append({"id": str(rec.get("id", i + 1)), "question": rec[question_field], "context": rec[context_field],
                    "answers": texts, "starts": starts, "_file": file, "_line": line, "_where": where,
                    "_record": rec})
    return out


def _flat_answers(value, field: str, where: str, file: str, line: int | None):
    """(texts, starts) of an answers field; (None, None) when the record has none (prediction input)."""
    if value is None:
        return None, None
    if isinstance(value, str):  # a CSV cell holding the JSON object
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict) or not isinstance(value.get("text"), list) \
            or not isinstance(value.get("answer_start"), list) or len(value["text"]) != len(value["answer_start"]):
        raise DataError(file, f"{where}: field '{field}' must be {{\"text\": [...], \"answer_start\": [...]}} with "
                              "one start per text (both empty: no answer); set data.answers_field to the field "
                              "holding it", line)
    _check_answer_types(value["text"], value["answer_start"], where, file, line)
    return list(value["text"]), list(value["answer_start"])


def _check_answer_types(texts: list, starts: list, where: str, file: str, line: int | None) -> None:
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(file, f"{where}: an answer text is {text!r:.40}; answers are non-empty strings "
                                  "(an unanswerable question has no answers)", line)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise DataError(file, f"{where}: answer_start {start!r} of {text!r:.40} is not a character offset "
                                  "(an integer >= 0)", line)


# ---------------------------------------------------------------------------------------------
# Offsets


def check_offsets(records: list[dict], fix: bool) -> int:
    """Check that every answer's text is at its start in the context; with `fix`, move those that are not
    to the nearest occurrence of their text. Returns how many were moved; raises a DataError otherwise."""
    moved = 0
    for rec in records:
        context = rec["context"]
        for k, (text, start) in enumerate(zip(rec["answers"] or [], rec["starts"] or [])):
            found = context[start:start + len(text)]
            if found == text:
                continue
            nearest = nearest_occurrence(context, text, start) if fix else None
            if nearest is None:
                raise DataError(rec["_file"], _offset_message(rec, text, start, found, fix), rec["_line"])
            rec["starts"][k] = nearest
            moved += 1
    return moved


def _offset_message(rec: dict, text: str, start: int, found: str, fix: bool) -> str:
    where = f"{rec['_where']} (id {rec['id']})"
    if fix:
        return f"{where}: the answer {text!r} does not occur anywhere in the context; fix or remove the answer"
    return (f"{where}: the answer {text!r} is not at answer_start {start}: the context has {found!r} there; fix "
            "answer_start, or set data.fix_offsets: true to use the nearest occurrence of the text")


def nearest_occurrence(context: str, text: str, start: int) -> int | None:
    """The start of the occurrence of `text` in `context` nearest to `start` (the earlier one on a tie)."""
    best, i = None, context.find(text)
    while i != -1:
        if best is None or abs(i - start) < abs(best - start):
            best = i
        i = context.find(text, i + 1)
    return best


# ---------------------------------------------------------------------------------------------
# Splits


def split_by_context(records: list[dict], val_fraction: float, test_fraction: float, seed: int,
                     hold_out) -> dict[str, list[int]]:
    """train / validation / test question indices, splitting the distinct contexts (not the questions), so
    all questions about one context land in one split (a context seen in training would leak its answers)."""
    from tunelab.data.splits import split_indices

    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(rec["context"], []).append(i)
    members = list(groups.values())
    parts = split_indices(len(members), val_fraction, test_fraction, seed, hold_out=hold_out)
    return {name: sorted(i for g in idx for i in members[g]) for name, idx in parts.items()}
