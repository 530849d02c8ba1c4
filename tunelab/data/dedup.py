"""Exact and near duplicates inside the training split, and leakage between training and validation / test.

Records are compared by a key of two texts, (group, text) (`DataView.duplicate_key`; by default no group and
the record's texts joined): two records can only match when their groups are equal after normalisation, so
extractive QA compares questions about the same context and "leakage" there means the same question on the
same context, not another question on a shared context.

- Normalisation (`normalise`): case folded, runs of white space made one space, stripped. Two records are
  **exact** duplicates when their normalised keys are equal.
- **Near** duplicates: the Jaccard similarity of the texts' sets of word 3-grams ("shingles"; words are runs of
  letters and digits, so punctuation does not count) is at least `threshold` (data.near_duplicate_threshold,
  0.8 by default: a 300-word article with a changed sentence or a new headline stays above it, two articles on
  one topic are far below). Candidate pairs come from MinHash signatures (datasketch, 128 permutations) in a
  MinHashLSH index banded for recall (`lsh_bands`: a pair at the threshold itself is a candidate with
  probability 0.998 at 0.8, more above it; datasketch's own choice for a threshold weighs misses and false
  candidates alike and catches such a pair 4 times in 10); every candidate is then confirmed with the exact
  Jaccard of its two shingle sets, so no reported pair is an LSH false positive, and the extra candidates
  cost only their confirmation.
  A text of fewer than three words is one shingle (so it only matches its own words exactly). A threshold of
  1.0 asks for exact duplicates only (no near search).

What counts: a training record is a duplicate when it (nearly) repeats an EARLIER training record (a group of
k copies counts k - 1, the first stays); a training record leaks when it (nearly) equals a validation or test
record. `data.dedup` drops both kinds from train and never touches validation or test, so a score measured
with and without dedup is measured on the same held-out records, and train holds no text that is tested on.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

WORD = re.compile(r"\w+")
NUM_PERM = 128  # MinHash permutations: the similarity estimate's standard error is about 0.035 at 0.8
CANDIDATE_RECALL = 0.99  # the least probability that a pair at the threshold becomes an LSH candidate
SHINGLE = 3  # words per shingle
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))  # combine three word hashes into one


def normalise(text: str) -> str:
    """Case folded, white space runs made one space, stripped: what exact duplicates compare."""
    return " ".join(text.casefold().split())


def shingle_set(text: str) -> set[tuple[str, ...]]:
    """The word 3-grams of a text (its words, case folded, when it has fewer than three)."""
    words = WORD.findall(text.casefold())
    if len(words) < SHINGLE:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def lsh_bands(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) of the LSH index for `threshold`: the most rows per band (the fewest false
    candidates) with which a pair of Jaccard similarity `threshold` shares a whole band, and so becomes a
    candidate, with probability 1 - (1 - threshold^rows)^bands >= CANDIDATE_RECALL. Pairs above the
    threshold are caught more often still. Below a threshold of about 0.035 no banding reaches it, and one
    row per band (any shared MinHash value) is used."""
    for rows in range(NUM_PERM, 0, -1):
        bands = NUM_PERM // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= CANDIDATE_RECALL:
            return bands, rows
    return NUM_PERM, 1


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (0.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass(frozen=True)
class Match:
    """Record `index` of one split (nearly) equals record `other` of `other_split` (train, validation, test)."""

    index: int
    other_split: str
    other: int
    kind: str  # "exact" | "near"
    similarity: float


@dataclass
class Duplicates:
    """What `find_duplicates` found. `repeats`: training records that repeat an earlier one (its first match);
    `leaks[split]`: training records that (nearly) equal a record of that held-out split (the first found)."""

    repeats: list[Match] = field(default_factory=list)
    leaks: dict[str, list[Match]] = field(default_factory=dict)
    threshold: float = 0.8

    def dropped(self) -> set[int]:
        """Indices of the training records `data.dedup` removes: every repeat and every leak."""
        return {m.index for m in self.repeats} | {m.index for ms in self.leaks.values() for m in ms}

    def count(self, matches: list[Match], kind: str) -> int:
        return sum(m.kind == kind for m in matches)


class _WordHashes(dict):
    """word -> crc32 + 1 (stable across processes and runs), computed once per distinct word."""

    def __missing__(self, word: str) -> int:
        value = self[word] = zlib.crc32(word.encode("utf-8")) + 1
        return value


class _Hasher:
    """Word 3-gram hashes of texts (uint32, unique per text): each distinct word hashed once, the three word
    hashes of a shingle combined and mixed with numpy, so a 2,000-article corpus is hashed in a fraction of a
    second."""

    def __init__(self):
        self.words = _WordHashes()

    def __call__(self, text: str) -> np.ndarray:
        words = WORD.findall(text.casefold())
        if len(words) < SHINGLE:  # fewer than three words: one shingle of them all (none without words)
            combined = 0
            for w in words:
                combined = (combined * 0x9E3779B1 + self.words[w]) & 0xFFFFFFFFFFFFFFFF
            return np.array([combined & 0xFFFFFFFF] if words else [], dtype=np.uint32)
        ids = np.fromiter(map(self.words.__getitem__, words), dtype=np.uint64, count=len(words))
        with np.errstate(over="ignore"):
            mixed = ids[:-2] * _MIX[0] + ids[1:-1] * _MIX[1] + ids[2:]
            mixed = (mixed ^ (mixed >> np.uint64(31))) * _MIX[1]
        return np.unique((mixed >> np.uint64(32)).astype(np.uint32))


class _Signatures:
    """MinHash signatures of a split's comparable texts (datasketch MinHash objects), and their groups.

    The signature is datasketch's "affine32" scheme, min over shingles of a * h + b (mod 2^32) with its
    permutations, computed for all of a text's shingle hashes at once: MinHash.update_batch would call a
    hash function per shingle in Python, twice the time of everything else on 17,000 ShareGPT chats. The
    shingle hashes are already mixed (_Hasher), which is what the scheme's own mixing step is for.
    """

    CHUNK = 8192  # shingles per block: bounds the (shingles, permutations) matrix at 4 MiB

    def __init__(self, keys: list[tuple[str, str] | None], hasher: _Hasher, permutations: np.ndarray):
        from datasketch import MinHash

        from tunelab.train.logging import progress

        a, b = permutations
        self.groups = [normalise(k[0]) if k else None for k in keys]
        self.minhashes: list = []
        for k in progress(keys, len(keys), "near duplicates: MinHash", "records"):  # seconds on 17k chats
            hashes = hasher(k[1]) if k else None
            if hashes is None or not len(hashes):
                self.minhashes.append(None)
                continue
            signature = np.full(len(a), np.iinfo(np.uint32).max, dtype=np.uint32)
            for i in range(0, len(hashes), self.CHUNK):
                block = hashes[i:i + self.CHUNK, None] * a + b  # (shingles, permutations), wraps mod 2^32
                np.minimum(signature, block.min(axis=0), out=signature)
            self.minhashes.append(MinHash(hashvalues=signature, permutations=permutations, scheme="affine32"))


def find_duplicates(train: list[tuple[str, str] | None], held_out: dict[str, list[tuple[str, str] | None]],
                    threshold: float = 0.8) -> Duplicates:
    """Exact and near repeats inside `train` and leaks from `train` into each held-out split.

    Each list holds one (group, text) key per record, or None for a record with no text (never compared).
    """
    from datasketch import MinHash, MinHashLSH

    found = Duplicates(threshold=threshold)
    _exact_matches(train, held_out, found)
    if threshold >= 1.0:  # near duplicates at similarity 1 are exact ones up to punctuation: not searched
        return found
    hasher = _Hasher()
    permutations = MinHash(num_perm=NUM_PERM, scheme="affine32").permutations
    train_sigs = _Signatures(train, hasher, permutations)
    lsh = MinHashLSH(num_perm=NUM_PERM, params=lsh_bands(threshold))
    with lsh.insertion_session() as session:
        for i, m in enumerate(train_sigs.minhashes):
            if m is not None:
                session.insert(i, m, check_duplication=False)
    shingles = _ShingleCache(lambda i: train[i][1])
    _near_repeats(train_sigs, lsh, shingles, threshold, found)
    for name, keys in held_out.items():
        _near_leaks(name, keys, _Signatures(keys, hasher, permutations), train_sigs, lsh, shingles, threshold,
                    found)
    return found


def _exact_matches(train: list, held_out: dict[str, list], found: Duplicates) -> None:
    """Training records whose normalised key equals an earlier training record's, or a held-out record's."""
    keys = [(normalise(k[0]), normalise(k[1])) if k else None for k in train]
    first: dict[tuple[str, str], int] = {}
    for j, key in enumerate(keys):
        if key is None:
            continue
        if key in first:
            found.repeats.append(Match(j, "train", first[key], "exact", 1.0))
        else:
            first[key] = j
    for name, held in held_out.items():
        seen = {(normalise(k[0]), normalise(k[1])): i for i, k in enumerate(held) if k}
        found.leaks[name] = [Match(j, name, seen[key], "exact", 1.0) for j, key in enumerate(keys)
                             if key is not None and key in seen]


def _near_repeats(sigs: _Signatures, lsh, shingles: _ShingleCache, threshold: float, found: Duplicates) -> None:
    """Training records that are no exact repeat but nearly repeat an earlier one (the earliest confirmed)."""
    repeated = {m.index for m in found.repeats}
    for j, m in enumerate(sigs.minhashes):
        if m is None or j in repeated:
            continue
        for i in sorted(i for i in lsh.query(m) if i < j and sigs.groups[i] == sigs.groups[j]):
            similarity = jaccard(shingles(i), shingles(j))
            if similarity >= threshold:
                found.repeats.append(Match(j, "train", i, "near", similarity))
                break
    found.repeats.sort(key=lambda m: m.index)


def _near_leaks(name: str, keys: list, sigs: _Signatures, train_sigs: _Signatures, lsh, shingles: _ShingleCache,
                threshold: float, found: Duplicates) -> None:
    """Training records that nearly equal a record of held-out split `name` (and equal none exactly)."""
    leaked = {m.index for m in found.leaks[name]}
    for k, m in enumerate(sigs.minhashes):
        if m is None:
            continue
        other = shingle_set(keys[k][1])
        for j in sorted(lsh.query(m)):
            if j in leaked or train_sigs.groups[j] != sigs.groups[k]:
                continue
            similarity = jaccard(shingles(j), other)
            if similarity >= threshold:
                found.leaks[name].append(Match(j, name, k, "near", similarity))
                leaked.add(j)
    found.leaks[name].sort(key=lambda m: m.index)


class _ShingleCache:
    """Exact shingle sets of training texts, made only for the records a candidate pair names."""

    def __init__(self, text_of: Callable[[int], str]):
        self.text_of, self.sets = text_of, {}

    def __call__(self, i: int) -> set:
        if i not in self.sets:
            self.sets[i] = shingle_set(self.text_of(i))
        return self.sets[i]


def keep_indices(n: int, dropped: Iterable[int]) -> list[int]:
    """The indices 0..n-1 that `data.dedup` keeps, in order."""
    gone = set(dropped)
    return [i for i in range(n) if i not in gone]
