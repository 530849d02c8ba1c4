"""Best-checkpoint keeping and early stopping: which evaluation is the best so far, and when to give up.

The decisions are written into the `LoopState` (best metric, its step and metrics, the patience count), so a
checkpoint of the state carries them; the best weights themselves are `BestKeeper.best_weights` (copies of
the trainable parameters only: frozen ones cannot change). An evaluation where the metric is undefined
(None: ROC-AUC with a class absent from validation) is skipped: it neither becomes the best nor uses up
patience, and the keeper says so.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from tunelab.errors import TunelabError
from tunelab.train.state import LoopState


def is_minimised(metric: str) -> bool:
    """Lower is better for losses and perplexities; higher for every other metric."""
    return metric.endswith("loss") or metric.endswith("perplexity")


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


class BestKeeper:
    """Judges each evaluation by `metric` (the state's step is the evaluation's step) and keeps the best weights.

    `patience`: stop after this many evaluations in a row without improvement (None: never stop early).
    `say`: where messages for people go (the run logger's `message`).
    """

    def __init__(self, state: LoopState, metric: str, patience: int | None, say: Callable[[str], None]):
        self.state, self.metric, self.patience, self.say = state, metric, patience, say
        self.sign = -1.0 if is_minimised(metric) else 1.0  # score = sign * value: higher is better
        self.best_weights: dict[str, torch.Tensor] | None = None

    def best_score(self) -> float:
        return -math.inf if self.state.best_metric is None else self.sign * self.state.best_metric

    def judge(self, metrics: dict, model: nn.Module) -> bool:
        """Record one evaluation's `metrics` of `model`; True when early stopping says stop."""
        state, value = self.state, metrics.get(self.metric)
        if self.metric not in metrics:
            raise TunelabError(f"train.early_stopping.metric: {self.metric!r} is not a validation metric; "
                               f"known: {', '.join(k for k, v in metrics.items() if isinstance(v, float))}")
        state.evals += 1
        if value is None:  # undefined here (ROC-AUC with a class absent from validation)
            state.evals_without_metric += 1
            self.say(f"warning: step {state.step}: validation {self.metric} is undefined (e.g. a class is absent "
                     f"from the validation split); this evaluation is skipped for best-checkpoint keeping and "
                     f"early stopping")
            return False
        if self.sign * value > self.best_score():  # a NaN never is: it counts as no improvement
            state.best_metric, state.best_step, state.best_metrics = value, state.step, metrics
            state.bad_evals, self.best_weights = 0, snapshot(model)
        else:
            state.bad_evals += 1
        self.say(f"step {state.step}: validation {self.metric}={value:.4f} "
                 f"(best {self.sign * self.best_score():.4f} at step {state.best_step})")
        return self.patience is not None and state.bad_evals >= self.patience

    def finish(self, model: nn.Module) -> None:
        """Put the best weights back into `model`; with none, the last weights stay (and why is said)."""
        if self.best_weights is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self.best_weights:
                        p.copy_(self.best_weights[n])
        elif self.state.evals_without_metric and self.state.evals_without_metric == self.state.evals:
            self.say(f"warning: validation {self.metric} was undefined at all {self.state.evals} evaluations, "
                     f"so no best checkpoint was chosen: the run keeps the last weights; choose another "
                     f"train.early_stopping.metric (e.g. loss or f1_macro) or a validation split with every class")
