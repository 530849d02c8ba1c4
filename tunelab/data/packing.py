"""Packing causal-LM examples into rows: which examples share a row, and the row tensors.

Packing fills each row of up to `model.max_length` tokens with whole examples, so little compute goes to
padding; positions restart per example so attention and loss stay per example (see `packed_batch`).
"""
from __future__ import annotations

import bisect

import torch

from tunelab.data.encoding import Encoded
from tunelab.data.tokens import IGNORE_INDEX


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: group example indices into rows of at most `capacity` tokens.

    Each example goes to the fullest row it still fits in (found by bisection over sorted free space),
    so rows fill up well: few pad tokens. Deterministic for the same lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            space, r = free.pop(k)
        else:
            space, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(free, (space - lengths[i], r))
    return rows


def packed_batch(rows: list[list[Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows: (B, T) input_ids, attention_mask (1 = real token), targets, position_ids.

    Positions restart at 0 for every example, which is how transformers recognises the example boundaries
    (its mask builder makes attention block-diagonal when position_ids restart and no 2-D mask is given).
    Padding at the end of a row gets positions 0, 1, ... of its own and is never attended by real tokens.
    """
    T = max(sum(len(e.ids) for e in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for e in row:
            n = len(e.ids)
            ids[b, t:t + n] = torch.tensor(e.ids)
            targets[b, t:t + n] = torch.tensor(e.targets)
            pos[b, t:t + n] = torch.arange(n)
            mask[b, t:t + n] = 1
            t += n
        pos[b, t:] = torch.arange(T - t)
    return {"input_ids": ids, "attention_mask": mask, "targets": targets, "position_ids": pos}
