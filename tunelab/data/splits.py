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
    """Indices of a seeded subset of `size` items keeping the key proportions (for `data.limit`)."""
    if size >= len(keys):
        return list(range(len(keys)))
    _, subset = stratified_split(keys, size / len(keys), seed)
    return subset
