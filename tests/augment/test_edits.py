"""The four EDA edits of tunelab.data.augment on fixed texts: each does what it says, with pinned outputs for a
seed, keeps punctuation, whitespace and case sensibly, and never touches numbers, URLs, e-mail addresses or
redaction placeholders; and the bundled synonym list is well formed."""
from __future__ import annotations

import random
import re

import pytest

from tunelab.data import augment as A

TEXT = ("The big company said profits rose sharply in 2004, and shares of the firm jumped. Email [EMAIL] for "
        "details.")


class Scripted(random.Random):
    """A generator whose random() returns the given values in turn (deletion draws one per word)."""

    def __init__(self, values):
        super().__init__(0)
        self.values = iter(values)

    def random(self):
        return next(self.values)


def test_each_edit_gives_its_pinned_output_for_a_seed():
    # 17 words (2004, and [EMAIL] are not words), rate 0.2: n = int(0.2 x 17) = 3 words per edit
    assert A.synonym_replacement(TEXT, A.record_rng(7, 0), 0.2) == (
        "The big corporation said profits grew sharply in 2004, and stocks of the firm jumped. Email [EMAIL] for "
        "details.")
    assert A.random_insertion(TEXT, A.record_rng(7, 0), 0.2) == (
        "The big company said profits rose sharply in 2004, and shares remarked company of the firm jumped. Email "
        "surged [EMAIL] for details.")
    assert A.random_swap(TEXT, A.record_rng(7, 0), 0.2) == (
        "The big firm said profits for sharply in 2004, and shares of Email company jumped. the [EMAIL] rose "
        "details.")
    assert A.random_deletion(TEXT, A.record_rng(7, 0), 0.2) == (
        "The big company said profits rose sharply in 2004, shares of the firm jumped. Email [EMAIL] for details.")


def test_synonym_replacement_changes_n_words_to_their_synonyms_with_their_case():
    text = "Quick workers often build cheap houses and big cars"  # 9 words; stop word: and; no synonym: houses
    for seed in range(20):
        out = A.synonym_replacement(text, random.Random(seed), 0.25)  # n = int(0.25 x 9) = 2
        changed = [(a, b) for a, b in zip(text.split(), out.split()) if a != b]
        assert len(out.split()) == 9 and len(changed) == 2
        for old, new in changed:
            assert new.lower() in A.synonyms()[old.lower()]
            assert new[0].isupper() == old[0].isupper()
    # a capital inside a sentence marks a name, all capitals an acronym: neither is replaced
    assert A.synonym_replacement("they met Big Ben and the BIG boss", random.Random(0), 0.9) == \
        "they met Big Ben and the BIG supervisor"


def test_stop_words_are_never_replaced_and_never_listed():
    assert not set(A.synonyms()) & A.STOP_WORDS
    text = "the of and it was but very with"
    for edit in ("synonym", "insert"):
        assert A.EDIT_FUNCTIONS[edit](text, random.Random(0), 0.5) == text  # nothing to replace or insert


def test_insertion_adds_n_synonyms_of_words_in_the_text():
    text = "Buyers enjoy the film but hate the boring music"  # 9 words
    words = {"buyers", "enjoy", "film", "hate", "boring"}
    allowed = set().union(*(A.synonyms()[w] for w in words))
    for seed in range(20):
        out = A.random_insertion(text, random.Random(seed), 0.3)  # n = int(0.3 x 9) = 2
        added = list(out.split())
        for w in text.split():
            added.remove(w)
        assert len(added) == 2 and set(added) <= allowed
        assert [w for w in out.split() if w in text.split()] == text.split()  # the old words keep their order


def test_swap_moves_words_and_leaves_punctuation_in_place():
    text = "Prices rose, sales fell; profits held."
    out = A.random_swap(text, random.Random(3), 0.2)  # n = max(1, int(0.2 x 6)) = 1 swap
    assert out == "Prices profits, sales fell; rose held."
    assert sorted(re.findall(r"\w+", out)) == sorted(re.findall(r"\w+", text))


def test_deletion_moves_punctuation_to_the_word_before_and_never_deletes_everything():
    # the third word goes; its full stop goes to the word before it
    assert A.random_deletion("prices rose sharply.", Scripted([0.9, 0.9, 0.0]), 0.5) == "prices rose."
    # opening punctuation goes to the next word, a possessive 's goes with its word
    assert A.random_deletion('he said "the firm\'s profits', Scripted([0.9, 0.9, 0.0, 0.0, 0.9]), 0.5) == \
        'he said "profits'
    # every word drawn for deletion: one stays, drawn at random (0.3 x 4 words: the second)
    assert A.random_deletion("one two three four", Scripted([0.0] * 4 + [0.3]), 0.5) == "two"


def test_deletion_deletes_about_rate_of_the_words():
    words = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet " * 50).split()
    out = A.random_deletion(" ".join(words), random.Random(0), 0.3)
    assert 0.25 < 1 - len(out.split()) / len(words) < 0.35  # 500 words: a seeded draw near 0.3


def test_whitespace_and_paragraph_breaks_are_kept():
    text = "  Headline here\n\nFirst paragraph text.\nSecond line\n"
    lines = [line.split() for line in text.splitlines()]
    for seed in range(10):
        for edit in ("synonym", "swap"):  # words change, the whitespace between them does not
            out = A.EDIT_FUNCTIONS[edit](text, random.Random(seed), 0.3)
            assert re.sub(r"\S+", "w", out) == re.sub(r"\S+", "w", text), (edit, out)
        out = A.random_insertion(text, random.Random(seed), 0.3)
        assert out.startswith("  ") and out.endswith("\n") and out.count("\n") == 4, out
        out = A.random_deletion(text, random.Random(seed), 0.3)
        assert out.startswith("  ") and out.endswith("\n"), out
        for line in out.split("\n")[:-1]:  # every line left holds words of one line of the text, in order
            words = [w.strip(".") for w in line.split()]
            assert any(words == [w.strip(".") for w in old if w.strip(".") in words] for old in lines), out


@pytest.mark.parametrize("edit", A.EDITS)
def test_numbers_urls_emails_and_placeholders_are_never_edited_moved_or_deleted(edit):
    protected = ["[EMAIL]", "https://example.com/a?b=1", "2005", "£3.5bn", "jane@example.org", "[PHONE]",
                 "www.bbc.co.uk", "10:30"]
    text = ("Contact [EMAIL] about the big report, visit https://example.com/a?b=1 since 2005 prices rose to £3.5bn "
            "and jane@example.org said the quick sale was good; call [PHONE] or see www.bbc.co.uk at 10:30 today.")
    pattern = re.compile("|".join(re.escape(p) for p in protected))
    for seed in range(30):
        out = A.EDIT_FUNCTIONS[edit](text, random.Random(seed), 0.5)
        assert pattern.findall(out) == protected, out


def test_split_and_join_give_the_text_back():
    for text in ["", "  ", "a", " a b\tc\n\nd ", "(x) y's, z."]:
        assert A.join_text(*A.split_text(text)) == text


def test_the_bundled_synonym_list_is_well_formed():
    table = A.synonyms()
    assert len(table) > 500  # a few hundred words, each with at least one synonym
    assert all(w in table[s] for w, syns in table.items() for s in syns)  # groups: synonyms both ways
    with pytest.raises(ValueError, match=r"list.txt:2: a group needs two or more"):
        A.parse_synonyms("big, large\nthe, a\n", "list.txt")
    with pytest.raises(ValueError, match=r"list.txt:2: "):
        A.parse_synonyms("big, large\nhuge, big\n", "list.txt")  # a word in two groups


def test_the_synonym_list_ships_with_the_package():
    import tomllib
    from pathlib import Path

    root = Path(A.__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tunelab"]
    shipped = {p for pattern in patterns for p in (root / "tunelab").glob(pattern)}
    assert A.SYNONYMS_FILE in shipped
