"""What happens to a task's records between reading and encoding: checks, deduplication, PII redaction and
augmentation, the same for every task.

A task says where its records hold text through a `DataView` (`Task.data_view(cfg)`), and its job passes the
splits it read (`Task.splits(cfg, log)`) through `prepare_splits` before encoding them. In order:
  1. data.check: the checks of tunelab.data.checks on the splits as read, a short summary in the log (the
     records are not changed);
  2. data.dedup: training records that repeat an earlier training record, or (nearly) equal a validation or
     test record, are dropped from train (tunelab.data.dedup). Validation and test stay whole: this is what
     "remove duplicates before splitting" has to mean when the splits are given files or seeded carves that
     other runs share: train never holds a text that is tested on, and a score with dedup is measured on the
     same held-out records as one without, so the two compare;
  3. data.redact_pii: every split's texts get typed placeholders (tunelab.data.pii), counted per type;
  4. data.augment: edited / back-translated copies of training records are added
     (`tunelab.data.augment.augment_records(records, view, cfg, log)` returns only the added records; they
     go after the training records, after dedup and redaction, so copies are of kept, redacted records).
     Only what `view.augment` hands over is edited, the input side: a copy keeps its record's label, entities,
     answers, target, assistant turns.
Validation and test are never augmented or deduplicated. What was found and changed is kept with the result
(`PreparedSplits.summary`, a `DataSummary`): the job keeps it as `job.data_summary`, and the run driver puts
it in eval.json ("data") and in report.html's "Data" section.

A task whose texts cannot be rewritten (view.rewrite None) refuses data.redact_pii, one whose records cannot
be augmented (view.augment None) data.augment, in its `check_config` through `rewrite_problems`, before
anything loads; the back-translation runs are checked there too.
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable

Splits = dict[str, tuple[list[dict], str]]


@dataclass(frozen=True)
class DataView:
    """Where one task's records hold their texts. Built per config by `Task.data_view(cfg)`."""

    texts: Callable[[dict], list[str]]
    """The texts of a record, in reading order (what duplicates, leakage, lengths, charset and PII look at)."""
    label: Callable[[dict], Hashable] | None = None
    """The record's label, for label balance (classification); None = the task has no single label."""
    rewrite: Callable[[dict, Callable[[str], str]], dict] | None = None
    """rewrite(record, fn) -> a copy of the record with each of its texts t replaced by fn(t), labels and
    answers included (PII redaction: a value must go wherever it is); None = this task's texts cannot be
    rewritten (e.g. character offsets point into them)."""
    no_rewrite: str = ""
    """Why `rewrite` is None, for the error that refuses data.redact_pii."""
    augment: Callable[[dict, Callable[[str], str]], dict] | None = None
    """augment(record, fn) -> a copy of the record with fn applied to the texts augmentation may edit: the
    input side only, never what the model is taught to give back (entities, answer spans, targets, assistant
    turns, positives), so an edited or back-translated copy keeps its record's label; None = this task's
    records cannot be augmented."""
    no_augment: str = ""
    """Why `augment` is None, for the error that refuses data.augment."""
    turns: Callable[[dict], list[tuple[str, str]] | None] | None = None
    """(role, content) of each turn of a conversation record (causal LMs), for turn checks; None = not chats
    (and a None from the function: this record is no chat, e.g. plain text in a causal LM's data)."""
    chunked: bool = False
    """The texts are cut into blocks of model.max_length tokens (pretraining, text-format causal LM data), so a
    long record loses nothing and lengths are not checked against model.max_length."""
    duplicate_key: Callable[[dict], tuple[str, str]] | None = None
    """(group, text) that duplicate and leakage checks compare: records match only within one group
    (extractive QA: the context, so a leak is the same question on the same context); None = no group and
    the record's texts joined."""

    def key(self, record: dict) -> tuple[str, str] | None:
        """The (group, text) duplicates compare for `record`; None when it has no text."""
        if self.duplicate_key is not None:
            group, text = self.duplicate_key(record)
        else:
            group, text = "", "\n".join(self.texts(record))
        return (group, text) if text.strip() else None


def where(record: dict, source: str, index: int) -> str:
    """Where a record came from, for examples: file:line, a file (a label folder's .txt), a SQuAD path, or the
    split's source and the record's number in it."""
    file, line, place = record.get("_file"), record.get("_line"), record.get("_where")
    if line is not None:
        return f"{file or source}:{line}"
    if file and place:
        return f"{file} {place}"
    if file:
        return str(file)
    return f"{source} record {index + 1}"


def rewrite_fields(record: dict, fields: tuple[str, ...], fn: Callable[[str], str]) -> dict:
    """A copy of `record` with fn applied to each of `fields` that holds a string (the others stay as they are)."""
    out = dict(record)
    for name in fields:
        if isinstance(out.get(name), str):
            out[name] = fn(out[name])
    return out


def rewrite_segments(text: str, cuts: list[int], fn: Callable[[str], str], keep: frozenset[int] = frozenset(),
                     fixed: frozenset[int] = frozenset()) -> tuple[str, dict[int, int]]:
    """(new text, {old offset: new offset} for each cut): `text` cut at the character offsets `cuts`, fn
    applied to each piece between two cuts, the pieces joined again.

    This keeps character spans consistent through any rewrite (a span from cut a to cut b covers the rewritten
    pieces between them), which is how answer and entity offsets survive redaction. A piece's white space at
    either end is kept as it is; a piece that starts at an offset in `keep` keeps its text when its rewrite is
    blank (an answer or an entity must not vanish), and one that starts at an offset in `fixed` is not
    rewritten at all (augmentation leaves answers alone). A finding that crosses a cut is seen as two pieces:
    widen the spans first (`widened`) where that matters.
    """
    bounds = sorted({0, len(text), *(c for c in cuts if 0 <= c <= len(text))})
    moved, out, at = {}, [], 0
    for a, b in zip(bounds, bounds[1:]):
        moved[a] = at
        piece = text[a:b]
        core = piece.strip()
        if core and a not in fixed:
            lead, trail = piece[:len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()):]
            changed = fn(core)
            piece = lead + (core if a in keep and not changed.strip() else changed) + trail
        out.append(piece)
        at += len(piece)
    moved[len(text)] = at
    return "".join(out), moved


def widened(spans: list[tuple[int, int]], units: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`spans` (start, end) grown so that none cuts into a unit: a start inside a unit moves to the unit's start,
    an end inside one to its end. Cutting a text at the widened spans' ends leaves every unit (a PII finding)
    whole in one piece, so a rewrite of the pieces sees it whole."""
    def start(at: int) -> int:
        return next((a for a, b in units if a < at < b), at)

    def end(at: int) -> int:
        return next((b for a, b in units if a < at < b), at)

    return [(start(a), end(b)) for a, b in spans]


def rewrite_problems(cfg, view: DataView) -> list[str]:
    """data.redact_pii set for a task whose texts cannot be rewritten, data.augment for one whose records cannot
    be augmented, and back-translation entries that are no translation runs: one problem each (every task's
    check_config adds these, so `tunelab validate`, `data check` and `train` refuse them before data loads)."""
    from tunelab.data.augment import back_translation_problems

    d, problems = cfg.data, []
    if d.redact_pii and view.rewrite is None:
        problems.append(f"data.redact_pii: {cfg.task} cannot rewrite its texts ({view.no_rewrite}); set it to "
                        "false")
    if (d.augment.copies > 0 or d.augment.back_translation) and view.augment is None:
        key = "data.augment.copies" if d.augment.copies > 0 else "data.augment.back_translation"
        problems.append(f"{key}: {cfg.task} cannot augment its records ({view.no_augment}); leave augmentation "
                        "off")
    elif d.augment.back_translation:
        problems += back_translation_problems(d.augment.back_translation)
    return problems


def held_out_as_trained(records: list[dict], view: DataView, cfg) -> list[dict]:
    """A held-out split's records as the run's training tested on them: redacted when data.redact_pii (dedup
    and augmentation never change validation or test). `tunelab eval RUN` on the run's own test split reads
    the split again and passes it through here, so its scores are those of eval.json."""
    if not cfg.data.redact_pii:
        return records
    from tunelab.data.pii import redact

    return [view.rewrite(r, redact) for r in records]


def pii_of_record(record: dict, view: DataView, shared: dict[str, bool]) -> tuple[list, bool]:
    """(the PII findings of `record` that count, whether any of its texts holds PII at all).

    A text that many records share counts once per split: the group text of `view.duplicate_key` (extractive
    QA's context, which each of its questions carries) counts with the first record of that group; `shared`
    (one dict per split, group text -> holds PII) remembers the groups seen, so a shared text is also scanned
    once. The data check and data.redact_pii count through here, so their counts agree.
    """
    from tunelab.data.pii import find_pii

    group = view.duplicate_key(record)[0] if view.duplicate_key is not None else None
    counted: list = []
    holds = False
    for text in view.texts(record):
        if not isinstance(text, str):
            continue
        if text == group and group in shared:
            holds = holds or shared[group]
            continue
        findings = find_pii(text)
        if text == group:
            shared[group] = bool(findings)
        counted += findings
        holds = holds or bool(findings)
    return counted, holds


# ---------------------------------------------------------------------------------------------
# What was found and changed, for the log, eval.json and report.html


@dataclass
class DataSummary:
    """What prepare_splits found and changed in one run's data."""

    records: dict[str, int] = field(default_factory=dict)
    """Records per split after every step."""
    check: object | None = None
    """The tunelab.data.checks.DataReport of the splits as read (None: data.check false)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """data.dedup: training records dropped, by reason (repeats, leaked into validation / test)."""
    redacted: dict[str, dict[str, int]] = field(default_factory=dict)
    """data.redact_pii: split -> PII type -> findings replaced, counted as the check counts them (`pii_of_record`:
    a context several questions share counts once)."""
    added: int = 0
    """data.augment: training records added."""

    def to_dict(self) -> dict:
        out: dict = {"records": dict(self.records)}
        if self.check is not None:
            out["check"] = self.check.counts()
        if self.dropped:
            out["dedup_dropped"] = dict(self.dropped)
        if self.redacted:
            out["pii_redacted"] = {s: dict(c) for s, c in self.redacted.items()}
        if self.added:
            out["augmented"] = self.added
        return out

    def html(self) -> str:
        """report.html's "Data" section: the check's summary and what dedup / redaction / augmentation did."""
        rows = [("records", ", ".join(f"{name} {n:,}" for name, n in self.records.items()))]
        if self.dropped:
            rows.append(("data.dedup dropped from train", counts_text(self.dropped)))
        if self.redacted:
            rows.append(("data.redact_pii replaced", pii_text(self.redacted) or "nothing found"))
        if self.added:
            rows.append(("data.augment added to train", f"{self.added:,} records"))
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        check = ("<p>data.check is off: the data was not checked</p>" if self.check is None else
                 "<pre>" + html.escape("\n".join(self.check.summary())) + "</pre>")
        return f"<table>{table}</table>{check}"


def counts_text(counts: dict[str, int]) -> str:
    """'2 repeats in train, 1 also in validation': counts by what they count, as the log, the check summary and
    report.html write them."""
    return ", ".join(f"{n:,} {what}" for what, n in counts.items())


def pii_text(per_split: dict[str, dict[str, int]]) -> str:
    """'1 EMAIL, 1 PHONE in train; 2 IP in test' (splits without PII left out; '' when none has any): PII per
    split and type in the log, the check summary and report.html."""
    return "; ".join(f"{counts_text(kinds)} in {split}" for split, kinds in per_split.items() if kinds)


class PreparedSplits(dict):
    """prepare_splits' result: {split: (records, source)} like the splits it was given, plus `summary`."""

    summary: DataSummary


# ---------------------------------------------------------------------------------------------
# prepare_splits


def prepare_splits(splits: Splits, view: DataView, cfg, log) -> PreparedSplits:
    """The splits a job encodes: checked, deduplicated, redacted and augmented as cfg.data says (module doc).

    `splits` is {"train" | "validation" | "test": (records, source)} as the task read them; the result has the
    same keys and sources. Records are never changed in place: dropped ones are left out, rewritten ones copied.
    """
    from tunelab.data.checks import check_splits
    from tunelab.data.dedup import find_duplicates, keep_indices

    d = cfg.data
    summary = DataSummary()
    out = PreparedSplits({name: (list(recs), src) for name, (recs, src) in splits.items()})
    duplicates = None
    if d.check:
        summary.check = check_splits(splits, view, cfg)
        duplicates = summary.check.duplicates
        for line in summary.check.summary():
            log(line)
    if d.dedup:
        if duplicates is None:
            train = [view.key(r) for r in splits["train"][0]]
            held = {n: [view.key(r) for r in splits[n][0]] for n in ("validation", "test") if n in splits}
            duplicates = find_duplicates(train, held, d.near_duplicate_threshold)
        summary.dropped = _dedup_counts(duplicates)
        records, src = out["train"]
        out["train"] = ([records[i] for i in keep_indices(len(records), duplicates.dropped())], src)
        log(f"data.dedup: dropped {len(records) - len(out['train'][0]):,} of {len(records):,} training records "
            f"({counts_text(summary.dropped)})")
    if d.redact_pii:
        summary.redacted = _redact(out, view)
        log(f"data.redact_pii: replaced {pii_text(summary.redacted) or 'nothing (no PII found)'}")
    if d.augment.copies > 0 or d.augment.back_translation:
        from tunelab.data.augment import augment_records

        records, src = out["train"]
        added = augment_records(records, view, cfg, log)  # it logs what it added, and how
        out["train"] = (records + added, src)
        summary.added = len(added)
    summary.records = {name: len(recs) for name, (recs, _) in out.items()}
    out.summary = summary
    return out


def _dedup_counts(duplicates) -> dict[str, int]:
    """Training records data.dedup drops, by reason, each record once: a leak before a repeat, validation
    before test (the counts add up to the records dropped)."""
    counts, counted = {}, set()
    for name, matches in duplicates.leaks.items():
        found = {m.index for m in matches} - counted
        counts[f"also in {name}"] = len(found)
        counted |= found
    counts = {"repeats in train": len({m.index for m in duplicates.repeats} - counted), **counts}
    return {why: n for why, n in counts.items() if n}


def _redact(splits: PreparedSplits, view: DataView) -> dict[str, dict[str, int]]:
    """Redact every split in place of its record lists (copies of the records that hold PII); counts per type,
    as the check counts them (`pii_of_record`)."""
    from tunelab.data.pii import redact

    counts: dict[str, dict[str, int]] = {}
    for name, (records, src) in list(splits.items()):
        found: Counter = Counter()
        shared: dict[str, bool] = {}
        out = []
        for r in records:
            counted, holds = pii_of_record(r, view, shared)
            found.update(f.kind for f in counted)
            out.append(view.rewrite(r, redact) if holds else r)
        splits[name] = (out, src)
        counts[name] = {kind: found[kind] for kind in sorted(found)}
    return counts
