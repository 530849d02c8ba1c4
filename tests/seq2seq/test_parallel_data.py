"""Seq2seq pairs: aligned text files, data files with source/target fields, and builtin:gettext read from
tiny .mo catalogs written here byte by byte (plus one check on the machine's real catalogs)."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tunelab.data.gettext import placeholder_share, read_mo, strip_accelerators
from tunelab.data.parallel import gettext_languages, load_pairs
from tunelab.data.sources import load_records
from tunelab.errors import DataError

HEADER = "Project-Id-Version: t 1\nContent-Type: text/plain; charset={charset}\nLast-Translator: {who}\n"


def mo_bytes(entries: dict[str, str], charset: str = "UTF-8", who: str = "Jürgen Bächle") -> bytes:
    """A GNU .mo file (little-endian, revision 0, no hash table) holding `entries` plus a header entry.

    Keys use the .mo conventions: "context\\x04msgid", "singular\\x00plural"; values "str0\\x00str1".
    """
    items = {"": HEADER.format(charset=charset, who=who), **entries}
    encoded = sorted((k.encode(charset), v.encode(charset)) for k, v in items.items())
    n = len(encoded)
    ids_at, strs_at = 28, 28 + 8 * n
    data_at = strs_at + 8 * n
    tables, blob = [b"", b""], b""
    for side in (0, 1):
        for pair in encoded:
            tables[side] += struct.pack("<2I", len(pair[side]), data_at + len(blob))
            blob += pair[side] + b"\x00"
    head = struct.pack("<7I", 0x950412DE, 0, n, ids_at, strs_at, 0, data_at)
    return head + tables[0] + tables[1] + blob


def write_catalog(root: Path, lang: str, name: str, data: bytes) -> Path:
    path = root / lang / "LC_MESSAGES" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def gettext(root: Path, lang: str = "de", **kw) -> tuple[list[dict], list[str]]:
    lines = []
    pairs = load_pairs("builtin:gettext", language=lang, locale_root=root, log=lines.append, **kw)
    return pairs, lines


def test_mo_writer_round_trips_through_the_stdlib_reader(tmp_path):
    import gettext as stdlib_gettext

    path = write_catalog(tmp_path, "de", "a.mo", mo_bytes({"Open": "Öffnen", "%d file\x00%d files":
                                                           "%d Datei\x00%d Dateien"}))
    with path.open("rb") as f:
        t = stdlib_gettext.GNUTranslations(f)
    assert t.gettext("Open") == "Öffnen" and t.ngettext("%d file", "%d files", 2) == "%d Dateien"
    assert ("Open", "Öffnen") in read_mo(path)


def test_plural_context_header_and_untranslated_entries(tmp_path):
    write_catalog(tmp_path, "de", "app.mo", mo_bytes({
        "Open file": "Datei öffnen",
        "%d file in folder\x00%d files in folder": "%d Datei im Ordner\x00%d Dateien im Ordner",
        "menu\x04Close": "Schließen",
        "Quit": "",
        "  Show help\n": "  Hilfe anzeigen\n",
    }))
    pairs, lines = gettext(tmp_path)
    assert [(p["source"], p["target"]) for p in pairs] == [
        ("Hilfe anzeigen", "Show help"),  # outer whitespace stripped; order: the raw msgids, sorted
        ("%d Datei im Ordner", "%d file in folder"),  # singular msgid with msgstr[0]
        ("Datei öffnen", "Open file"),
        ("Schließen", "Close"),  # context dropped (it sorted the entry under "menu\x04")
    ]
    assert pairs[0]["_file"] == "de/app.mo"
    assert "builtin:gettext (de): skipped 1 untranslated entries (empty msgstr)" in lines
    assert "builtin:gettext (de): skipped 1 catalog headers (metadata, not a message)" in lines
    assert lines[-1].startswith("builtin:gettext (de): kept 4 pairs (to_english")


def test_from_english_swaps_the_sides(tmp_path):
    write_catalog(tmp_path, "fr", "app.mo", mo_bytes({"Open file": "Ouvrir le fichier"}))
    pairs, _ = gettext(tmp_path, "fr", direction="from_english")
    assert [(p["source"], p["target"]) for p in pairs] == [("Open file", "Ouvrir le fichier")]
    with pytest.raises(DataError, match="unknown direction 'sideways'; use one of: to_english, from_english"):
        gettext(tmp_path, "fr", direction="sideways")


def test_broken_catalogs_are_skipped_and_counted_latin1_is_re_decoded(tmp_path):
    good = mo_bytes({"Save": "Speichern"})
    write_catalog(tmp_path, "de", "a-good.mo", good)
    # net-tools style: Latin-1 bytes with a header that says so -> read by the declared charset
    write_catalog(tmp_path, "de", "b-latin1.mo", mo_bytes({"Size": "Größe"}, charset="ISO-8859-1"))
    # declares UTF-8 but holds Latin-1 bytes -> cannot be decoded
    lying = mo_bytes({"Size": "Größe"}, charset="ISO-8859-1").replace(b"ISO-8859-1", b"UTF-8\n\n\n\n\n")
    write_catalog(tmp_path, "de", "c-lying.mo", lying)
    write_catalog(tmp_path, "de", "d-truncated.mo", good[: len(good) - 12])
    write_catalog(tmp_path, "de", "e-not-mo.mo", b"msgid \"Save\"\nmsgstr \"Speichern\"\n")
    pairs, lines = gettext(tmp_path)
    assert [(p["source"], p["target"]) for p in pairs] == [("Speichern", "Save"), ("Größe", "Size")]
    text = "\n".join(lines)
    assert "read 4 entries from 2 of 5 catalogs" in text
    assert "skipped 1 catalogs that cannot be read (does not decode as UTF-8, the charset its header " \
           "declares) (e.g. c-lying.mo)" in text
    assert "skipped 1 catalogs that cannot be read (truncated (a string past the end of the file)) " \
           "(e.g. d-truncated.mo)" in text
    assert "skipped 1 catalogs that cannot be read (not a .mo file (bad magic number)) (e.g. e-not-mo.mo)" in text
    assert "builtin:gettext (de): skipped 3 catalogs in all" in lines


def test_duplicates_keep_the_first_in_sorted_catalog_order(tmp_path):
    # b.mo is written first; file order on disk must not matter, the sorted name order does
    write_catalog(tmp_path, "de", "b.mo", mo_bytes({"Close": "Schließen", "Exit": "Beenden"}))
    write_catalog(tmp_path, "de", "a.mo", mo_bytes({"Close window": "Schließen", "Open": "Öffnen"}))
    pairs, lines = gettext(tmp_path)
    assert [(p["source"], p["target"], p["_file"]) for p in pairs] == [
        ("Schließen", "Close window", "de/a.mo"), ("Öffnen", "Open", "de/a.mo"), ("Beenden", "Exit", "de/b.mo")]
    assert "builtin:gettext (de): skipped 1 duplicate sources (the first in catalog order is kept)" in lines
    # from English the sources differ ("Close" vs "Close window"), so nothing is a duplicate
    assert len(gettext(tmp_path, direction="from_english")[0]) == 4


def test_placeholder_heavy_and_long_pairs_are_dropped(tmp_path):
    write_catalog(tmp_path, "de", "app.mo", mo_bytes({
        "%s: %s": "%s: %s",  # 4 of 5 non-space characters are placeholders
        "{0} of {1}": "{0} von {1}",  # 6/8 and 6/9
        "$1 $2 ok": "$1 $2 gut",  # 4/6
        "%(name)s saved": "%(name)s gespeichert",  # 8/13 in English: over 0.5 on that side
        "Copied %d files to %s": "%d Dateien nach %s kopiert",
        "A very long message indeed": "Eine wirklich sehr lange Nachricht",
    }))
    pairs, lines = gettext(tmp_path, max_chars=30)
    assert [p["target"] for p in pairs] == ["Copied %d files to %s"]
    assert "builtin:gettext (de): skipped 4 pairs mostly placeholders (> max_placeholder_share=0.5)" in lines
    assert "builtin:gettext (de): skipped 1 pairs longer than max_chars=30 (either side)" in lines
    assert len(gettext(tmp_path, max_placeholder_share=1.0)[0]) == 6
    with pytest.raises(DataError, match=r"no pair left after the drops logged above"):
        gettext(tmp_path, max_chars=3)


@pytest.mark.parametrize("text, share", [
    ("%s: %s", 4 / 5), ("Hello {name}", 6 / 11), ("%(count)d items", 9 / 14), ("%1$s and %2$s", 8 / 11),
    ("50%% done", 0.0), ("Saved to %s", 2 / 9), ("", 0.0), ("Error %pB at ${HOME}", 10 / 17),
])
def test_placeholder_share(text, share):
    assert placeholder_share(text) == pytest.approx(share)


@pytest.mark.parametrize("msgid, msgstr, expected", [
    ("_Save As", "Speichern _unter", ("Save As", "Speichern unter")),
    ("Paper _type:", "Papier_typ:", ("Paper type:", "Papiertyp:")),  # the translator's marker inside a word
    ("&File", "&Datei", ("File", "Datei")),
    ("regexp_matches failed", "regexp_matches fehlgeschlagen", None),  # an identifier, not a marker
    ("Q&A and &lt;tags&gt;", "F&A und &lt;Tags&gt;", None),
    ("day, padded; same as %_d", "Tag, aufgefüllt; wie %_d", None),  # strftime, not a marker
    ("_Open new_file", "_Öffnen neue_Datei", None),  # more than one candidate: leave it
])
def test_accelerator_markers(msgid, msgstr, expected):
    got = strip_accelerators(msgid, msgstr)
    assert got == ((*expected, True) if expected else (msgid, msgstr, False))


def test_accelerators_are_stripped_in_the_loaded_pairs(tmp_path):
    write_catalog(tmp_path, "de", "gtk.mo", mo_bytes({"Stock label\x04_Paste": "E_infügen"}))
    pairs, lines = gettext(tmp_path)
    assert (pairs[0]["source"], pairs[0]["target"]) == ("Einfügen", "Paste")
    assert "1 with an accelerator marker removed" in lines[-1]


def test_languages_and_a_language_without_catalogs(tmp_path):
    write_catalog(tmp_path, "de", "a.mo", mo_bytes({"Yes": "Ja"}))
    write_catalog(tmp_path, "de_CH", "a.mo", mo_bytes({"Size": "Grösse"}))
    write_catalog(tmp_path, "es", "a.mo", mo_bytes({"Yes": "Sí"}))
    (tmp_path / "fr" / "LC_MESSAGES").mkdir(parents=True)  # a folder without catalogs is no language
    assert gettext_languages(tmp_path) == ["de", "de_CH", "es"]
    assert [p["target"] for p in gettext(tmp_path, "de")[0]] == ["Yes"]  # de_CH is not mixed into de
    with pytest.raises(DataError, match=r"no gettext catalogs for language 'fr' .*languages with catalogs: "
                                        r"de, de_CH, es$"):
        gettext(tmp_path, "fr")
    with pytest.raises(DataError, match=r"needs a language: set data.language to one of de, de_CH, es$"):
        gettext(tmp_path, None)


def test_builtin_gettext_through_load_records_asks_for_a_language():
    with pytest.raises(DataError, match=r"^builtin:gettext: needs a language: set data.language"):
        load_records("builtin:gettext")


# --- aligned plain-text files ---

def test_aligned_files(tmp_path):
    (tmp_path / "src.txt").write_text("Hallo Welt\r\n\nGuten Morgen\nJa\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("Hello world\r\nEmpty source\nGood morning\n  \n", encoding="utf-8")
    lines = []
    pairs = load_pairs({"source": tmp_path / "src.txt", "target": tmp_path / "tgt.txt"}, log=lines.append)
    assert pairs == [{"source": "Hallo Welt", "target": "Hello world", "_line": 1},
                     {"source": "Guten Morgen", "target": "Good morning", "_line": 3}]
    assert lines == [f"{tmp_path / 'src.txt'} + {tmp_path / 'tgt.txt'}: skipped 2 pairs with an empty side "
                     "(e.g. line 2, line 4)"]


def test_aligned_files_with_different_line_counts(tmp_path):
    (tmp_path / "src.txt").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("A\nB\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_pairs({"source": str(tmp_path / "src.txt"), "target": str(tmp_path / "tgt.txt")}, log=None)
    assert str(e.value) == (f"{tmp_path / 'src.txt'}: has 3 lines but {tmp_path / 'tgt.txt'} has 2; aligned "
                            "files need one line per pair in both")


def test_aligned_files_bad_mapping_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="need exactly the keys source and target, got source, tgt"):
        load_pairs({"source": "a", "tgt": "b"})
    (tmp_path / "src.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"nope.txt: does not exist"):
        load_pairs({"source": tmp_path / "src.txt", "target": tmp_path / "nope.txt"})


def test_aligned_files_must_be_utf8(tmp_path):
    (tmp_path / "src.txt").write_bytes("Größe\n".encode("latin-1"))
    (tmp_path / "tgt.txt").write_text("Size\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"src.txt:1: bytes at offset 2 are not valid UTF-8"):
        load_pairs({"source": tmp_path / "src.txt", "target": tmp_path / "tgt.txt"})


# --- data files with source/target fields ---

def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_data_file_fields_are_renamed_and_other_fields_kept(tmp_path):
    ref = write_jsonl(tmp_path / "d.jsonl", [{"de": "Ja", "en": "Yes", "id": 7}, {"de": " ", "en": "No"},
                                             {"de": "Vielleicht", "en": None}, {"de": "Hallo", "en": "Hello"}])
    lines = []
    pairs = load_pairs(ref, source_field="de", target_field="en", log=lines.append)
    assert pairs == [{"id": 7, "_line": 1, "source": "Ja", "target": "Yes"},
                     {"_line": 4, "source": "Hallo", "target": "Hello"}]
    assert lines == [f"{ref}: skipped 2 pairs with an empty side (e.g. line 2, line 3)"]


def test_a_record_missing_a_field_names_file_line_and_its_fields(tmp_path):
    ref = write_jsonl(tmp_path / "d.jsonl", [{"source": "Ja", "target": "Yes"}, {"source": "Nein", "en": "No"}])
    with pytest.raises(DataError) as e:
        load_pairs(ref)
    assert str(e.value) == (f"{ref}:2: record has no field 'target' (data.target_field); its fields: "
                            "source, en")


def test_records_without_lines_are_named_by_position_and_texts_must_be_strings(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"source": "a", "target": "b"}, {"source": 3, "target": "c"}]), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}: record 2 field 'source' holds int 3, not text")):
        load_pairs(str(path))


def test_csv_and_max_chars(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("source,target\nkurz,short\nein viel zu langer Satz,a sentence that is far too long\n",
                    encoding="utf-8")
    lines = []
    pairs = load_pairs(str(path), max_chars=10, log=lines.append)
    assert [(p["source"], p["target"]) for p in pairs] == [("kurz", "short")]
    assert lines == [f"{path}: skipped 1 pairs longer than max_chars=10 (either side) (e.g. line 3)"]
    with pytest.raises(DataError, match="holds no pair with both sides non-empty"):
        load_pairs(str(path), max_chars=2, log=lines.append)


# --- the machine's own catalogs ---

@pytest.mark.skipif(not Path("/usr/share/locale/de/LC_MESSAGES").is_dir(), reason="no German gettext catalogs")
def test_real_german_catalogs_to_english():
    lines = []
    pairs = load_pairs("builtin:gettext", language="de", log=lines.append)
    assert len(pairs) > 5000
    sources = [p["source"] for p in pairs]
    assert len(set(sources)) == len(sources)
    assert all(p["source"].strip() and p["target"].strip() for p in pairs)
    assert "de" in gettext_languages()
    assert any(re.fullmatch(r"builtin:gettext \(de\): skipped \d+ catalogs in all", line) for line in lines)
    # every entry read is either skipped for one reason or kept
    read = int(re.search(r"read ([\d,]+) entries", lines[0]).group(1).replace(",", ""))
    skipped = sum(int(m.group(1).replace(",", "")) for line in lines[1:]
                  if (m := re.search(r"\): skipped ([\d,]+) (?!catalogs)", line)))
    assert read == skipped + len(pairs)
