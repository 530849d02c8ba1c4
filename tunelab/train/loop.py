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

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from tunelab.train.checkpoint import Checkpoints, Loaded, Snapshot, restore_rng, rng_state
from tunelab.train.distributed import Engine, Single
from tunelab.train.interrupt import Interrupted, StopRequest
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


@dataclass
class Saving:
    """Checkpointing for one run: where (`checkpoints`), how often, and a checkpoint to go on from."""

    checkpoints: Checkpoints | None = None
    every: int | None = None
    """Every this many optimizer steps; None: at each evaluation and epoch end; 0: only when interrupted."""
    resume: Loaded | None = None
    stop: StopRequest | None = None
    """Set by a signal handler: finish the step, write a checkpoint, raise Interrupted."""


class StopRun(Exception):
    """The caller's `on_evaluation` hook stopped the run after the evaluation at `step`, for `reason` (a trial of
    `tunelab tune` that the pruner gave up on: "pruned")."""

    def __init__(self, reason: str, step: int):
        super().__init__(f"stopped after the evaluation at step {step}: {reason}")
        self.reason, self.step = reason, step


OnEvaluation = Callable[[int, dict], "str | None"]


def train_loop(model: nn.Module, *, epoch_batches: Callable[[int], Iterable[Batch]], micro_batches_per_epoch: int,
               loss_fn: LossFn, evaluate: Callable[[nn.Module], dict] | None, cfg, device: torch.device,
               logger: RunLogger, autocast_dtype: torch.dtype | None = None, saving: Saving | None = None,
               engine: Engine | None = None, on_evaluation: OnEvaluation | None = None) -> LoopResult:
    """Train `model` in place; on return it holds the best checkpoint's weights (by validation metric).

    `cfg` is a TrainConfig. `evaluate(model)` returns validation metrics (None: no validation data).
    Forward passes run under autocast to `autocast_dtype` (None: fp32); backward and the update do not.
    `saving` writes checkpoints and goes on from one; `engine` spreads the work over processes (default:
    one process). With several processes each batch of `epoch_batches` is a global batch.
    `on_evaluation(step, metrics)` sees each validation result after the keeper judged it; a reason (a string) it
    returns stops the run at once with `StopRun` (no checkpoint: nothing goes on from it). Every process calls it
    with the same metrics and must get the same answer (a hook that decides in one process sends its answer to
    the others itself: tunelab.tune.trial.Reporter does, through the run's store).
    """
    saving, engine = saving or Saving(), engine or Single()
    plan = plan_for(cfg, micro_batches_per_epoch)
    net = engine.wrap(model, loss_fn)  # net(batch) -> (loss summed over n items, n); DDP/FSDP hooks inside
    params = list(engine.trainable(model).values())  # the ones this process updates
    optimizer = build_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = build_scheduler(optimizer, cfg.scheduler, plan.total, plan.warmup, cfg.gamma)
    state = LoopState()
    keeper = BestKeeper(state, cfg.early_stopping.metric, cfg.early_stopping.patience, say=logger.message)
    meter, mean_loss = Throughput(state, clock=time.perf_counter), MeanLoss()
    if saving.resume is not None:
        state = _resume(saving.resume, model, optimizer, scheduler, keeper, mean_loss, engine)
        keeper.state = meter.state = state
        logger.progress(state.step)

    def validate() -> bool:  # True when early stopping says stop
        return _validate(model, evaluate, state, keeper, logger, engine, on_evaluation)

    written: dict[int, Path | None] = {}  # step -> folder: a step is checkpointed once

    def checkpoint() -> Path | None:
        if state.step not in written:
            written[state.step] = _checkpoint(saving.checkpoints, model, optimizer, scheduler, state, keeper,
                                              mean_loss, engine)
        return written[state.step]

    net.train()
    stop = state.stopped_early  # a run resumed after early stopping trains no further
    while state.step < plan.total and not stop:
        batches = itertools.islice(epoch_batches(state.epoch), state.batch_in_epoch, None)  # a resume skips
        for window in plan.windows(batches):
            meter.start()
            items, tokens, asked = _forward_backward(net, window, device, autocast_dtype, mean_loss, engine,
                                                     saving.stop)
            # summed gradients -> the window's mean (DDP/FSDP already averaged them over `replicas` processes)
            grad_norm = _finish_gradients(params, items / engine.replicas, cfg.l1_penalty, cfg.max_grad_norm, engine)
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
            epoch_done, last = state.batch_in_epoch >= micro_batches_per_epoch, state.step >= plan.total
            if epoch_done:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            if epoch_done or last or plan.evaluates_at(state.step):
                stop = validate()
            if asked:  # the checkpoint is the last thing a step does: a resume starts at the next one
                raise Interrupted(state.step, checkpoint(), saving.stop.signal_name)
            if _checkpoint_due(saving.every, state, last or stop):
                checkpoint()
            if stop or last or epoch_done:
                break
        else:  # the epoch gave fewer batches than counted (none left): it ends here
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            stop = validate()
    keeper.finish(model)
    return LoopResult(state.step, state.best_step, state.best_metrics, stop and state.step < plan.total,
                      state.train_tokens, state.train_seconds, state.evals_without_metric)


def _checkpoint_due(every: int | None, state: LoopState, final: bool) -> bool:
    """Default (None): after each evaluation (epoch ends included) and the last step; N: every N steps and the
    last; 0: never (only when interrupted)."""
    if every is None:
        return final or state.last_eval_step == state.step
    return every > 0 and (final or state.step % every == 0)


def _forward_backward(net: nn.Module, window: list[Batch], device: torch.device,
                      autocast_dtype: torch.dtype | None, mean_loss: MeanLoss, engine: Engine,
                      stop: StopRequest | None) -> tuple[int, int, bool]:
    """Add up the gradients of the window's summed losses; (items, real tokens, stop asked) of the window,
    summed over processes. Gradients are synchronised between processes on the last micro-batch only."""
    if engine.forward_backward is not None:  # the engine runs the window itself (pipeline): global numbers
        loss_sum, items, tokens = engine.forward_backward(net, window, device, autocast_dtype)
        mean_loss.add(loss_sum, items)
        engine.heartbeat()
        asked = stop is not None and stop.asked
        return items, tokens, engine.all_sum([float(asked)])[0] > 0
    items = tokens = 0
    losses: list[tuple[float, int]] = []
    for i, batch in enumerate(window):
        batch, real = engine.shard(batch)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with engine.sync(net, last=i == len(window) - 1):
            with autocast(device, autocast_dtype):
                loss, n = net(batch)  # loss: a sum over n items
            if not real:  # a process with no rows of this batch still joins the gradient exchange
                loss, n = loss * 0.0, 0
            loss.backward()
        losses.append((loss.item(), n))
        items += n
        if real:  # real tokens: every mask's (the input's, an encoder-decoder's targets, retrieval's passages)
            tokens += sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
    asked = stop is not None and stop.asked
    if engine.world == 1:
        for loss_sum, n in losses:
            mean_loss.add(loss_sum, n)
        return items, tokens, asked
    engine.heartbeat()
    total_loss, items, tokens, asked_any = engine.all_sum([sum(l for l, _ in losses), items, tokens, float(asked)])
    mean_loss.add(total_loss, int(items))
    return int(items), int(tokens), asked_any > 0


def _finish_gradients(params: list[nn.Parameter], items: float, l1_penalty: float,
                      max_grad_norm: float | None, engine: Engine) -> torch.Tensor | None:
    """Turn summed gradients into the window's mean, add the L1 term and clip; the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_div_(grads, max(1, items))
    if l1_penalty:
        for p in params:
            if p.grad is not None and p.dim() >= 2:
                p.grad.add_(torch.sign(p.detach()), alpha=l1_penalty)
    return engine.clip_grad_norm(params, max_grad_norm) if max_grad_norm else None


def _log_train(logger: RunLogger, state: LoopState, lr: float, grad_norm: torch.Tensor | None,
               mean_loss: MeanLoss, meter: Throughput) -> None:
    """Log the window since the last log: mean loss per item, this step's lr, tokens/s inside steps."""
    values = {"loss": mean_loss.take(), "lr": lr, "tokens_per_s": meter.take_rate(), "epoch": state.epoch + 1}
    if grad_norm is not None:
        values["grad_norm"] = float(grad_norm)
    logger.log("train", state.step, values)
    logger.progress(0, loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", tok_s=f"{values['tokens_per_s']:.0f}")


def _validate(model: nn.Module, evaluate: Callable[[nn.Module], dict] | None, state: LoopState,
              keeper: BestKeeper, logger: RunLogger, engine: Engine, on_evaluation: OnEvaluation | None) -> bool:
    """Evaluate (at most once per step), log the metrics and let the keeper judge; True to stop early. Then
    the caller's `on_evaluation` may stop the run (StopRun).

    Every process gets the same metrics (the engine's job), so every process takes the same decision.
    """
    if evaluate is None or state.last_eval_step == state.step:
        return False
    state.last_eval_step = state.step
    metrics = engine.evaluate(model, evaluate)
    model.train()
    if metrics is None:  # no validation data: the last weights are the result
        return False
    logger.log("eval", state.step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    state.stopped_early = keeper.judge(metrics, model)  # saved with the state: a resume stops too
    # no collective here: one right before the run's process group is closed can deadlock gloo's worker thread
    # (it needs the GIL to free the exchanged tensors while the closing thread holds it)
    verdict = on_evaluation(state.step, metrics) if on_evaluation is not None else None
    if verdict:
        raise StopRun(verdict, state.step)
    return state.stopped_early


def _checkpoint(checkpoints: Checkpoints | None, model: nn.Module, optimizer, scheduler, state: LoopState,
                keeper: BestKeeper, mean_loss: MeanLoss, engine: Engine) -> Path | None:
    """Write a checkpoint of this moment (the main process writes; all take part in gathering)."""
    if checkpoints is None:
        return None
    weights = engine.full_weights(model, engine.trainable(model))
    best = engine.full_weights(model, keeper.best_weights) if keeper.best_weights is not None else None
    snap = Snapshot(state=LoopState.from_dict(state.to_dict()), weights=weights, best_weights=best,
                    optimizer=engine.optimizer_state(model, optimizer), scheduler=scheduler.state_dict(),
                    rng=engine.gather(rng_state()), loss_window=(mean_loss.total, mean_loss.items),
                    world_size=engine.world)
    folder = checkpoints.save(snap) if engine.is_main else None
    return engine.gather(folder)[0] if engine.world > 1 else folder


def _resume(saved: Loaded, model: nn.Module, optimizer, scheduler, keeper: BestKeeper, mean_loss: MeanLoss,
            engine: Engine) -> LoopState:
    """Put a checkpoint back: weights, best weights, optimizer, schedule, loss window and random generators."""
    engine.load_weights(model, saved.weights)
    if saved.best_weights is not None:
        keeper.best_weights = engine.local_weights(model, saved.best_weights)
    engine.load_optimizer_state(model, optimizer, saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    # the rate of the next step under this run's schedule: the same number when the length is unchanged, the
    # new schedule's when train.max_steps / epochs grew (the saved rate was the old schedule's last)
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    mean_loss.total, mean_loss.items = saved.loss_window
    restore_rng(saved.rng[engine.rank])
    return LoopState.from_dict(saved.state.to_dict())
