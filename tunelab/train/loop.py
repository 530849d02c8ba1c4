"""The training loop: one function, readable top to bottom, over four small named pieces.

- `StepPlan` (plan.py): steps per epoch, total steps, warmup, the windows of micro-batches, when to log/evaluate.
- `LoopState` (state.py): where the run is (step, epoch, batch within the epoch), the best evaluation, the
  patience count and the token/time counters, as plain data a checkpoint can save and restore.
- `BestKeeper` (stopping.py): judges each evaluation, keeps the best weights, says when to stop early.
- `Throughput` and `MeanLoss` (meter.py): tokens per second inside steps and the mean loss of each log window.

Gradient accumulation is exact: each micro-batch's loss is a *sum* over its items (examples or label
tokens), the gradients of the whole window are added up and then divided by the window's item count, so
batch 8 x accum 1 and batch 1 x accum 8 take the same step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from tunelab.train.logging import RunLogger
from tunelab.train.meter import MeanLoss, Throughput
from tunelab.train.optim import build_optimizer, build_scheduler
from tunelab.train.plan import plan_for
from tunelab.train.precision import autocast
from tunelab.train.state import LoopState
from tunelab.train.stopping import BestKeeper

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


def train_loop(model: nn.Module, *, epoch_batches: Callable[[int], Iterable[Batch]], micro_batches_per_epoch: int,
               loss_fn: LossFn, evaluate: Callable[[nn.Module], dict] | None, cfg, device: torch.device,
               logger: RunLogger, autocast_dtype: torch.dtype | None = None) -> LoopResult:
    """Train `model` in place; on return it holds the best checkpoint's weights (by validation metric).

    `cfg` is a TrainConfig. `evaluate(model)` returns validation metrics (None: no validation data).
    Forward passes run under autocast to `autocast_dtype` (None: fp32); backward and the update do not.
    """
    plan = plan_for(cfg, micro_batches_per_epoch)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = build_scheduler(optimizer, cfg.scheduler, plan.total, plan.warmup, cfg.gamma)
    params = [p for p in model.parameters() if p.requires_grad]
    state = LoopState()
    keeper = BestKeeper(state, cfg.early_stopping.metric, cfg.early_stopping.patience, say=logger.message)
    meter, mean_loss = Throughput(state, clock=time.perf_counter), MeanLoss()

    def validate() -> bool:  # True when early stopping says stop
        return _validate(model, evaluate, state, keeper, logger)

    model.train()
    stop = False
    while state.step < plan.total and not stop:
        for window in plan.windows(epoch_batches(state.epoch)):
            meter.start()
            items, tokens = _forward_backward(model, window, loss_fn, device, autocast_dtype, mean_loss)
            grad_norm = _finish_gradients(params, items, cfg.l1_penalty, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_in_epoch += len(window)
            meter.stop(tokens)
            if plan.logs_at(state.step):
                _log_train(logger, state, lr, grad_norm, mean_loss, meter)
            logger.progress(1)
            if plan.evaluates_at(state.step):
                stop = validate()
            if stop or state.step >= plan.total:
                break
        else:  # the epoch ran out of batches
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if not stop:
            stop = validate()
    keeper.finish(model)
    return LoopResult(state.step, state.best_step, state.best_metrics, stop and state.step < plan.total,
                      state.train_tokens, state.train_seconds, state.evals_without_metric)


def _forward_backward(model: nn.Module, window: list[Batch], loss_fn: LossFn, device: torch.device,
                      autocast_dtype: torch.dtype | None, mean_loss: MeanLoss) -> tuple[int, int]:
    """Add up the gradients of the window's summed losses; (items, real tokens) of the window."""
    items = tokens = 0
    for batch in window:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, autocast_dtype):
            loss, n = loss_fn(model, batch)  # loss: a sum over n items
        loss.backward()
        mean_loss.add(loss.item(), n)
        items += n
        tokens += int(batch["attention_mask"].sum())
    return items, tokens


def _finish_gradients(params: list[nn.Parameter], items: int, l1_penalty: float,
                      max_grad_norm: float | None) -> torch.Tensor | None:
    """Turn summed gradients into the window's mean, add the L1 term and clip; the norm before clipping."""
    torch._foreach_div_([p.grad for p in params if p.grad is not None], max(1, items))
    if l1_penalty:
        for p in params:
            if p.grad is not None and p.dim() >= 2:
                p.grad.add_(torch.sign(p.detach()), alpha=l1_penalty)
    return torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm else None


def _log_train(logger: RunLogger, state: LoopState, lr: float, grad_norm: torch.Tensor | None,
               mean_loss: MeanLoss, meter: Throughput) -> None:
    """Log the window since the last log: mean loss per item, this step's lr, tokens/s inside steps."""
    values = {"loss": mean_loss.take(), "lr": lr, "tokens_per_s": meter.take_rate(), "epoch": state.epoch + 1}
    if grad_norm is not None:
        values["grad_norm"] = float(grad_norm)
    logger.log("train", state.step, values)
    logger.progress(0, loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", tok_s=f"{values['tokens_per_s']:.0f}")


def _validate(model: nn.Module, evaluate: Callable[[nn.Module], dict] | None, state: LoopState,
              keeper: BestKeeper, logger: RunLogger) -> bool:
    """Evaluate (at most once per step), log the metrics and let the keeper judge; True to stop early."""
    if evaluate is None or state.last_eval_step == state.step:
        return False
    state.last_eval_step = state.step
    metrics = evaluate(model)
    model.train()
    if metrics is None:  # no validation data: the last weights are the result
        return False
    logger.log("eval", state.step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return keeper.judge(metrics, model)
