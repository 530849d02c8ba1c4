"""The training loop's state as plain data: what a checkpoint saves so that a run can go on where it stopped.

Everything here is a number, None or a plain dict, so `to_dict()` goes through JSON unchanged and
`LoopState.from_dict(d)` gives the same state back. The loop's other pieces (`stopping.BestKeeper`,
`meter.Throughput`) read and write these fields instead of keeping locals of their own; tensors that a
checkpoint also needs (the model, the optimizer, the best weights) are saved beside this, not in it.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields


@dataclass
class LoopState:
    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """Index of the epoch in progress (0-based): the loop asks `epoch_batches(epoch)` for its batches."""
    batch_in_epoch: int = 0
    """Micro-batches of the epoch in progress already trained on (a resume skips this many)."""
    best_metric: float | None = None
    """The early-stopping metric at the best evaluation so far; None before the first one that had it."""
    best_step: int | None = None
    """The step of that evaluation."""
    best_metrics: dict | None = None
    """All validation metrics of that evaluation."""
    bad_evals: int = 0
    """Patience count: evaluations since the best one that did not improve on it."""
    evals: int = 0
    """Evaluations with validation data (those where the metric was undefined included)."""
    evals_without_metric: int = 0
    """Evaluations where the early-stopping metric was undefined (None): skipped for best and patience."""
    stopped_early: bool = False
    """Early stopping said stop (patience used up): a resume has nothing left to train."""
    last_eval_step: int = -1
    """The step of the last evaluation, so the end of an epoch does not evaluate the same weights twice."""
    train_tokens: int = 0
    """Real (non-padding) tokens trained on."""
    train_seconds: float = 0.0
    """Seconds spent inside optimizer steps (evaluation, logging and data loading excluded)."""

    def to_dict(self) -> dict:
        """The state as plain data (a deep copy: later training does not change it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoopState":
        """The state `to_dict` gave; an unknown or missing key is an error naming it."""
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"not a saved training-loop state: unknown keys {unknown}, missing keys {missing}")
        return cls(**copy.deepcopy(data))
