"""Optimizers and learning-rate schedules (with linear warmup), built from flat arguments."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


def param_groups(params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only; biases and norm weights (1-D) are not decayed.

    `params`: a module (its trainable parameters) or the parameters themselves."""
    decay, no_decay = [], []
    for p in (params.parameters() if isinstance(params, nn.Module) else params):
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(params: nn.Module | Iterable[nn.Parameter], name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    groups = param_groups(params, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    if name == "adam":  # classic L2 penalty folded into the gradient
        return torch.optim.Adam(groups, lr=lr, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}; known: adamw, adam, sgd")


def lr_factor(step: int, total: int, warmup: int, kind: str, gamma: float = 0.999) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup, then the schedule."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress_steps = step - warmup
    remaining = max(1, total - warmup)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, 1.0 - progress_steps / remaining)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_steps / remaining)))
    if kind == "exponential":
        return gamma ** progress_steps
    raise ValueError(f"unknown scheduler {kind!r}; known: constant, linear, cosine, exponential")


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int,
                    gamma: float = 0.999) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, kind, gamma))
