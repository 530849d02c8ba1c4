"""Seeded, stratified train/validation/test splits and subsets."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Hashable, Sequence


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
