"""Extra training records made from the training split (data.augment): EDA-style edited copies and copies
translated there and back through seq2seq runs.

`augment_records(records, view, cfg, log)` is what `tunelab.data.prepare.prepare_splits` calls on the training
split only (after deduplication and PII redaction); it returns the added records alone, each a copy of one
training record made through the task's `DataView.augment`, which hands over only the input side of a record:
a label, an entity, an extractive answer, a seq2seq target, a causal LM's assistant turns or completion and a
retrieval positive are never edited nor back-translated, so a copy teaches what its record teaches. Every field
that is not a text (the label, a conversation's roles) stays as it was. Validation and test never come here.

Edited copies (data.augment.copies per record) follow "EDA: Easy Data Augmentation Techniques" (Wei & Zou,
2019); the code is tunelab's own, since the edits must leave alone what a tokenizer-free edit would break:
  synonym  n words that have synonyms in the bundled list (synonyms.txt) replaced by one of them, case kept;
  insert   n times, a synonym of a random such word inserted at a random place between words;
  swap     n times, two random words trade places;
  delete   each word deleted with probability data.augment.rate, never all of them;
with n = max(1, int(rate x words)). Each copy applies one edit, drawn from data.augment.edits. Words are the
whitespace-separated pieces of a text with their punctuation held apart (`prices,` is the word `prices` and a
comma that stays where it was); URLs, e-mail addresses, anything with a digit and redaction placeholders such
as [EMAIL] are never edited, moved or deleted, stop words are never replaced by synonyms, and whitespace
(paragraph breaks) is kept. Capitalised words inside a sentence are taken for names and never replaced.

Every record gets its own random.Random, seeded from data.augment.seed (null: train.seed) and the record's
index, so the same records and seed give the same copies on every machine and a record's copies do not
depend on the other records. A copy equal to its record (e.g. a one-word text and `delete`) or to an earlier
copy of it is not added, and counted.

Back-translation (data.augment.back_translation: [RUN, RUN, ...]) sends every training text augmentation may
edit (the input side, as above) through the seq2seq runs in turn (e.g. en->de, then de->en) with each run's own
predict, a sentence at a time (a translation model is trained on sentences, and an article would not fit its
max_length); the round trip is one added copy, unless a sentence came back empty or the whole copy came back
unchanged (both counted).
"""
from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunelab.errors import ConfigError

SYNONYMS_FILE = Path(__file__).with_name("synonyms.txt")
EDITS = ("synonym", "insert", "swap", "delete")
AUGMENTED = "_augmented"
"""The key an added record carries: the edit that made it, or "back-translation" (an internal key, as
_file / _line: predict and the reports leave keys starting with _ out)."""
BACK_TRANSLATION = "back-translation"

# English function words: never replaced by a synonym (EDA's rule: changing them changes the grammar, not the
# wording) and never the source of an inserted synonym.
STOP_WORDS = frozenset("""
a about above after again against all also although am an and another any anybody anyone anything are
around as at be because been before being below beneath beside besides between beyond both but by can
cannot could did do does doing done down during each either else enough even ever every everybody everyone
everything few for from further had has have having he her here hers herself him himself his how however i
if in inside into is it its itself just least less many may me might mine more most much must my myself
near neither never no nobody none nor not nothing now of off on once one only onto or other others otherwise
ought our ours ourselves out outside over own per perhaps quite rather same several shall she should since so
some somebody someone something still such than that the their theirs them themselves then there these they
this those though through throughout thus till to too toward towards under underneath unless until up upon
us very via was we well were what whatever when whenever where whereas wherever whether which while who
whoever whom whose why will with within without would yet you your yours yourself yourselves
""".split())

_PROTECTED = re.compile(r"\d|@|://|^www\.|\[[A-Z][A-Z_]*\]")
"""A whitespace piece that is (or holds) a number, an e-mail address, a URL or a redaction placeholder."""
_PIECE = re.compile(r"^(\W*?)(\w.*?)?((?:['’][sS])?\W*)$", re.S)
"""prefix punctuation, the word, suffix punctuation (a possessive 's goes with the suffix)."""
_WORD = re.compile(r"^[^\W\d_]+(?:['’-][^\W\d_]+)*$")
"""A word edits may touch: letters, with inner apostrophes or hyphens (don't, well-known)."""
_SENTENCE_END = re.compile(r"[.!?:]['\"’”)\]]*$")
_CARRIED = re.compile(r"^[.,;:!?…]+$")
"""Punctuation that follows a deleted word to the word before it ("prices rose sharply." -> "prices rose.")."""


# ---------------------------------------------------------------------------------------------
# The synonym list


@functools.lru_cache(maxsize=1)
def synonyms() -> dict[str, tuple[str, ...]]:
    """word -> its synonyms (sorted), from the bundled synonyms.txt; loaded once."""
    return parse_synonyms(SYNONYMS_FILE.read_text(encoding="utf-8"), str(SYNONYMS_FILE))


def parse_synonyms(text: str, source: str) -> dict[str, tuple[str, ...]]:
    """Groups of comma-separated synonyms, one per line ('#' starts a comment): each word maps to the others.

    The list is tunelab's own data, so a malformed line is a bug in it: the error names the line.
    """
    table: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        group = [w.strip() for w in line.split(",")]
        bad = [w for w in group if not _WORD.match(w) or w != w.lower() or w in STOP_WORDS or w in table]
        if len(group) < 2 or bad:
            raise ValueError(f"{source}:{number}: a group needs two or more lower-case words, none a stop word "
                             f"or in another group; got {line!r}")
        for w in group:
            table[w] = tuple(sorted(set(group) - {w}))
    return table


# ---------------------------------------------------------------------------------------------
# A text as words with their punctuation and whitespace


@dataclass
class Piece:
    """One whitespace-separated piece of a text: prefix + word + suffix, then the whitespace after it."""

    prefix: str
    word: str
    suffix: str
    space: str
    editable: bool
    """A word edits may touch (letters only; not a number, URL, e-mail address or placeholder)."""

    @property
    def text(self) -> str:
        return self.prefix + self.word + self.suffix


def split_text(text: str) -> tuple[str, list[Piece]]:
    """(leading whitespace, pieces) of a text; `join_text` gives the text back exactly."""
    parts = re.split(r"(\s+)", text)
    lead = ""
    if parts and parts[0] == "":
        parts = parts[1:]
        lead = parts.pop(0) if parts else ""
    pieces = []
    for i in range(0, len(parts), 2):
        raw, space = parts[i], parts[i + 1] if i + 1 < len(parts) else ""
        m = _PIECE.match(raw)
        prefix, word, suffix = m.group(1), m.group(2) or "", m.group(3)
        editable = bool(_WORD.match(word)) and not _PROTECTED.search(raw)
        if not editable:  # kept whole: nothing inside it is a word an edit may touch
            prefix, word, suffix = "", raw, ""
        pieces.append(Piece(prefix, word, suffix, space, editable))
    return lead, pieces


def join_text(lead: str, pieces: list[Piece]) -> str:
    return lead + "".join(p.text + p.space for p in pieces)


def _sentence_start(pieces: list[Piece], i: int) -> bool:
    """Whether piece i begins a sentence (the text's first piece, or after . ! ? : or a line break)."""
    return i == 0 or "\n" in pieces[i - 1].space or bool(_SENTENCE_END.search(pieces[i - 1].text))


def _replaceable(pieces: list[Piece], i: int, table: dict[str, tuple[str, ...]]) -> bool:
    """A word with synonyms that may be replaced: not a stop word, lower-case or capitalised only as a
    sentence's first word (a capital inside a sentence, or all capitals, marks a name or an acronym)."""
    p = pieces[i]
    if not p.editable or p.word.lower() not in table:
        return False
    return p.word.islower() or (p.word == p.word.capitalize() and _sentence_start(pieces, i))


def _with_case(word: str, like: str) -> str:
    """`word` written like `like`: capitalised when `like` is."""
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


# ---------------------------------------------------------------------------------------------
# The four edits, each on one text with the record's random generator


def changes(rate: float, words: int) -> int:
    """How many words one edit changes: n = max(1, int(rate x words)) (EDA's alpha)."""
    return max(1, int(rate * words))


def synonym_replacement(text: str, rng: random.Random, rate: float) -> str:
    """n distinct words that have synonyms, each replaced by one of its synonyms (case kept)."""
    table = synonyms()
    lead, pieces = split_text(text)
    candidates = [i for i in range(len(pieces)) if _replaceable(pieces, i, table)]
    rng.shuffle(candidates)
    for i in candidates[:changes(rate, sum(p.editable for p in pieces))]:
        p = pieces[i]
        p.word = _with_case(rng.choice(table[p.word.lower()]), p.word)
    return join_text(lead, pieces)


def random_insertion(text: str, rng: random.Random, rate: float) -> str:
    """n times: a synonym of a random word that has synonyms, inserted before a random piece (or at the end)."""
    table = synonyms()
    lead, pieces = split_text(text)
    n = changes(rate, sum(p.editable for p in pieces))
    sources = [pieces[i].word.lower() for i in range(len(pieces)) if _replaceable(pieces, i, table)]
    if not sources:
        return text
    for _ in range(n):
        new = Piece("", rng.choice(table[rng.choice(sources)]), "", " ", True)
        at = rng.randint(0, len(pieces))
        if at == len(pieces):  # at the end: the new word takes over the text's trailing whitespace
            new.space, pieces[-1].space = pieces[-1].space, " "
        pieces.insert(at, new)
    return join_text(lead, pieces)


def random_swap(text: str, rng: random.Random, rate: float) -> str:
    """n times: two random words trade places (their punctuation stays where it was)."""
    lead, pieces = split_text(text)
    words = [i for i, p in enumerate(pieces) if p.editable]
    if len(words) < 2:
        return text
    for _ in range(changes(rate, len(words))):
        a, b = rng.sample(words, 2)
        pieces[a].word, pieces[b].word = pieces[b].word, pieces[a].word
    return join_text(lead, pieces)


def random_deletion(text: str, rng: random.Random, rate: float) -> str:
    """Each word deleted with probability `rate`, never all of them (one stays, at random). A deleted word's
    trailing punctuation moves to the word before it ("prices rose sharply." -> "prices rose."), its opening
    punctuation to the piece after it; a line break after it stays."""
    lead, pieces = split_text(text)
    words = [i for i, p in enumerate(pieces) if p.editable]
    if len(words) < 2:
        return text
    doomed = {i for i in words if rng.random() < rate}
    if len(doomed) == len(words):
        doomed.discard(rng.choice(words))
    kept: list[Piece] = []
    opening = ""  # punctuation that opened a deleted word, for the next kept piece
    for i, p in enumerate(pieces):
        if i not in doomed:
            p.prefix, opening = opening + p.prefix, ""
            kept.append(p)
            continue
        trailing = re.sub(r"^['’][sS]", "", p.suffix)  # a possessive goes with its word
        if p.prefix and not trailing:
            opening += p.prefix
        elif trailing and not p.prefix and _CARRIED.match(trailing) and kept and kept[-1].editable \
                and not kept[-1].suffix:
            kept[-1].suffix = trailing
        if kept and "\n" in p.space and "\n" not in kept[-1].space:
            kept[-1].space = p.space
    if pieces[-1] is not kept[-1]:  # the text's trailing whitespace stays trailing
        kept[-1].space = pieces[-1].space
    return join_text(lead, kept)


EDIT_FUNCTIONS: dict[str, Callable[[str, random.Random, float], str]] = {
    "synonym": synonym_replacement, "insert": random_insertion, "swap": random_swap, "delete": random_deletion}


# ---------------------------------------------------------------------------------------------
# Records


def record_rng(seed: int, index: int) -> random.Random:
    """The random generator of the record at `index`: from the seed and the index only (a string seed is
    hashed with SHA-512 by `random`, the same on every machine and Python version)."""
    return random.Random(f"tunelab-augment:{seed}:{index}")


def edited_copies(records: list[dict], rewrite: Callable[[dict, Callable[[str], str]], dict], *, copies: int,
                  edits: list[str], rate: float, seed: int) -> tuple[list[dict], dict[str, int], int]:
    """(added copies, added per edit, copies not added because equal to their record or an earlier copy).

    Copy c of record i applies the edit drawn c-th from record i's generator to each of the record's texts.
    """
    added: list[dict] = []
    per_edit = dict.fromkeys(edits, 0)
    same = 0
    for index, record in enumerate(records):
        rng = record_rng(seed, index)
        seen = [record]
        for _ in range(copies):
            edit = rng.choice(edits)
            copy = rewrite(record, lambda t, e=EDIT_FUNCTIONS[edit]: e(t, rng, rate))
            if copy in seen:
                same += 1
                continue
            seen.append(copy)
            added.append({**copy, AUGMENTED: edit})
            per_edit[edit] += 1
    return added, per_edit, same


def augment_records(records: list[dict], view, cfg, log) -> list[dict]:
    """The records data.augment adds to the training split `records` (only the added ones), with one log line
    per kind saying how many were added and why others were not.

    `view` is the task's tunelab.data.prepare.DataView; `cfg` the run config (cfg.data.augment, cfg.train.seed).
    Back-translation runs are checked before any record is touched.
    """
    a = cfg.data.augment
    if not (a.copies or a.back_translation) or not records:
        return []
    if view.augment is None:
        raise ConfigError([f"data.augment: {view.no_augment or 'this task cannot augment its records'}; "
                           "remove data.augment from the config"])
    problems = back_translation_problems(a.back_translation)
    if problems:
        raise ConfigError(problems)
    seed = cfg.train.seed if a.seed is None else a.seed
    added: list[dict] = []
    if a.copies:
        edited, per_edit, same = edited_copies(records, view.augment, copies=a.copies, edits=list(a.edits),
                                               rate=a.rate, seed=seed)
        kinds = ", ".join(f"{e} {n}" for e, n in per_edit.items())
        log(f"data.augment: added {len(edited)} edited copies of {len(records)} training records ({kinds}, seed "
            f"{seed}, rate {a.rate})" + (f"; {same} not added: equal to their record or an earlier copy" if same
                                         else ""))
        added += edited
    if a.back_translation:
        added += back_translated(records, view.augment, a.back_translation, log)
    return added


def added_by_kind(records: list[dict]) -> dict[str, int]:
    """How many of `records` data.augment added, per edit and back-translation (for a report); {} = none."""
    counts: dict[str, int] = {}
    for r in records:
        kind = r.get(AUGMENTED)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# Back-translation


def back_translation_problems(runs: list[str]) -> list[str]:
    """Why a data.augment.back_translation entry cannot translate: not a finished run, or a run whose task
    does not translate (checked without loading any model; `tunelab validate` and training ask it)."""
    from tunelab.errors import TunelabError
    from tunelab.runs import run_task
    from tunelab.tasks import tasks

    problems = []
    for ref in runs:
        try:
            task = run_task(ref)
        except TunelabError as e:
            problems.append(f"data.augment.back_translation: {e}")
            continue
        if "translate" not in task.verbs:
            registry = tasks()
            able = [n for n in registry.names() if "translate" in registry.get(n).verbs]
            problems.append(f"data.augment.back_translation: {ref} is a {task.name} run; back-translation needs "
                            f"{' or '.join(able)} runs (e.g. one trained en->de and one de->en)")
    return problems


# Where a text breaks into sentences: a line break, or whitespace after . ! ? (and a closing quote or bracket).
_BREAK = re.compile(r"(\s*\n\s*|(?<=[.!?])\s+|(?<=[.!?][\"'’”)\]])\s+)")


def sentences(text: str) -> list[str]:
    """A text as [sentence, break, sentence, break, ..., sentence]: lines, and sentences ending in . ! ? in
    them; "".join() gives the text back. A sentence may be empty (a text that starts with a line break)."""
    return _BREAK.split(text)


def translate_all(texts: list[str], ref: str, log, chunk: int = 64) -> list[str]:
    """`texts` through the run at `ref` (its task's predict, in chunks), with about ten progress lines for a
    long list."""
    from tunelab.runs import load_run, records_of_texts

    run = load_run(ref)
    out: list[str] = []
    chunks = -(-len(texts) // chunk)
    every = max(1, -(-chunks // 10))
    for k in range(chunks):
        batch = texts[k * chunk:(k + 1) * chunk]
        out += [r["generated"] for r in run.task.predict(run, records_of_texts(run, batch), ref, log)]
        if chunks > 2 and ((k + 1) % every == 0 or k + 1 == chunks):
            log(f"back-translation through {ref}: {len(out):,}/{len(texts):,} sentences")
    return out


def back_translated(records: list[dict], rewrite: Callable[[dict, Callable[[str], str]], dict],
                    runs: list[str], log) -> list[dict]:
    """One round-trip copy per record: every sentence of its texts through `runs` in turn; a copy with a
    sentence that came back empty, or equal to its record, is not added (counted in the log)."""
    seen: list[str] = []  # the texts rewrite hands over (what the round trip must cover)
    for record in records:
        rewrite(record, lambda t: seen.append(t) or t)
    unique = list(dict.fromkeys(s.strip() for t in seen for s in sentences(t)[0::2] if s.strip()))
    translated = unique
    for ref in runs:
        translated = translate_all(translated, ref, log)
    round_trip = dict(zip(unique, (t.strip() for t in translated)))
    added, empty, same = [], 0, 0
    for record in records:
        blank: list[str] = []

        def there_and_back(text: str) -> str:
            parts = sentences(text)
            for j in range(0, len(parts), 2):
                core = parts[j].strip()
                if core:  # the sentence's own surrounding spaces stay
                    back = round_trip[core]
                    blank.extend([] if back else [core])
                    parts[j] = parts[j].replace(core, back, 1)
            return "".join(parts)

        copy = rewrite(record, there_and_back)
        if blank:
            empty += 1
        elif copy == record:
            same += 1
        else:
            added.append({**copy, AUGMENTED: BACK_TRANSLATION})
    skipped = [f"{n} {why}" for n, why in ((empty, "with a sentence that came back empty"),
                                           (same, "that came back unchanged")) if n]
    log(f"data.augment.back_translation: added {len(added)} round-trip copies of {len(records)} training records "
        f"through {' -> '.join(runs)}" + (f"; not added: {', '.join(skipped)}" if skipped else ""))
    return added
