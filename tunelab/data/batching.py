"""Length-grouped batching with dynamic padding.

Examples are shuffled, then sorted by length inside windows of `batch_size * window` examples and cut
into batches, and the batches are shuffled again. Each batch is padded only to its own longest example
(`pad_batch`; `padded_batch` for causal-LM examples), so little compute goes to padding while the order
stays random from epoch to epoch.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Sequence

import torch

from tunelab.data.tokens import IGNORE_INDEX

if TYPE_CHECKING:
    from tunelab.data.encoding import Encoded


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, window: int = 50,
                           shuffle: bool = True) -> list[list[int]]:
    """Index batches of similar lengths. Without shuffle: sorted by length (for evaluation)."""
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: -lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    batches = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Index batches of a seeded random order (the last one may be short)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def padded_size(batches: list[list[int]], lengths: Sequence[int]) -> int:
    """Tokens a plan computes, padding included: each batch is padded to its longest example."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches if b)


# Length grouping changes which examples share a batch (less random batches, and the short ones together);
# under "auto" it is used only where it cuts the padded size of an epoch by at least this share.
MIN_GROUPING_SAVING = 0.10


def training_batches(lengths: Sequence[int], batch_size: int, seed: int, mode: str = "auto") -> list[list[int]]:
    """One epoch's index batches for `train.group_by_length` = auto | always | never."""
    shuffled = random_batches(len(lengths), batch_size, seed)
    if mode == "never":
        return shuffled
    grouped = length_grouped_batches(lengths, batch_size, seed)
    if mode == "always":
        return grouped
    saves = padded_size(grouped, lengths) <= (1.0 - MIN_GROUPING_SAVING) * padded_size(shuffled, lengths)
    return grouped if saves else shuffled


def pad_batch(sequences: list[list[int]], pad_id: int, extra: dict[str, list] | None = None,
              pad_values: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Right-pad token id lists to the longest one: input_ids and attention_mask (B, T), plus extras.

    `extra` maps a name to per-example lists (padded with `pad_values[name]`, e.g. IGNORE_INDEX for labels)
    or to per-example scalars (stacked as a (B,) tensor).
    """
    T = max(len(s) for s in sequences)
    B = len(sequences)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    for name, values in (extra or {}).items():
        if values and isinstance(values[0], list):
            t = torch.full((B, T), (pad_values or {}).get(name, 0), dtype=torch.long)
            for b, v in enumerate(values):
                t[b, : len(v)] = torch.tensor(v, dtype=torch.long)
            out[name] = t
        else:
            out[name] = torch.tensor(values)
    return out


def padded_batch(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids / attention_mask / targets (targets IGNORE_INDEX on padding)."""
    return pad_batch([e.ids for e in examples], pad_id, {"targets": [e.targets for e in examples]},
                     {"targets": IGNORE_INDEX})
