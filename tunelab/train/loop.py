"""The training loop: one function, readable top to bottom.

Gradient accumulation is exact: each micro-batch's loss is a *sum* over its items (examples or label
tokens), the gradients of the whole window are added up and then divided by the window's item count, so
batch 8 x accum 1 and batch 1 x accum 8 take the same step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from tunelab.errors import TunelabError
from tunelab.train.logging import RunLogger
from tunelab.train.optim import build_optimizer, build_scheduler
from tunelab.train.precision import autocast

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, int]]


@dataclass
class LoopResult:
    steps: int
    best_step: int | None
    best_metrics: dict | None
    stopped_early: bool
    train_tokens: int
    train_seconds: float
    evals_without_metric: int = 0
    """Evaluations where the early-stopping metric was undefined (None), skipped for best-checkpoint keeping."""


def is_minimised(metric: str) -> bool:
    return metric.endswith("loss") or metric.endswith("perplexity")


def _windows(batches: Iterable[Batch], grad_accum: int) -> Iterable[list[Batch]]:
    window: list[Batch] = []
    for b in batches:
        window.append(b)
        if len(window) == grad_accum:
            yield window
            window = []
    if window:
        yield window


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (frozen ones cannot change) for best-checkpoint keeping."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def train_loop(model: nn.Module, *, epoch_batches: Callable[[int], Iterable[Batch]], micro_batches_per_epoch: int,
               loss_fn: LossFn, evaluate: Callable[[nn.Module], dict] | None, cfg, device: torch.device,
               logger: RunLogger, autocast_dtype: torch.dtype | None = None) -> LoopResult:
    """Train `model` in place; on return it holds the best checkpoint's weights (by validation metric).

    `cfg` is a TrainConfig. `evaluate(model)` returns validation metrics (None: no validation data).
    Forward passes run under autocast to `autocast_dtype` (None: fp32); backward and the update do not.
    """
    steps_per_epoch = max(1, math.ceil(micro_batches_per_epoch / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = build_scheduler(optimizer, cfg.scheduler, total, warmup, cfg.gamma)
    params = [p for p in model.parameters() if p.requires_grad]
    metric, patience = cfg.early_stopping.metric, cfg.early_stopping.patience
    sign = -1.0 if is_minimised(metric) else 1.0
    best_score, best_step, best_metrics, best_state = -math.inf, None, None, None
    bad_evals, step, epoch, stop, last_eval = 0, 0, 0, False, -1
    evals, missing = 0, 0  # evaluations with validation data; those where `metric` was None
    tokens = run_tokens = 0
    train_time, window_time, loss_acc, items_acc = 0.0, 0.0, 0.0, 0  # seconds inside steps only

    def run_eval() -> bool:
        """Evaluate, keep the best weights; True when early stopping says stop."""
        nonlocal best_score, best_step, best_metrics, best_state, bad_evals, last_eval, evals, missing
        if evaluate is None or last_eval == step:
            return False
        last_eval = step
        metrics = evaluate(model)
        model.train()
        if metrics is None:  # no validation data: the last weights are the result
            return False
        logger.log("eval", step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if metric not in metrics:
            raise TunelabError(f"train.early_stopping.metric: {metric!r} is not a validation metric; "
                           f"known: {', '.join(k for k, v in metrics.items() if isinstance(v, float))}")
        evals += 1
        if metrics[metric] is None:  # undefined here (ROC-AUC with a class absent from validation)
            missing += 1
            logger.message(f"warning: step {step}: validation {metric} is undefined (e.g. a class is absent from "
                           f"the validation split); this evaluation is skipped for best-checkpoint keeping and "
                           f"early stopping")
            return False
        score = sign * metrics[metric]
        if score > best_score:
            best_score, best_step, best_metrics, best_state, bad_evals = score, step, metrics, _snapshot(model), 0
        else:
            bad_evals += 1
        logger.message(f"step {step}: validation {metric}={metrics[metric]:.4f} "
                       f"(best {sign * best_score:.4f} at step {best_step})")
        return patience is not None and bad_evals >= patience

    model.train()
    while step < total and not stop:
        for window in _windows(epoch_batches(epoch), cfg.grad_accum):
            t0 = time.perf_counter()
            items = 0
            for batch in window:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast(device, autocast_dtype):
                    loss, n = loss_fn(model, batch)
                loss.backward()
                items += n
                loss_acc += loss.item()
                tokens += int(batch["attention_mask"].sum())
            torch._foreach_div_([p.grad for p in params if p.grad is not None], max(1, items))
            if cfg.l1_penalty:
                for p in params:
                    if p.grad is not None and p.dim() >= 2:
                        p.grad.add_(torch.sign(p.detach()), alpha=cfg.l1_penalty)
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                         if cfg.max_grad_norm else None)
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            items_acc += items
            seconds = time.perf_counter() - t0
            train_time += seconds
            window_time += seconds
            if step % cfg.log_every == 0 or step == total:
                values = {"loss": loss_acc / max(1, items_acc), "lr": lr,
                          "tokens_per_s": (tokens - run_tokens) / max(1e-9, window_time), "epoch": epoch + 1}
                if grad_norm is not None:
                    values["grad_norm"] = float(grad_norm)
                logger.log("train", step, values)
                logger.progress(0, loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                tok_s=f"{values['tokens_per_s']:.0f}")
                loss_acc, items_acc, run_tokens, window_time = 0.0, 0, tokens, 0.0
            logger.progress(1)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                stop = run_eval()
            if stop or step >= total:
                break
        epoch += 1
        if not stop:
            stop = run_eval()
    if best_state is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
    elif missing and missing == evals:
        logger.message(f"warning: validation {metric} was undefined at all {evals} evaluations, so no best "
                       f"checkpoint was chosen: the run keeps the last weights; choose another "
                       f"train.early_stopping.metric (e.g. loss or f1_macro) or a validation split with every class")
    return LoopResult(step, best_step, best_metrics, stop and step < total, tokens, train_time, missing)
