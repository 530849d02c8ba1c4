"""What makes the Trainer side of the bench train and time exactly what tunelab does.

Three things differ between the tools' defaults and would bias a comparison:
- the learning-rate schedule: tunelab's first warmup step already uses lr * 1/warmup, the Trainer's uses 0
  (with 6% warmup that was +11% total learning rate in the LoRA job). The Trainer here gets tunelab's own
  optimizer and LambdaLR (`tunelab_optimizers`), and every side logs the rate of each step so the bench can
  check that they are identical (`same_lrs`);
- the checkpoint tested: tunelab evaluates at the end of each epoch and restores the best weights. The Trainer
  gets the same policy (`BestByValidation`), with the metric computed by tunelab's own function;
- the timing span: tunelab's train_seconds sums the time inside optimizer steps (forward, backward, clipping,
  update; not the fetching of batches, not evaluation). `StepTimer` sums the same span in the Trainer, from
  `on_step_begin` (after the batch is fetched) to `on_step_end` (after the update and zero_grad).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from transformers import TrainerCallback

from tunelab.train.optim import build_optimizer, build_scheduler


def tunelab_steps(micro_batches_per_epoch: int, epochs: int, warmup_ratio: float) -> tuple[int, int]:
    """(total, warmup) optimizer steps, by tunelab's own formula (tunelab/train/plan.py, grad_accum 1)."""
    total = max(1, math.ceil(epochs * micro_batches_per_epoch))
    return total, int(warmup_ratio * total)


def tunelab_optimizers(model: torch.nn.Module, *, lr: float, weight_decay: float, total: int, warmup: int):
    """tunelab's AdamW (decay on matrices only, foreach) and linear schedule, for `Trainer(optimizers=...)`."""
    optimizer = build_optimizer(model, "adamw", lr, weight_decay)
    return optimizer, build_scheduler(optimizer, "linear", total, warmup)


class StepTimer(TrainerCallback):
    """Sums the seconds inside optimizer steps and records each step's learning rate.

    The rate is read at `on_step_begin`, before the scheduler moves: the one this step's update uses, which is
    what tunelab logs as `lr`.
    """

    def __init__(self) -> None:
        self.seconds, self.lrs, self._t0 = 0.0, [], None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._t0


class BestByValidation(TrainerCallback):
    """tunelab's checkpoint policy in the Trainer: evaluate at each epoch's end, keep the best weights
    (strictly better only, so the first of equal scores wins), restore them when training ends.

    `evaluate(model) -> float` is the validation metric; `minimise` says which way is better.
    """

    def __init__(self, evaluate: Callable[[torch.nn.Module], float], minimise: bool) -> None:
        self.evaluate, self.sign = evaluate, -1.0 if minimise else 1.0
        self.best, self.best_step, self.history, self._state = -math.inf, None, [], None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        score = self.evaluate(model)
        model.train()
        self.history.append((state.global_step, score))
        if self.sign * score > self.best:
            self.best, self.best_step = self.sign * score, state.global_step
            self._state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._state is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self._state:
                        p.copy_(self._state[n])


def tunelab_lrs(metrics_jsonl) -> list[float]:
    """The per-step learning rates a tunelab run logged (needs `train.log_every: 1`)."""
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    if [r["step"] for r in train] != list(range(1, len(train) + 1)):
        raise SystemExit(f"{metrics_jsonl}: the learning rate of every step is needed; set train.log_every: 1")
    return [r["lr"] for r in train]


def same_lrs(a: list[float], b: list[float], rel: float = 1e-9) -> str | None:
    """None when two per-step learning-rate lists are identical (to float rounding), else what differs."""
    if len(a) != len(b):
        return f"{len(a)} steps vs {len(b)} steps"
    for i, (x, y) in enumerate(zip(a, b)):
        if abs(x - y) > rel * max(abs(x), abs(y), 1e-12):
            return f"step {i + 1}: lr {x!r} vs {y!r}"
    return None
