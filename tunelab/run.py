"""The top level of `tunelab train`: config -> data -> model -> method -> loop -> evaluation -> RUN_DIR."""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tunelab.config import RunConfig, dump_config
from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json, atomic_write_text


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TunelabError("train.device: 'cuda' was asked for but no CUDA GPU is available; use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def is_scratch_model(name: str) -> bool:
    from tunelab.models.scratch import is_scratch_dir

    return name.startswith("scratch:") or is_scratch_dir(name)


def make_job(cfg: RunConfig, device: torch.device, log):
    if cfg.task == "classification":
        from tunelab.tasks.classification import ClassificationJob

        return ClassificationJob(cfg, device, log)
    if cfg.task == "causal_lm" and is_scratch_model(cfg.model.name):
        from tunelab.pretrain import PretrainJob, check_config

        check_config(cfg)
        return PretrainJob(cfg, device, log)
    if cfg.task == "causal_lm":
        from tunelab.tasks.causal_lm import CausalLMJob

        return CausalLMJob(cfg, device, log)
    raise TunelabError(f"task: unknown task {cfg.task!r}; known: classification, causal_lm")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create RUN_DIR; an existing non-empty one is replaced only with --overwrite."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TunelabError(f"output_dir {run_dir} already holds a run; pass --overwrite to replace it "
                               "or choose another --output-dir")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_metric(cfg: RunConfig, job) -> None:
    """Fill in the task's default early-stopping metric, or check the one asked for."""
    if cfg.train.early_stopping.metric is None:
        cfg.train.early_stopping.metric = job.default_metric
    if cfg.train.early_stopping.metric not in job.metric_names:
        raise TunelabError(f"train.early_stopping.metric: {cfg.train.early_stopping.metric!r} is not a "
                           f"{cfg.task} metric; known: {', '.join(job.metric_names)}")


def train(cfg: RunConfig, *, overwrite: bool = False, show_progress: bool = True, log=print,
          job_factory=None) -> Path:
    """Run one training job end to end; returns RUN_DIR.

    `job_factory(cfg, device, log)` builds the TaskJob; default: the one for `cfg.task` (`tunelab pretrain`
    passes its own).
    """
    from tunelab.models.fastdropout import undo_fast_dropout, use_fast_dropout
    from tunelab.train.logging import RunLogger
    from tunelab.train.loop import train_loop
    from tunelab.train.memory import reuse_freed_memory
    from tunelab.train.precision import describe, resolve_precision

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    amp = resolve_precision(cfg.train.precision, device)
    if cfg.train.reuse_memory and device.type == "cpu" and reuse_freed_memory():
        log("speed-up: freed memory is kept for reuse, so big tensors skip fresh pages (train.reuse_memory)")
    seed_everything(cfg.train.seed)
    job = (job_factory or make_job)(cfg, device, log)
    check_metric(cfg, job)
    run_dir = Path(cfg.output_dir)
    prepare_run_dir(run_dir, overwrite)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    t0 = time.perf_counter()
    job.prepare()
    if cfg.train.fast_dropout and device.type == "cpu" and (swapped := use_fast_dropout(job.model)):
        log(f"speed-up: {swapped} dropout layers draw their masks from 16-bit random words (train.fast_dropout)")
    seed_everything(cfg.train.seed)  # the same stream of dropout masks whatever preparing consumed
    steps = job.micro_batches_per_epoch()
    total = cfg.train.max_steps or max(1, int(np.ceil(cfg.train.epochs * np.ceil(steps / cfg.train.grad_accum))))
    log(f"training on {device} in {describe(amp)}: {total} optimizer steps, batch {cfg.train.batch_size} x accum "
        f"{cfg.train.grad_accum}; run dir {run_dir}")
    logger = RunLogger(run_dir, total, show_progress)
    try:
        result = train_loop(job.model, epoch_batches=job.epoch_batches, micro_batches_per_epoch=steps,
                            loss_fn=job.loss, evaluate=job.validate, cfg=cfg.train, device=device, logger=logger,
                            autocast_dtype=amp)
    finally:
        logger.close()
    undo_fast_dropout(job.model)
    tokens_per_s = result.train_tokens / max(result.train_seconds, 1e-9)
    log(f"trained {result.steps} steps in {result.train_seconds:.1f}s ({tokens_per_s:.0f} real tokens/s)"
        + (f"; best validation {cfg.train.early_stopping.metric} at step {result.best_step}"
           if result.best_step is not None else "")
        + ("; stopped early" if result.stopped_early else ""))
    job.save(run_dir / "model", run_dir)
    test_metrics = job.test()
    summary = {"test": test_metrics, "best_step": result.best_step, "best_validation": result.best_metrics,
               "steps": result.steps, "stopped_early": result.stopped_early,
               "train_tokens": result.train_tokens, "train_seconds": round(result.train_seconds, 3),
               "train_tokens_per_s": round(tokens_per_s, 1), "wall_seconds": round(time.perf_counter() - t0, 3)}
    summary.update(job.finish(run_dir))
    atomic_write_json(run_dir / "eval.json", summary)
    _write_report(run_dir, cfg, logger.history, job, test_metrics, result)
    log(job.summary(test_metrics))
    log(f"run saved to {run_dir}  (model: {run_dir / 'model'}, report: {run_dir / 'report.html'})")
    return run_dir


def _write_report(run_dir: Path, cfg: RunConfig, history: list[dict], job, test_metrics: dict, result) -> None:
    from tunelab.evaluate.report import write_report

    notes = [f"task {cfg.task}, model {cfg.model.name}, method {cfg.method.name}; {result.steps} steps; "
             f"best validation {cfg.train.early_stopping.metric} at step {result.best_step}",
             job.summary(test_metrics)]
    write_report(run_dir / "report.html", title=f"tunelab run: {run_dir.name}", config_text=dump_config(cfg),
                 history=history, metric=cfg.train.early_stopping.metric, test_metrics=test_metrics,
                 sections=job.report_sections(test_metrics), notes=notes)
