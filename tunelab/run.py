"""The top level of `tunelab train`: config -> data -> model -> method -> loop -> evaluation -> RUN_DIR."""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tunelab.config import RunConfig, dump_config
from tunelab.errors import TunelabError
from tunelab.io import atomic_replace_dir, atomic_write_json, atomic_write_text, current_umask, \
    follow_umask, nearest_existing, not_a_folder, staging_dir
from tunelab.resume import RUN_MARKER, marker_status  # RUN_MARKER says "training" until the run finished
from tunelab.train.logging import progress_shown


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


def make_job(cfg: RunConfig, device: torch.device, log):
    """The TaskJob of the task that runs `cfg` (tunelab.tasks), after that task's own config checks; a method
    that changes the loss (Method.wrap_job, e.g. distill) wraps it."""
    from tunelab.errors import ConfigError
    from tunelab.methods import wrap_job
    from tunelab.tasks import task_for

    task = task_for(cfg)
    problems = task.check_config(cfg)
    if problems:
        raise ConfigError(problems)
    return wrap_job(task.job(cfg, device, log), cfg, log)


# ---------------------------------------------------------------------------------------------
# The run directory: checked before anything loads, written in a staging folder, swapped in when finished

RUN_ENTRIES = {"config.yaml", "metrics.jsonl", "eval.json", "report.html", "data_format.json", "model", "base",
               "merged", "tensorboard", "checkpoints", RUN_MARKER}
RUN_CONFIG_KEYS = {"task", "model", "data", "method", "train", "output_dir"}  # every dumped run config has them


def is_tunelab_run(folder: Path) -> bool:
    """True for a folder that `--overwrite` may replace.

    A run of this version has RUN_MARKER. Runs of earlier versions (and their failed starts, which left only
    config.yaml) are recognised by a config.yaml holding a dumped run config and nothing but run outputs,
    so that a project folder (its own tunelab config.yaml beside other files) is never taken for a run.
    """
    if (folder / RUN_MARKER).is_file():
        return True
    names = [p.name for p in folder.iterdir()]
    own = all(n in RUN_ENTRIES or n.startswith("eval-") or n.startswith((".model.", ".base.", ".merged."))
              for n in names)
    return own and "config.yaml" in names and _is_run_config(folder / "config.yaml")


def _is_run_config(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and RUN_CONFIG_KEYS <= set(data)


def check_output_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse an output_dir that cannot take this run, before any data or model is loaded."""
    why = not_a_folder(run_dir)
    if why:
        raise TunelabError(f"output_dir {run_dir} {why}, not a folder; choose another --output-dir")
    existing = nearest_existing(run_dir)
    if existing == run_dir.absolute() and any(run_dir.iterdir()):  # run_dir may be relative (validate)
        if not is_tunelab_run(run_dir):
            raise TunelabError(f"output_dir {run_dir} is not empty and is not a tunelab run (a run holds "
                               f"{RUN_MARKER}, or, from earlier versions, a run's config.yaml and only run "
                               "outputs); --overwrite only replaces runs: choose another --output-dir, or move "
                               "or delete that folder yourself")
        if marker_status(run_dir) == "training":
            held_by_another(run_dir)
            if not overwrite:
                raise TunelabError(f"output_dir {run_dir} holds an unfinished run (interrupted, or training): "
                                   f"continue it with `tunelab resume {run_dir}`, or pass --overwrite to start over")
        if not overwrite:
            raise TunelabError(f"output_dir {run_dir} already holds a run; pass --overwrite to replace it "
                               "or choose another --output-dir")
    folder = existing if existing != run_dir else run_dir.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TunelabError(f"output_dir {run_dir}: the folder {folder} is not writable; choose another "
                           "--output-dir")


def open_home(run_dir: Path) -> tuple[Path, list[Path]]:
    """(the folder the run is written in, the folders made for it: parents, and the home itself if new).

    A new run is written in RUN_DIR itself (absent or empty), so its checkpoints and logs are where the user
    looks; a run that replaces one is written in a staging folder `.NAME.staging-XXXX` beside RUN_DIR and
    swapped in when it finished, so the old run stays whole until then. `made` lets a failed start remove
    what it made and leave nothing behind.
    """
    made = [p for p in reversed(run_dir.parents) if not p.exists()]
    try:
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            return run_dir, made
        if not run_dir.exists():
            run_dir.mkdir(parents=True)
            run_dir.chmod(0o777 & ~current_umask())
            return run_dir, [*made, run_dir]
        return staging_dir(run_dir), made
    except OSError as e:  # e.g. read-only filesystem, permissions (root passes os.access), disk full
        raise TunelabError(f"output_dir {run_dir}: cannot create a folder in {run_dir.parent} "
                           f"({e.strerror or e}); choose a writable --output-dir") from None


def discard_home(home: Path, place: Path, made: list[Path]) -> None:
    """Remove what a failed start wrote: the staging folder, or RUN_DIR's contents, and the folders made."""
    if home != place or home in made:
        shutil.rmtree(home, ignore_errors=True)
    else:  # RUN_DIR was there, empty: leave it empty
        for child in home.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    for folder in reversed([m for m in made if m != home]):
        try:
            folder.rmdir()
        except OSError:
            break


def hold(home: Path) -> int:
    """Lock the run folder for this process (released when it exits); one clear error if another holds it."""
    import fcntl

    fd = os.open(home, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TunelabError(f"{home} is being trained by another tunelab process right now; wait for it to "
                           "finish, or stop it (Ctrl-C writes a checkpoint) and resume") from None
    return fd


def held_by_another(folder: Path) -> None:
    """Refuse a run folder that another process is training in."""
    os.close(hold(folder))


def write_marker(home: Path, cfg: RunConfig, status: str) -> None:
    from tunelab import __version__

    atomic_write_json(home / RUN_MARKER, {"tunelab_version": __version__, "task": cfg.task, "status": status,
                                          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def rescue_model(stage: Path, run_dir: Path, cfg: RunConfig, job, saved: bool) -> Path:
    """Keep a trained model whose run could not be put in place; returns where it is.

    If the model was saved in the staging folder, that folder is renamed to NAME.rescued-TIME-XXXX beside
    RUN_DIR (a rename: no space needed). Otherwise the staging folder is deleted first (on a full disk that
    frees the space the failed save took) and the model is saved again, with config.yaml, beside RUN_DIR or
    else in the system temp folder.
    """
    prefix = f"{run_dir.name}.rescued-{time.strftime('%Y%m%d-%H%M%S')}-"
    if saved:
        try:
            target = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=prefix))
            os.replace(stage, target)  # a folder renamed over an empty folder replaces it
            target.chmod(0o777 & ~current_umask())
            return target
        except OSError:
            pass
    shutil.rmtree(stage, ignore_errors=True)
    problems = []
    for parent in (run_dir.parent, Path(tempfile.gettempdir())):
        target = None
        try:
            target = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
            target.chmod(0o777 & ~current_umask())
            atomic_write_text(target / "config.yaml", dump_config(cfg))
            job.save(target / "model", target)
            return target
        except Exception as e:  # noqa: BLE001 - any failure: try the next place
            problems.append(f"{parent}: {e}")
            if target is not None:
                shutil.rmtree(target, ignore_errors=True)
    raise TunelabError(f"the trained model could not be saved anywhere ({'; '.join(problems)}); free disk "
                       "space and train again")


def check_metric(cfg: RunConfig, job) -> None:
    """Fill in the task's default early-stopping metric, or check the one asked for."""
    if cfg.train.early_stopping.metric is None:
        cfg.train.early_stopping.metric = job.default_metric
    if cfg.train.early_stopping.metric not in job.metric_names:
        raise TunelabError(f"train.early_stopping.metric: {cfg.train.early_stopping.metric!r} is not a "
                           f"{cfg.task} metric; known: {', '.join(job.metric_names)}")


class _Progress:
    """How far a run got: what a failure must undo (nothing trained) or keep (a trained model)."""

    def __init__(self):
        self.job = None
        self.trained = False  # the loop finished: the model is worth keeping
        self.saved = False  # RUN_DIR/model (in the staging folder) is complete
        self.resumed_step: int | None = None  # a finished run trained further: the step it went on from


def train(cfg: RunConfig, *, overwrite: bool = False, resume: bool = False, show_progress: bool = True,
          log=print, job_factory=None, on_evaluation=None) -> Path:
    """Run one training job end to end (or go on with one: `resume`); returns RUN_DIR.

    A new run is written in RUN_DIR, marked "training" until it finished; a run that replaces an old one is
    written in a staging folder and swapped in (tunelab.io.atomic_replace_dir) only when it finished, so an
    old run stays as it was on any failure. Ctrl-C and SIGTERM stop after a step with a checkpoint (after
    training: before saving or testing, when a final checkpoint exists). Whatever stops a run, it leaves
    nothing behind before its first checkpoint, its checkpoints for `tunelab resume` after that, and a model
    that trained with no checkpoint to go back to is rescued (`rescue_model`).
    `job_factory(cfg, device, log)` builds the TaskJob; default: `make_job`, the registered task's.
    `on_evaluation(step, metrics)` sees every validation result; a reason it returns stops the run there
    (tunelab.train.loop.StopRun, raised to the caller): the run keeps its config and logs, its marker saying the
    reason instead of "finished", and no checkpoints (`tunelab tune` stops pruned trials so).
    """
    from tunelab.train.distributed import setup
    from tunelab.train.interrupt import Interrupted, stop_on_signals
    from tunelab.train.loop import StopRun

    run_dir = Path(cfg.output_dir)
    place = run_dir.resolve()  # a symlinked RUN_DIR: its target is replaced, never the link
    device = pick_device(cfg.train.device)
    engine = setup(cfg.train.distributed, device, cfg.train.distributed_timeout)
    device = getattr(engine, "device", device)
    say = log if engine.is_main else (lambda *_: None)  # the other processes of a distributed run stay quiet
    progress = _Progress()
    try:
        home, made, saved = _open_run(place, cfg, overwrite, resume, engine, say)
        if saved is not None and saved.finished_run:
            progress.resumed_step = saved.state.step
        lock = hold(home) if engine.is_main else None
        try:
            if engine.is_main:
                write_marker(home, cfg, "training")
            with progress_shown(show_progress and engine.is_main), stop_on_signals(say) as stop:
                _train_into(home, run_dir, cfg, progress, show_progress, log, job_factory, device, engine,
                            saved, stop, on_evaluation)
            if engine.is_main:
                _put_in_place(home, place, cfg, overwrite)
        except Interrupted as e:
            say(f"{e.signal_name}: stopped after step {e.step}; checkpoint {e.folder}\n"
                f"resume with: {resume_command(run_dir, engine)}")
            raise
        except StopRun as e:
            say(f"{e}; {run_dir} keeps its config and logs")
            if engine.is_main:
                _keep_stopped(home, place, made, cfg, e.reason)
            raise
        except BaseException as e:  # an error, or a second Ctrl-C (KeyboardInterrupt)
            if engine.is_main:
                _after_failure(e, home, place, run_dir, made, cfg, progress, log)
            raise
        finally:
            if lock is not None:
                os.close(lock)
    finally:
        engine.close()
    if engine.is_main:
        log(f"run saved to {run_dir}  (model: {run_dir / 'model'}, report: {run_dir / 'report.html'})")
    return run_dir


def resume_command(run_dir: Path, engine) -> str:
    """The command that goes on with this run: with torchrun and the same processes for a distributed one."""
    if engine.world == 1:
        return f"tunelab resume {run_dir}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", engine.world))
    nodes = engine.world // max(1, local)
    flags = f"--nproc-per-node {local}" if nodes == 1 else \
        f"--nnodes {nodes} --nproc-per-node {local} (and your --rdzv-* flags, on every machine)"
    return f"torchrun {flags} -m tunelab resume {run_dir}"


def _open_run(place: Path, cfg: RunConfig, overwrite: bool, resume: bool, engine, log):
    """(home, folders made, the checkpoint to go on from or None), decided by the main process."""
    from tunelab.train import checkpoint

    if not resume:
        if engine.is_main:
            check_output_dir(place, overwrite)
            home, made = open_home(place)
        else:
            home, made = None, []
        return engine.gather(home)[0], made, None
    from tunelab.resume import check_resumable, fill_resolved, find_resume, seed_home

    point = engine.gather(find_resume(place) if engine.is_main else None)[0]
    saved = checkpoint.load(point.checkpoint)
    fill_resolved(cfg, saved.config_text)
    check_resumable(saved.config_text, cfg, saved.world_size, engine.world, point.checkpoint)
    home, made = point.home, []
    if home is None:  # a finished run trained further: in a new staging folder, swapped in at the end
        if engine.is_main:
            home = staging_dir(place)
            seed_home(place, point.checkpoint, home)
        home = engine.gather(home)[0]
        made = [home]  # a failure before a checkpoint of its own removes it again
        saved.folder, saved.finished_run = home / "checkpoints" / point.checkpoint.name, True
    log(f"resuming from {point.checkpoint} (step {saved.state.step})")
    return home, made, saved


def _put_in_place(home: Path, place: Path, cfg: RunConfig, overwrite: bool) -> None:
    """Mark the run finished and, when it was written in a staging folder, swap it in for RUN_DIR; then drop
    the unfinished runs for RUN_DIR that this one supersedes (interrupted `--overwrite` runs)."""
    from tunelab.resume import in_progress_homes

    write_marker(home, cfg, "finished")
    follow_umask(home)
    if home != place:
        if place.exists() and marker_status(place) != "training" and any(place.iterdir()):
            check_output_dir(place, True)  # again: the folder may have changed while this run trained
        atomic_replace_dir(home, place)
    for other in in_progress_homes(place):
        if other != place:
            try:
                fd = hold(other)
            except TunelabError:  # another process trains it right now: leave it to that process
                continue
            shutil.rmtree(other, ignore_errors=True)
            os.close(fd)


def _after_failure(e: BaseException, home: Path, place: Path, run_dir: Path, made: list[Path], cfg: RunConfig,
                   progress: "_Progress", log) -> None:
    """What a failed or interrupted run leaves: nothing before its first checkpoint of its own, its checkpoints
    after that, or, trained without any, a rescued model. A user's mistake or a full disk becomes one
    TunelabError line; a bug or a second Ctrl-C goes on as it was, after a line saying what was kept."""
    told = isinstance(e, (OSError, TunelabError))
    if _checkpointed_since(home, progress.resumed_step):
        where = run_dir if home == place else home
        kept = (f"its checkpoints are kept in {where / 'checkpoints'}: fix the cause, then `tunelab resume "
                f"{run_dir}` goes on from the newest")
        if not told:
            log(f"the run stopped; {kept}")
            return
        raise TunelabError(f"{e}; {kept}") from e
    if not progress.trained:
        discard_home(home, place, made)
        return
    kept = rescue_model(home, place, cfg, progress.job, progress.saved)
    if not told:
        log(f"the trained model is kept in {kept / 'model'}")
        return
    raise TunelabError(f"writing the run to {run_dir} failed after training ({e}); the trained model is "
                       f"kept in {kept / 'model'} (with config.yaml beside it): fix the cause, then move it "
                       "into place or train again") from e


def _keep_stopped(home: Path, place: Path, made: list[Path], cfg: RunConfig, reason: str) -> None:
    """A run its caller stopped (StopRun) keeps its config.yaml, metrics.jsonl and TensorBoard events, marked with
    the reason, without checkpoints (nothing goes on from it); one that was to replace a run is dropped instead,
    so the old run stays whole."""
    if home != place:
        discard_home(home, place, made)
        return
    shutil.rmtree(home / "checkpoints", ignore_errors=True)
    write_marker(home, cfg, reason)


def _checkpointed_since(home: Path, step: int | None) -> bool:
    """Whether `home` holds a checkpoint of its own: any (step None), or one later than `step` (the checkpoint
    a finished run trained further was seeded with)."""
    from tunelab.train.checkpoint import complete_steps

    steps = complete_steps(home / "checkpoints")
    return bool(steps) and (step is None or steps[-1] > step)


def _train_into(stage: Path, run_dir: Path, cfg: RunConfig, progress: _Progress, show_progress: bool, log,
                job_factory, device: torch.device, engine, saved, stop, on_evaluation=None) -> None:
    """Everything `train` does, written into `stage` (RUN_DIR itself, or the folder swapped in for it)."""
    from tunelab.models.fastdropout import undo_fast_dropout, use_fast_dropout
    from tunelab.train.checkpoint import Checkpoints
    from tunelab.train.logging import RunLogger
    from tunelab.train.loop import Saving, train_loop
    from tunelab.train.memory import reuse_freed_memory
    from tunelab.train.plan import plan_for
    from tunelab.train.precision import describe, resolve_precision

    main = engine.is_main
    say = log if main else (lambda *_: None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    amp = resolve_precision(cfg.train.precision, device)
    if cfg.train.reuse_memory and device.type == "cpu" and reuse_freed_memory():
        say("speed-up: freed memory is kept for reuse, so big tensors skip fresh pages (train.reuse_memory)")
    seed_everything(cfg.train.seed)
    engine.configure(cfg)
    job_cfg = global_batch(cfg, engine)
    job = progress.job = (job_factory or make_job)(job_cfg, device, say)
    check_metric(cfg, job)
    job_cfg.train.early_stopping.metric = cfg.train.early_stopping.metric
    if main:
        atomic_write_text(stage / "config.yaml", dump_config(cfg))
    t0 = time.perf_counter()
    job.prepare()
    if cfg.train.fast_dropout and device.type == "cpu" and (swapped := use_fast_dropout(job.model)):
        say(f"speed-up: {swapped} dropout layers draw their masks from 16-bit random words (train.fast_dropout)")
    seed_everything(cfg.train.seed)  # the same stream of dropout masks whatever preparing consumed
    steps = job.micro_batches_per_epoch()
    total = plan_for(cfg.train, steps).total  # the loop follows the same plan
    if saved is not None and saved.finished_run:
        _check_something_left(saved.state, total, run_dir)
    processes = f" in {engine.world} processes ({engine.name})" if engine.world > 1 else ""
    say(f"training on {device} in {describe(amp)}{processes}: {total} optimizer steps, batch "
        f"{cfg.train.batch_size}{f' x {engine.world} processes' if engine.replicas > 1 else ''} x accum "
        f"{cfg.train.grad_accum}; run dir {run_dir}")
    logger = RunLogger(stage if main else None, total, show_progress and main,
                       resume_step=saved.state.step if saved is not None else None, echo=main)
    checkpoints = Checkpoints(stage / "checkpoints", cfg.train.keep_checkpoints, dump_config(cfg))
    saving = Saving(checkpoints, cfg.train.checkpoint_every, saved, stop)
    try:
        result = train_loop(job.model, epoch_batches=job.epoch_batches, micro_batches_per_epoch=steps,
                            loss_fn=job.loss, evaluate=job.validate, cfg=cfg.train, device=device, logger=logger,
                            autocast_dtype=amp, saving=saving, engine=engine, on_evaluation=on_evaluation)
    except RuntimeError as e:
        if engine.world == 1 or not _is_exchange_failure(e):
            raise
        first = str(e).strip().splitlines()[0][:300]
        raise TunelabError(f"process {engine.rank} of {engine.world}: an exchange with the other processes failed "
                           f"({first}); {engine.stopped_processes()}") from e
    finally:
        logger.close()
    undo_fast_dropout(job.model)
    progress.trained = True
    job.model = engine.unwrap(job.model)
    if main:
        _finish_run(stage, run_dir, cfg, job, result, logger.history, progress, stop, log, t0)


def _check_something_left(state, total: int, run_dir: Path) -> None:
    """Refuse to train a finished run further when there is nothing left to train."""
    if state.stopped_early:
        raise TunelabError(f"{run_dir} stopped early at step {state.step} (no better validation "
                           "train.early_stopping.metric within its patience): training it further would change "
                           "nothing; train a new run, e.g. with a larger train.early_stopping.patience")
    if state.step >= total:
        raise TunelabError(f"{run_dir} already trained {state.step} of {total} steps; raise "
                           "train.max_steps or train.epochs to train it further")


def _stop_if_asked(stop, stage: Path, step: int) -> None:
    """After training, a Ctrl-C / SIGTERM stops the run where it is; the final checkpoint lets `tunelab resume`
    finish it (without one, the run finishes: there is nothing to go on from)."""
    from tunelab.train.checkpoint import newest
    from tunelab.train.interrupt import Interrupted

    folder = newest(stage / "checkpoints")
    if stop.asked and folder is not None:
        raise Interrupted(step, folder, stop.signal_name)


def _finish_run(stage: Path, run_dir: Path, cfg: RunConfig, job, result, history: list[dict],
                progress: _Progress, stop, log, t0: float) -> None:
    """After training (main process): save the model, test it, write eval.json and the report."""
    _stop_if_asked(stop, stage, result.steps)
    tokens_per_s = result.train_tokens / max(result.train_seconds, 1e-9)
    log(f"trained {result.steps} steps in {result.train_seconds:.1f}s ({tokens_per_s:.0f} real tokens/s)"
        + (f"; best validation {cfg.train.early_stopping.metric} at step {result.best_step}"
           if result.best_step is not None else "")
        + ("; stopped early" if result.stopped_early else ""))
    job.save(stage / "model", stage)
    progress.saved = True
    _stop_if_asked(stop, stage, result.steps)
    test_metrics = job.test()
    summary = {"test": test_metrics, "best_step": result.best_step, "best_validation": result.best_metrics,
               "steps": result.steps, "stopped_early": result.stopped_early,
               "train_tokens": result.train_tokens, "train_seconds": round(result.train_seconds, 3),
               "train_tokens_per_s": round(tokens_per_s, 1), "wall_seconds": round(time.perf_counter() - t0, 3)}
    summary.update(job.finish(stage))
    data = getattr(job, "data_summary", None)  # what tunelab.data.prepare found and changed in the data
    if data is not None:
        summary["data"] = data.to_dict()
    atomic_write_json(stage / "eval.json", summary)
    _write_report(stage, run_dir.name, cfg, history, job, test_metrics, result)
    log(job.summary(test_metrics))


def global_batch(cfg: RunConfig, engine) -> RunConfig:
    """The config the job batches with: with processes that share each batch (DDP, FSDP), a global batch of
    train.batch_size rows per process, so N processes x batch b train as one process with batch N*b."""
    import copy

    if engine.replicas <= 1:
        return cfg
    job_cfg = copy.deepcopy(cfg)
    job_cfg.train.batch_size = cfg.train.batch_size * engine.replicas
    return job_cfg


def _is_exchange_failure(e: RuntimeError) -> bool:
    """A failed collective (a process died, hung or lost its connection), not a bug in this process."""
    import torch.distributed as dist

    text = str(e)
    return isinstance(e, getattr(dist, "DistBackendError", ())) or any(
        s in text for s in ("Connection reset", "Connection closed", "Timed out", "timed out", "gloo", "NCCL"))


def _write_report(run_dir: Path, name: str, cfg: RunConfig, history: list[dict], job, test_metrics: dict,
                  result) -> None:
    from tunelab.evaluate.report import write_report

    best = (f"best validation {cfg.train.early_stopping.metric} at step {result.best_step}"
            if result.best_step is not None else "no validation: the last weights")
    notes = [f"task {cfg.task}, model {cfg.model.name}, method {cfg.method.name}; {result.steps} steps; {best}",
             job.summary(test_metrics)]
    write_report(run_dir / "report.html", title=f"tunelab run: {name}", config_text=dump_config(cfg),
                 history=history, metric=cfg.train.early_stopping.metric, test_metrics=test_metrics,
                 sections=[*job.report_sections(test_metrics), *_data_section(job)], notes=notes)


def _data_section(job) -> list[tuple[str, str]]:
    """report.html's "Data": the data check and what data.dedup / redact_pii / augment changed (a job that keeps
    tunelab.data.prepare's summary as `data_summary`; every task's does)."""
    data = getattr(job, "data_summary", None)
    return [("Data", data.html())] if data is not None else []
