"""Translation pairs from the gettext catalogs installed on this machine (`builtin:gettext`).

Every Debian machine holds thousands of translated software messages in
`/usr/share/locale/<lang>/LC_MESSAGES/*.mo`: English msgids with their msgstr in the language. This module
turns one language's catalogs into `{"source", "target"}` pairs that a seq2seq model can train on.

The .mo reader is written here rather than taken from the stdlib `gettext` module because the stdlib one
decodes the header as UTF-8 before it knows the catalog's charset, so a Latin-1 catalog (net-tools' German
one) raises instead of being read; it also hides the catalog behind a private attribute. The format is
small: a table of (length, offset) for the msgids and one for the msgstrs.

What is kept, and why (each drop is counted and logged, one line per reason):
- A language is the folder of that exact name: `de` reads `de/` only; regional variants (`de_CH`, with
  "ss" for "ß") are languages of their own, asked for by name, so spelling does not mix.
- A catalog that cannot be read (truncated, not a .mo file) or does not decode by the charset its header
  declares is skipped and counted; one bad catalog never stops the load.
- The header entry (empty msgid) and untranslated entries (empty msgstr) are dropped.
- Plural entries use the singular msgid with msgstr[0]; context (`msgctxt`) is dropped from the msgid.
- A menu-label accelerator (GTK `_File`, Qt `&File`) is removed from both sides when the msgid has exactly
  one at the start of a word and the msgstr exactly one anywhere (translators may move it inside a word:
  `Papier_typ`). Identifiers such as `regexp_matches` have their underscore inside a word in the msgid
  and are left alone.
- Leading and trailing whitespace is stripped from both sides (help texts end with newlines).
- Pairs where placeholders (`%s`, `%(name)s`, `{0}`, `$1`, ...) are more than `max_placeholder_share` of
  either side's non-space characters are dropped: there is little language in them to learn.
- Pairs with a side longer than `max_chars` characters are dropped.
- Duplicates by source string are dropped, keeping the first in catalog order (catalogs sorted by file
  name, entries by msgid), so the result is deterministic and a split cannot put one source in two parts.
"""
from __future__ import annotations

import re
import struct
from collections import Counter, defaultdict
from pathlib import Path

from tunelab.data.sources import Log, default_log, report_dropped
from tunelab.errors import DataError

LOCALE_ROOT = Path("/usr/share/locale")
DIRECTIONS = ("to_english", "from_english")
_MAGIC = 0x950412DE


class CatalogError(Exception):
    """A catalog that cannot be used; the message is the reason it is skipped."""


def gettext_languages(root: Path | str = LOCALE_ROOT) -> list[str]:
    """Languages (locale folder names) with at least one .mo catalog under `root`, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if any((d / "LC_MESSAGES").glob("*.mo")))


def read_mo(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) of every entry of a .mo file, decoded by the charset its header declares.

    Raises CatalogError for a file that is truncated, is not a .mo file, or does not decode.
    """
    raw = path.read_bytes()
    if len(raw) < 20:
        raise CatalogError("truncated or not a .mo file")
    for order in ("<", ">"):  # the magic number says the byte order the file was written in
        magic, revision, count, ids_at, strs_at = struct.unpack(order + "5I", raw[:20])
        if magic == _MAGIC:
            break
    else:
        raise CatalogError("not a .mo file (bad magic number)")
    if revision >> 16 > 1:
        raise CatalogError(f"unknown .mo revision {revision >> 16}")
    entries = [(_string(raw, order, ids_at, i), _string(raw, order, strs_at, i)) for i in range(count)]
    charset = header_charset(dict(entries).get(b"", b""))
    try:
        return [(k.decode(charset), v.decode(charset)) for k, v in entries]
    except LookupError:
        raise CatalogError(f"unknown charset {charset!r} in its header") from None
    except UnicodeDecodeError:
        raise CatalogError(f"does not decode as {charset}, the charset its header declares") from None


def _string(raw: bytes, order: str, table_at: int, i: int) -> bytes:
    """String i of the (length, offset) table at `table_at`; CatalogError when it points past the end."""
    at = table_at + 8 * i
    if at + 8 > len(raw):
        raise CatalogError("truncated (string table past the end of the file)")
    length, offset = struct.unpack(order + "2I", raw[at:at + 8])
    if offset + length > len(raw):
        raise CatalogError("truncated (a string past the end of the file)")
    return raw[offset:offset + length]


def header_charset(header: bytes) -> str:
    """The charset named by a catalog header's Content-Type line; UTF-8 when it names none."""
    # The charset name is ASCII, so reading the header as Latin-1 finds it whatever the rest holds.
    found = re.search(r"charset=([\w.:-]+)", header.decode("latin-1"), re.IGNORECASE)
    return found.group(1) if found and found.group(1).upper() != "CHARSET" else "utf-8"


_PLACEHOLDER = re.compile(
    r"%%"  # a literal percent sign: matched so that it is not read as the start of one, then not counted
    r"|%\([A-Za-z_]\w*\)[-+#0]*\d*(?:\.\d+)?[A-Za-z]"  # Python %(name)s
    r"|%<PRI\w+>"  # C99 inttypes: %<PRIu64>
    r"|%(?:\d+\$)?[-+#0']*(?:\*|\d+)?(?:\.(?:\*|\d+))?(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?"
    r"(?:p[A-Z]|[diouxXeEfFgGaAcspnmB])"  # printf %s %5.2f %1$s %lu, bfd's %pB %B, glibc's %m
    r"|%\d+"  # Qt %1
    r"|\{[\w.]*(?:[:!][^{}]*)?\}"  # {0} {name} {name:>8}
    r"|\$\{\w+\}|\$\w+"  # shell / JS $1 $name ${name}
)


def placeholder_share(text: str) -> float:
    """Fraction of the non-space characters of `text` that belong to placeholders (0 for blank text)."""
    chars = sum(not c.isspace() for c in text)
    if not chars:
        return 0.0
    # printf's space flag ("% d") is left out of the pattern: "100% done" would read as a placeholder
    covered = sum(sum(not c.isspace() for c in m.group()) for m in _PLACEHOLDER.finditer(text)
                  if m.group() != "%%")
    return covered / chars


# A msgid's accelerator starts a word; the msgstr's may sit inside one ("Papier_typ"). Neither "&amp;" nor
# strftime's "%_d" is a marker.
_SOURCE_MARK = re.compile(r"(?<![\w&%])[_&](?=[^\W\d_])(?![A-Za-z]+;)")
_TARGET_MARK = re.compile(r"(?<![_&%])[_&](?=[^\W\d_])(?![A-Za-z]+;)")


def strip_accelerators(msgid: str, msgstr: str) -> tuple[str, str, bool]:
    """Both sides without their menu accelerator marker, when each has exactly one (see the module doc)."""
    ids, strs = list(_SOURCE_MARK.finditer(msgid)), list(_TARGET_MARK.finditer(msgstr))
    if len(ids) != 1 or len(strs) != 1 or len(_TARGET_MARK.findall(msgid)) != 1:
        return msgid, msgstr, False
    i, j = ids[0].start(), strs[0].start()
    return msgid[:i] + msgid[i + 1:], msgstr[:j] + msgstr[j + 1:], True


def catalog_entries(entries: list[tuple[str, str]], counts: Counter) -> list[tuple[str, str]]:
    """(English, translation) of a catalog's usable entries in msgid order; drops are counted in `counts`."""
    kept = []
    for key, value in sorted(entries):
        msgid = key.split("\x04", 1)[-1]  # "context\x04msgid": the context only tells translators apart
        if not msgid:
            counts["catalog headers (metadata, not a message)"] += 1
            continue
        msgid = msgid.split("\x00", 1)[0]  # "singular\x00plural"
        msgstr = value.split("\x00", 1)[0]  # msgstr[0], the translation of the singular
        if not msgstr.strip():
            counts["untranslated entries (empty msgstr)"] += 1
            continue
        if not msgid.strip():
            counts["entries with a blank msgid"] += 1
            continue
        msgid, msgstr, stripped = strip_accelerators(msgid, msgstr)
        counts[ACCELERATORS] += stripped
        kept.append((msgid.strip(), msgstr.strip()))
    return kept


ACCELERATORS = "accelerator markers removed"


def gettext_pairs(language: str | None, *, direction: str = "to_english", max_placeholder_share: float = 0.5,
                  max_chars: int | None = None, root: Path | str = LOCALE_ROOT, log: Log | None = None
                  ) -> list[dict]:
    """`{"source", "target", "_file"}` pairs from the catalogs of `language` (see the module docstring).

    to_english: source is the translation, target the English msgid; from_english the other way round.
    Counts (catalogs and entries read, skipped by reason, pairs kept) go to `log`, one line per reason.
    """
    root, name = Path(root), f"builtin:gettext ({language})"
    catalogs = _catalog_files(language, root)
    if direction not in DIRECTIONS:
        raise DataError(name, f"unknown direction {direction!r}; use one of: {', '.join(DIRECTIONS)} "
                              "(data.direction)")
    counts, bad, pairs, seen = Counter(), defaultdict(list), [], set()
    for path in catalogs:
        try:
            entries = read_mo(path)
        except CatalogError as e:
            bad[f"catalogs that cannot be read ({e})"].append(path.name)
            continue
        counts["entries"] += len(entries)
        for english, translated in catalog_entries(entries, counts):
            source, target = (translated, english) if direction == "to_english" else (english, translated)
            reason = _filter_reason(source, target, max_placeholder_share, max_chars, seen)
            if reason:
                counts[reason] += 1
                continue
            seen.add(source)
            pairs.append({"source": source, "target": target, "_file": f"{language}/{path.name}"})
    _report(name, len(catalogs), counts, bad, len(pairs), direction, log or default_log)
    if not pairs:
        raise DataError(name, "no pair left after the drops logged above; check the catalogs or raise "
                              "data.max_chars / data.max_placeholder_share")
    return pairs


def _catalog_files(language: str | None, root: Path) -> list[Path]:
    """The sorted .mo files of `language`; a DataError naming the languages that have some when none."""
    if not language:
        raise DataError("builtin:gettext", f"needs a language: set data.language to one of "
                                           f"{_language_list(root)}")
    files = sorted((root / language / "LC_MESSAGES").glob("*.mo"))
    if not files:
        raise DataError("builtin:gettext", f"no gettext catalogs for language {language!r} in "
                                           f"{root}/{language}/LC_MESSAGES; languages with catalogs: "
                                           f"{_language_list(root)}")
    return files


def _language_list(root: Path) -> str:
    languages = gettext_languages(root)
    return ", ".join(languages) if languages else f"none (no {root}/<lang>/LC_MESSAGES/*.mo on this machine)"


def _filter_reason(source: str, target: str, max_placeholder_share: float, max_chars: int | None,
                   seen: set[str]) -> str | None:
    """Why a pair is dropped (the first check it fails), or None to keep it."""
    if max_chars is not None and max(len(source), len(target)) > max_chars:
        return f"pairs longer than max_chars={max_chars} (either side)"
    if max(placeholder_share(source), placeholder_share(target)) > max_placeholder_share:
        return f"pairs mostly placeholders (> max_placeholder_share={max_placeholder_share})"
    if source in seen:
        return "duplicate sources (the first in catalog order is kept)"
    return None


def _report(name: str, n_catalogs: int, counts: Counter, bad: dict[str, list[str]], kept: int,
            direction: str, log: Log) -> None:
    """The load's counts: read, skipped per reason (one line each), kept."""
    n_bad = sum(len(v) for v in bad.values())
    log(f"{name}: read {counts['entries']:,} entries from {n_catalogs - n_bad:,} of {n_catalogs:,} catalogs")
    report_dropped(name, bad, log)
    log(f"{name}: skipped {n_bad} catalogs in all")
    for reason, n in counts.items():
        if reason not in ("entries", ACCELERATORS):
            log(f"{name}: skipped {n:,} {reason}")
    log(f"{name}: kept {kept:,} pairs ({direction}; {counts[ACCELERATORS]:,} with an accelerator marker "
        "removed)")
