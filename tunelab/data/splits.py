"""Seeded train/validation/test splits and subsets for every task: `split_indices` and `subset_indices`,
stratified by a key when there is one (classification: the label), random otherwise."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Hashable, Iterable, Literal, Sequence

HELD_OUT = ("validation", "test")


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int, *,
                  keys: Sequence[Hashable] | None = None, hold_out: Iterable[str] = HELD_OUT,
                  draw: Literal["per_split", "once"] = "per_split") -> dict[str, list[int]]:
    """Seeded train / validation / test index lists (each sorted) over n items; fractions are of the whole.

    `keys` (one per item) stratify the held-out splits: each key's items are held out in proportion, and
    at least one of a key with 2+ items (`stratified_split`); without keys every item has one key, so the
    draw is random. `hold_out` names the splits to carve (one given as its own file is not); a carved split
    appears in the result even when it came out empty, train always does.

    draw "per_split" (classification, causal_lm): test is carved first, then validation out of the rest, its
    fraction rescaled to stay a fraction of the whole, each with a fresh generator seeded `seed`.
    draw "once" (pretraining documents and blocks): one seeded shuffle cut into test, validation and train,
    round(n x fraction) items each and no minimum per key (keys are not used). The two draws pick different
    items; both are kept because the pinned numbers of their tasks' tests rest on them (tests/test_splits.py).
    """
    hold_out = set(hold_out)
    wanted = [(name, fraction) for name, fraction in (("test", test_fraction), ("validation", val_fraction))
              if name in hold_out and fraction > 0]
    if draw == "once":
        order = list(range(n))
        random.Random(seed).shuffle(order)
        out, start = {}, 0
        for name, fraction in wanted:
            count = round(n * fraction)
            out[name], start = sorted(order[start:start + count]), start + count
        out["train"] = sorted(order[start:])
        return out
    keys = list(keys) if keys is not None else [0] * n
    rest, out = list(range(n)), {}
    for name, fraction in wanted:
        if name == "validation" and "test" in hold_out:
            fraction = fraction / (1.0 - test_fraction)
        keep, held = stratified_split([keys[i] for i in rest], fraction, seed)
        out[name] = [rest[i] for i in held]
        rest = [rest[i] for i in keep]
    out["train"] = rest
    return out


def held_out(d) -> list[str]:
    """`d` a DataConfig. The held-out splits to carve out of data.train: those not given as files of their own."""
    return [name for name, ref in (("validation", d.validation), ("test", d.test)) if not ref]


def subset_indices(n: int, size: int, seed: int, keys: Sequence[Hashable] | None = None) -> list[int]:
    """Sorted indices of a seeded subset of `size` of n items (all of them when size >= n): keeping the
    key proportions when there are `keys` (`stratified_subset`), a random sample otherwise."""
    if size >= n:
        return list(range(n))
    if keys is not None:
        return stratified_subset(keys, size, seed)
    return sorted(random.Random(seed).sample(range(n), size))


def stratified_split(keys: Sequence[Hashable], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (rest, held_out) with `fraction` of each key's items held out.

    Per key the held-out count is round(n * fraction), at least 1 when the key has 2+ items, so small
    classes still appear in both parts. Same keys + seed -> same split.
    """
    if fraction <= 0:
        return list(range(len(keys))), []
    by_key: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by_key[k].append(i)
    rng = random.Random(seed)
    rest, held = [], []
    for k in sorted(by_key, key=str):
        idx = by_key[k][:]
        rng.shuffle(idx)
        n_held = round(len(idx) * fraction)
        if n_held == 0 and len(idx) >= 2:
            n_held = 1
        held += idx[:n_held]
        rest += idx[n_held:]
    return sorted(rest), sorted(held)


def stratified_subset(keys: Sequence[Hashable], size: int, seed: int) -> list[int]:
    """Indices of a seeded subset of exactly `size` items keeping the key proportions (for `data.limit`).

    Per key the count is its proportional share rounded down, with every key kept at least once while
    `size` allows; the items still missing go to the keys with the largest remainders (largest-remainder
    apportionment), so the subset never holds more than `size` items.
    """
    if size >= len(keys):
        return list(range(len(keys)))
    by_key: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by_key[k].append(i)
    order = sorted(by_key, key=str)
    share = {k: len(by_key[k]) * size / len(keys) for k in order}
    count = {k: int(share[k]) for k in order}
    for k in order:  # rare keys keep one item each (in key order) while there is room
        if count[k] == 0 and sum(count.values()) < size:
            count[k] = 1
    for k in sorted(order, key=lambda k: share[k] - count[k], reverse=True)[: size - sum(count.values())]:
        count[k] += 1
    rng = random.Random(seed)
    subset = []
    for k in order:
        idx = by_key[k][:]
        rng.shuffle(idx)
        subset += idx[: count[k]]
    return sorted(subset)
