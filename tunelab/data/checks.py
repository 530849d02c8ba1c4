"""Checks of a run's data as training reads it: duplicates and leakage, labels, odd records, chats and PII.

`check_splits(splits, view, cfg)` looks at the records of each split through the task's `DataView` and returns
a `DataReport`: a few summary lines (logged when `tunelab train` starts, data.check), the whole report with
examples (`tunelab data check CONFIG`) and a dict (`--json`, eval.json). Nothing here changes a record.

What is counted, and from where:
- duplicates (tunelab.data.dedup): training records that repeat an earlier training record, exactly (after
  case and white space are normalised) or nearly (Jaccard of word 3-grams >= data.near_duplicate_threshold,
  found with MinHash LSH and confirmed exactly); leakage: training records that (nearly) equal a validation
  or test record;
- labels (view.label): records per label in each split, the largest / smallest training class, labels of
  train missing from validation or test, and labels of validation or test that train lacks;
- records: empty (no text at all), short (fewer than SHORT_CHARS letters and digits in all its texts), long
  (more than LONG_FACTOR x model.max_length words: at about 1.3 tokens a word, over 90% of such a text lies
  beyond one row of model.max_length tokens; pretraining and text-format chunks lose nothing to length);
- charset: U+FFFD replacement characters (bytes that were not valid text where the data was made), control
  characters other than tab and line breaks, mojibake (UTF-8 read as Latin-1 / Windows-1252: "Ã©", "â€™",
  "Â£"), and records whose scripts differ from the data's usual one: a record's scripts are those holding at
  least SCRIPT_SHARE of its letters (Latin, Greek, Cyrillic, Arabic, Hebrew, Devanagari, Thai, CJK); when
  SCRIPT_MAJORITY of a split's records share one set, the others are reported;
- chats (view.turns): conversations with no assistant turn, with an empty assistant turn, and ones that
  model.max_length tokens would cut, estimated as characters / CHARS_PER_TOKEN plus TURN_TOKENS per turn for
  the chat template (no tokenizer is loaded: the check runs before the model, at every training start; the
  job's own log line counts the exact truncations once the data is tokenised);
- PII (tunelab.data.pii): e-mail addresses, phone numbers, card numbers, IP addresses and IBANs per split
  and type, examples masked; a text many records share (extractive QA's context) counts once per split
  (`tunelab.data.prepare.pii_of_record`, which data.redact_pii counts through too).
Every example that quotes a record (short, charset) shows its PII masked too, so neither the printed report
nor --json holds the personal data it counts.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.prepare import DataView, Splits, counts_text, pii_of_record, pii_text, where

LONG_FACTOR = 8
SHORT_CHARS = 3
CHARS_PER_TOKEN = 4.0  # SmolLM2's tokenizer: 4.08 characters a token over 500 ShareGPT chats (seeded sample)
TURN_TOKENS = 5  # tokens SmolLM2's chat template adds per turn (<|im_start|>role\n ... <|im_end|>\n)
SCRIPT_SHARE = 0.1
SCRIPT_MAJORITY = 0.9
SNIPPET = 80  # characters of a record shown in an example

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_C1 = re.compile(r"[\x7f-\x9f]")
_SPACE = re.compile(r"[^\S\x0b\x0c\x1c-\x1f\x85]+")  # white space but the control characters \s counts in it
_MOJIBAKE = re.compile("Ã[\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                       "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
                       "|Â[\u0080-\u00bf]|â€")
SCRIPTS = {"Latin": "A-Za-z\u00c0-\u024f\u1e00-\u1eff", "Greek": "\u0370-\u03ff", "Cyrillic": "\u0400-\u04ff",
           "Arabic": "\u0600-\u06ff\u0750-\u077f", "Hebrew": "\u0590-\u05ff", "Devanagari": "\u0900-\u097f",
           "Thai": "\u0e00-\u0e7f", "CJK": "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"}
_SCRIPT_RE = {name: re.compile(f"[{chars}]") for name, chars in SCRIPTS.items()}
_LATIN_ASCII = re.compile("[A-Za-z]")
_ASCII_RUN = re.compile(r"[\x00-\x7f]+")
_NOT_ASCII_LETTERS = bytes(c for c in range(128) if not chr(c).isalpha())
_WORD_CHARS = re.compile(r"\w")


@dataclass
class Finding:
    """One thing the check counts: `key` names it in to_dict ("train.near_duplicates"), `title` in words."""

    section: str
    key: str
    title: str
    count: int
    examples: list[str] = field(default_factory=list)


@dataclass
class DataReport:
    """The checks of one run's splits (see the module docstring)."""

    task: str
    records: dict[str, int]
    findings: list[Finding]
    labels: dict | None
    pii: dict[str, dict[str, int]]
    duplicates: object  # tunelab.data.dedup.Duplicates: what data.dedup drops
    threshold: float
    seconds: float = 0.0

    def count(self, key: str) -> int:
        return next((f.count for f in self.findings if f.key == key), 0)

    def counts(self) -> dict:
        """Every count by key, the label counts and PII per split (eval.json's "data" / "check")."""
        out: dict = {f.key: f.count for f in self.findings}
        if self.labels is not None:
            out["labels"] = self.labels["counts"]
        out["pii"] = self.pii
        return out

    def to_dict(self) -> dict:
        return {"task": self.task, "records": self.records, "near_duplicate_threshold": self.threshold,
                "seconds": round(self.seconds, 3), "labels": self.labels, "pii": self.pii,
                "findings": [{"section": f.section, "key": f.key, "title": f.title, "count": f.count,
                              "examples": f.examples} for f in self.findings]}

    def summary(self) -> list[str]:
        """A few lines for the start of a training run: only what was found, and what to do about it."""
        sizes = ", ".join(f"{name} {n:,}" for name, n in self.records.items())
        lines = [f"data check: {sizes} records ({self.seconds:.1f} s)"]
        dup = self._duplicate_line()
        if dup:
            lines.append(dup)
        if self.labels is not None:
            lines.append(self._label_line())
        odd: Counter = Counter()
        for f in self.findings:
            if f.section in ("records", "charset", "chats"):
                odd[f.key.split(".", 1)[1].replace("_", " ")] += f.count
        if any(odd.values()):
            lines.append("  records (all splits): " + counts_text({what: n for what, n in odd.items() if n}))
        pii = pii_text(self.pii)
        if pii:
            lines.append(f"  PII: {pii} (data.redact_pii: true replaces them with placeholders)")
        if len(lines) > 1:
            lines.append("  examples: tunelab data check CONFIG")
        return lines

    def _duplicate_line(self) -> str:
        parts = []
        exact, near = self.count("train.exact_duplicates"), self.count("train.near_duplicates")
        if exact or near:
            parts.append(f"train repeats {exact:,} exact + {near:,} near duplicates")
        for name in self.records:
            if name != "train" and self.count(f"{name}.leaked_exact") + self.count(f"{name}.leaked_near"):
                parts.append(f"{self.count(f'{name}.leaked_exact') + self.count(f'{name}.leaked_near'):,} "
                             f"training records also in {name} ({self.count(f'{name}.leaked_near'):,} near)")
        return ("  duplicates: " + "; ".join(parts) + " (data.dedup: true drops them from train)") if parts else ""

    def _label_line(self) -> str:
        lab = self.labels
        line = (f"  labels: {len(lab['counts'].get('train', {}))} in train, largest / smallest class "
                f"{lab['imbalance']:.1f}x")
        for name, missing in lab["missing"].items():
            if missing:
                line += f"; {len(missing)} not in {name}"
        for name, unknown in lab["unknown"].items():
            if unknown:
                line += f"; {len(unknown)} {name} labels not in train"
        return line

    def render(self, examples: int = 3) -> str:
        """The whole report: every count, with up to `examples` examples each (PII masked)."""
        sizes = ", ".join(f"{name} {n:,}" for name, n in self.records.items())
        lines = [f"{self.task} data: {sizes} records (checked in {self.seconds:.1f} s)"]
        if self.labels is not None:
            lines += ["", "labels (records per label)"]
            for name, counts in self.labels["counts"].items():
                lines.append(f"  {name}: " + ", ".join(f"{lab} {n:,}" for lab, n in counts.items()))
            lines.append(f"  largest / smallest training class: {self.labels['imbalance']:.1f}x")
            for kind, what in (("missing", "training labels with no {name} record"),
                               ("unknown", "{name} labels that train lacks (training stops on them)")):
                for name, labels in self.labels[kind].items():
                    if labels:
                        lines.append(f"  {what.format(name=name)}: {', '.join(map(str, labels))}")
        titles = {"duplicates": f"duplicates and leakage (near: Jaccard of word 3-grams >= {self.threshold})",
                  "records": "records", "charset": "charset", "chats": "chats", "pii": "PII (shown masked)"}
        for section, title in titles.items():
            found = [f for f in self.findings if f.section == section]
            if not found:
                continue
            lines += ["", title]
            if section == "duplicates":
                for f in found:
                    lines.append(f"  {f.title}: {f.count:,}")
                    lines += [f"    {e}" for e in f.examples[:examples]]
                continue
            for what, per_split in _by_check(found).items():  # one line per check: its count in each split
                lines.append(f"  {what}: " + ", ".join(f"{split} {f.count:,}" for split, f in per_split))
                lines += [f"    {split}: {e}" for split, f in per_split for e in f.examples[:examples]]
        return "\n".join(lines)


def _by_check(findings: list[Finding]) -> dict[str, list[tuple[str, Finding]]]:
    """Findings of one section grouped by check, in order: {title without the split: [(split, finding)]}."""
    out: dict[str, list[tuple[str, Finding]]] = {}
    for f in findings:
        split = f.key.split(".", 1)[0]
        out.setdefault(f.title.removesuffix(f" in {split}"), []).append((split, f))
    return out


# ---------------------------------------------------------------------------------------------
# The checks


def check_splits(splits: Splits, view: DataView, cfg, examples: int = 5) -> DataReport:
    """Run every check on `splits` ({name: (records, source)} as the task read them); see the module doc."""
    from tunelab.data.dedup import find_duplicates

    started = time.perf_counter()
    d = cfg.data
    order = [n for n in ("train", "validation", "test") if n in splits]
    keys = {n: [view.key(r) for r in splits[n][0]] for n in order}
    duplicates = find_duplicates(keys["train"], {n: keys[n] for n in order if n != "train"},
                                 d.near_duplicate_threshold)
    findings = _duplicate_findings(duplicates, splits, view, examples)
    pii: dict[str, dict[str, int]] = {}
    for name in order:
        records, source = splits[name]
        scan = _scan(records, source, view, cfg.model.max_length, examples)
        findings += [Finding(section, f"{name}.{key}", f"{title} in {name}", len(places), places[:examples])
                     for section, key, title, places in scan.findings()]
        pii[name] = {kind: scan.pii[kind] for kind in sorted(scan.pii)}
        findings += [Finding("pii", f"{name}.pii_{kind.lower()}", f"{kind} in {name}", n,
                             scan.pii_examples[kind][:examples]) for kind, n in sorted(scan.pii.items())]
    labels = _label_balance(splits, view, order) if view.label is not None else None
    return DataReport(task=cfg.task, records={n: len(splits[n][0]) for n in order}, findings=findings,
                      labels=labels, pii=pii, duplicates=duplicates, threshold=d.near_duplicate_threshold,
                      seconds=time.perf_counter() - started)


def _snippet(texts: list[str]) -> str:
    """The start of a record's texts as one quoted line (texts joined with " | "): its PII masked as the PII
    section shows it (a report never prints personal data), white space runs made one space, and control
    characters as JSON escapes (\\u0007), once: json.dumps escapes C0 characters itself, and the C1 ones
    (U+007F-U+009F) it leaves raw are escaped the same way."""
    from tunelab.data.pii import find_pii, mask

    masked = []
    for t in texts:
        if not t.strip():
            continue
        for f in reversed(find_pii(t)):  # from the end, so earlier offsets stay right
            t = t[:f.start] + mask(f) + t[f.end:]
        masked.append(_SPACE.sub(" ", t).strip())
    text = " | ".join(masked)
    quoted = json.dumps(text[:SNIPPET] + ("..." if len(text) > SNIPPET else ""), ensure_ascii=False)
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def _duplicate_findings(duplicates, splits: Splits, view: DataView, examples: int) -> list[Finding]:
    """Findings for repeats inside train and leaks into each held-out split, exact and near apart. An example
    whose places do not tell the records apart (no line, and a file many records share, e.g. a gettext catalog)
    quotes the training record's text."""
    train, train_src = splits["train"]
    files = Counter(r.get("_file") for r in train)

    def described(m) -> str:
        other_records, other_src = splits[m.other_split]
        sim = "" if m.kind == "exact" else f" (Jaccard {m.similarity:.2f})"
        verb = "repeats" if m.other_split == "train" else "equals" if m.kind == "exact" else "is near"
        record = train[m.index]
        vague = record.get("_line") is None and record.get("_where") is None and files[record.get("_file")] > 1
        quote = f": {_snippet([t for t in view.texts(record) if isinstance(t, str)])}" if vague else ""
        return (f"{where(record, train_src, m.index)} {verb} "
                f"{where(other_records[m.other], other_src, m.other)}{sim}{quote}")

    out = []
    for kind in ("exact", "near"):
        found = [m for m in duplicates.repeats if m.kind == kind]
        out.append(Finding("duplicates", f"train.{kind}_duplicates",
                           f"{kind} duplicates in train (repeat an earlier training record)", len(found),
                           [described(m) for m in found[:examples]]))
    for name, matches in duplicates.leaks.items():
        for kind in ("exact", "near"):
            found = [m for m in matches if m.kind == kind]
            out.append(Finding("duplicates", f"{name}.leaked_{kind}",
                               f"training records {'equal to' if kind == 'exact' else 'near'} a {name} record",
                               len(found), [described(m) for m in found[:examples]]))
    return out


@dataclass
class _Scan:
    """Per-record findings of one split: each a list of example strings (one per record found)."""

    empty: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)
    long: list[str] = field(default_factory=list)
    replacement: list[str] = field(default_factory=list)
    control: list[str] = field(default_factory=list)
    mojibake: list[str] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    no_assistant: list[str] = field(default_factory=list)
    empty_assistant: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)
    pii: Counter = field(default_factory=Counter)
    pii_examples: dict[str, list[str]] = field(default_factory=dict)
    chats: bool = False
    chunked: bool = False

    def findings(self) -> list[tuple[str, str, str, list[str]]]:
        """(section, key, title, examples) of every check that applies; counts are len(examples)."""
        rows = [("records", "empty", "records with no text", self.empty),
                ("records", "short", f"records with fewer than {SHORT_CHARS} letters or digits", self.short),
                *([] if self.chunked else [("records", "long", f"records longer than {LONG_FACTOR} x "
                                                                 "model.max_length words", self.long)]),
                ("charset", "replacement_chars", "records with U+FFFD replacement characters", self.replacement),
                ("charset", "control_chars", "records with control characters", self.control),
                ("charset", "mojibake", "records with mojibake (UTF-8 read as Latin-1)", self.mojibake),
                ("charset", "unusual_script", "records in an unusual script for the data", self.script)]
        if self.chats:
            rows += [("chats", "no_assistant_turn", "conversations with no assistant turn", self.no_assistant),
                     ("chats", "empty_assistant_turn", "conversations with an empty assistant turn",
                      self.empty_assistant),
                     ("chats", "cut_at_max_length", "conversations model.max_length tokens would cut (estimated)",
                      self.cut)]
        return rows


def _scan(records: list[dict], source: str, view: DataView, max_length: int, examples: int) -> _Scan:
    """Lengths, charset, chat turns and PII of every record of one split (a progress display where it takes long:
    all of ShareGPT takes seconds, mostly in the PII expressions)."""
    from tunelab.data.pii import mask
    from tunelab.train.logging import progress

    scan = _Scan(chunked=view.chunked)
    shared: dict[str, bool] = {}  # texts many records share (QA contexts): their PII counts once
    signatures: list[frozenset] = []
    long_words = LONG_FACTOR * max_length if not view.chunked else float("inf")
    for i, r in enumerate(progress(records, len(records), f"data check {source}", "records")):
        texts = [t for t in view.texts(r) if isinstance(t, str)]
        place = where(r, source, i)
        if not any(t.strip() for t in texts):
            scan.empty.append(place)
            signatures.append(frozenset())
            continue
        joined = "\n".join(texts)
        if len(joined) < 16 * SHORT_CHARS and len(_WORD_CHARS.findall(joined)) < SHORT_CHARS:
            scan.short.append(f"{place}: {_snippet(texts)}")
        if len(joined) > long_words * 2 and (words := len(joined.split())) > long_words:  # 2+ characters a word
            scan.long.append(f"{place}: {words:,} words")
        if "\ufffd" in joined:
            scan.replacement.append(f"{place}: {_snippet(texts)}")
        if _CONTROL.search(joined):
            scan.control.append(f"{place}: {_snippet(texts)}")
        if not joined.isascii() and _MOJIBAKE.search(joined):
            scan.mojibake.append(f"{place}: {_snippet(texts)}")
        signatures.append(_scripts(joined))
        for f in pii_of_record(r, view, shared)[0]:
            scan.pii[f.kind] += 1
            scan.pii_examples.setdefault(f.kind, [])
            if len(scan.pii_examples[f.kind]) < examples:
                scan.pii_examples[f.kind].append(f"{place}: {mask(f)}")
        if view.turns is not None:
            _check_turns(view.turns(r), place, max_length, scan)
    scan.script = _unusual_scripts(signatures, records, source)
    return scan


def _check_turns(turns, place: str, max_length: int, scan: _Scan) -> None:
    """A conversation's turn problems (turns None: this record is no chat)."""
    if turns is None:
        return
    scan.chats = True
    answers = [content for role, content in turns if role == "assistant"]
    if not answers:
        scan.no_assistant.append(place)
    elif any(not a.strip() for a in answers):
        scan.empty_assistant.append(place)
    estimate = sum(len(c) for _, c in turns) / CHARS_PER_TOKEN + TURN_TOKENS * len(turns)
    if estimate > max_length:
        scan.cut.append(f"{place}: about {estimate:,.0f} tokens")


def _scripts(text: str) -> frozenset:
    """The scripts that hold at least SCRIPT_SHARE of a text's letters (ASCII text: Latin, if it has letters)."""
    if text.isascii():
        return frozenset({"Latin"}) if _LATIN_ASCII.search(text) else frozenset()
    ascii_bytes = text.encode("ascii", "ignore")
    counts = {"Latin": len(ascii_bytes.translate(None, _NOT_ASCII_LETTERS))}
    rest = _ASCII_RUN.sub("", text)  # the regular expressions below run over the non-ASCII characters only
    for name, rx in _SCRIPT_RE.items():
        counts[name] = counts.get(name, 0) + len(rx.findall(rest))
    total = sum(counts.values())
    return frozenset(n for n, c in counts.items() if total and c >= SCRIPT_SHARE * total)


def _unusual_scripts(signatures: list[frozenset], records: list[dict], source: str) -> list[str]:
    """Records whose scripts differ from the set SCRIPT_MAJORITY of the split's records share (if any)."""
    counted = Counter(s for s in signatures if s)
    if not counted:
        return []
    usual, n = counted.most_common(1)[0]
    if n < SCRIPT_MAJORITY * sum(counted.values()):
        return []
    return [f"{where(records[i], source, i)}: {'+'.join(sorted(s))} (usual: {'+'.join(sorted(usual))})"
            for i, s in enumerate(signatures) if s and s != usual]


def _label_balance(splits: Splits, view: DataView, order: list[str]) -> dict:
    """Records per label per split, the training imbalance, labels missing from or unknown to train."""
    counts: dict[str, dict[str, int]] = {}
    for name in order:
        c = Counter(str(view.label(r)) for r in splits[name][0] if view.label(r) is not None)
        counts[name] = dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
    train = counts.get("train", {})
    imbalance = max(train.values()) / min(train.values()) if train else 0.0
    return {"counts": counts, "imbalance": round(imbalance, 3),
            "missing": {n: sorted(set(train) - set(counts[n])) for n in order if n != "train"},
            "unknown": {n: sorted(set(counts[n]) - set(train)) for n in order if n != "train"}}


# ---------------------------------------------------------------------------------------------
# `tunelab data check CONFIG`


def data_of(cfg, log):
    """(task, its DataView, its splits as read) for a config; a TunelabError for a task with no data check, and
    the task's config problems (e.g. data.redact_pii where it cannot rewrite) before any data is read."""
    from tunelab.errors import ConfigError, TunelabError
    from tunelab.tasks import task_for

    task = task_for(cfg)
    if task.splits is None or task.data_view is None:
        raise TunelabError(f"task {task.name}: its data cannot be checked (the task gives no splits / data view)")
    problems = task.check_config(cfg)
    if problems:
        raise ConfigError(problems)
    return task, task.data_view(cfg), task.splits(cfg, log)


def run_check(args) -> int:
    """`tunelab data check CONFIG [overrides] [--examples N] [--json FILE]`: print the report, exit 0."""
    import sys

    from tunelab.config import load_config
    from tunelab.errors import TunelabError

    if args.examples < 0:
        raise TunelabError(f"--examples: got {args.examples}; give 0 or more examples per finding")
    cfg = load_config(args.config, list(args.overrides))
    _, view, splits = data_of(cfg, lambda line: print(line, file=sys.stderr))
    report = check_splits(splits, view, cfg, examples=max(args.examples, 1))
    print(report.render(args.examples))
    if args.json:
        from tunelab.io import atomic_write_text

        path = Path(args.json)
        try:  # whole or not at all: a report cut short by a full disk or a Ctrl-C would read as valid data
            atomic_write_text(path, json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
        except OSError as e:
            raise TunelabError(f"--json: cannot write {path} ({e.strerror or e}); choose another file") from None
        print(f"report written to {path}", file=sys.stderr)
    return 0
