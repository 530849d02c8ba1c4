"""The step plan: how many optimizer steps a run takes, how many warm up, and which steps log and evaluate.

One optimizer step is one window of `grad_accum` micro-batches; an epoch's last window may be shorter.
`max_steps` overrides `epochs`; `warmup_steps` overrides `warmup_ratio` (a share of the total, rounded down).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class StepPlan:
    steps_per_epoch: int
    """Optimizer steps in one pass over the training data (at least 1)."""
    total: int
    """Optimizer steps of the whole run."""
    warmup: int
    """Steps of linear learning-rate warmup at the start."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    log_every: int = 10
    """Log the training loss, learning rate and tokens/s every this many steps (and at the last)."""
    eval_every: int | None = None
    """Evaluate every this many steps before the last (None: only at epoch ends)."""

    @classmethod
    def make(cls, micro_batches_per_epoch: int, *, grad_accum: int = 1, epochs: float = 1,
             max_steps: int | None = None, warmup_steps: int | None = None, warmup_ratio: float = 0.0,
             log_every: int = 10, eval_every: int | None = None) -> "StepPlan":
        """The plan for `micro_batches_per_epoch` micro-batches per epoch and these train.* settings."""
        steps_per_epoch = max(1, math.ceil(micro_batches_per_epoch / grad_accum))
        total = max_steps or max(1, math.ceil(epochs * steps_per_epoch))
        warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * total)
        return cls(steps_per_epoch, total, warmup, grad_accum, log_every, eval_every)

    def windows(self, micro_batches: Iterable[T]) -> Iterable[list[T]]:
        """Group micro-batches into the windows of one optimizer step each (the last may be shorter)."""
        window: list[T] = []
        for b in micro_batches:
            window.append(b)
            if len(window) == self.grad_accum:
                yield window
                window = []
        if window:
            yield window

    def logs_at(self, step: int) -> bool:
        """Whether the training metrics are logged after optimizer step `step` (1-based)."""
        return step % self.log_every == 0 or step == self.total

    def evaluates_at(self, step: int) -> bool:
        """Whether validation runs after step `step` besides the epoch ends (the last step is an epoch end's job)."""
        return bool(self.eval_every) and step % self.eval_every == 0 and step < self.total


def plan_for(train_cfg, micro_batches_per_epoch: int) -> StepPlan:
    """The StepPlan of a run's `train:` section (a TrainConfig): what the loop follows and the driver announces."""
    c = train_cfg
    return StepPlan.make(micro_batches_per_epoch, grad_accum=c.grad_accum, epochs=c.epochs, max_steps=c.max_steps,
                         warmup_steps=c.warmup_steps, warmup_ratio=c.warmup_ratio, log_every=c.log_every,
                         eval_every=c.eval_every)
