"""`tunelab tune CONFIG --space SPACE --trials N`: check everything a search needs before its first trial, open
or continue the study, start the extra local workers, run trials, and say where the results are.

Before any trial: the base config (CONFIG with its overrides) loads, has validation data and a metric of its
task, and the space file fits the config schema; RUN_DIR can hold a search (new, this same search to continue,
or one to start over with --overwrite). Any problem is one line and exit code 2. `--workers K` starts K-1 more
processes of this same command (`--worker I`), each running trials of the one study until it holds N.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from tunelab.errors import TunelabError


def run_tune(args) -> int:
    from tunelab.tune.ranks import Ranks
    from tunelab.tune.report import SearchInfo
    from tunelab.tune.search import Settings, follow
    from tunelab.tune.space import load_space
    from tunelab.tune.study import quiet_optuna

    check_arguments(args)
    quiet_optuna()
    cfg, base, metric, minimise = base_config(args)
    space = load_space(args.space, base)
    ranks = Ranks(cfg.train.distributed_timeout)
    if ranks.world > 1 and args.workers > 1:
        raise TunelabError("--workers starts processes of its own: under torchrun leave it out, and start more "
                           "torchrun launches with the same --storage to run trials side by side")
    run_dir = Path(cfg.output_dir)
    info = SearchInfo(run_dir, space, base, metric, minimise, args.trials)
    several = args.workers > 1 or args.worker is not None
    label = f"[worker {args.worker or 0}] " if several else ""
    settings = Settings(info, storage=None, seed=cfg.train.seed, timeout_s=args.timeout,
                        show_progress=not args.no_progress and not several, debug=bool(getattr(args, "debug", False)),
                        log=lambda text: print(f"{label}{text}", flush=True))
    if not ranks.is_main:
        follow(ranks, info, settings)
        return 0
    return _search(args, settings, ranks)


def check_arguments(args) -> None:
    """Refuse option values no search can use, before the config or the space is read."""
    if args.trials < 1:
        raise TunelabError(f"--trials: got {args.trials}; must be >= 1 (the trials the study holds when done)")
    if args.workers < 1:
        raise TunelabError(f"--workers: got {args.workers}; must be >= 1")
    # NaN compares false with everything, so `timeout <= 0` alone would let it through as "never"
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise TunelabError(f"--timeout: got {args.timeout:g}; must be a finite number of seconds > 0 (leave it out "
                           "for no limit)")
    if args.startup_trials < 0 or args.warmup_evals < 0:
        raise TunelabError("--startup-trials and --warmup-evals must be >= 0")


def base_config(args):
    """(RunConfig, the same as plain data without output_dir, the objective's metric, minimise?) of CONFIG with
    its overrides; refuses a config that gives the trials nothing to be compared on."""
    from tunelab.cli.common import run_config_of
    from tunelab.errors import ConfigError
    from tunelab.tasks import task_for
    from tunelab.train.stopping import is_minimised

    cfg = run_config_of(args)
    task = task_for(cfg)
    problems = task.check_config(cfg)  # the task's own checks (e.g. data.augment.back_translation runs), as train's
    if problems:
        raise ConfigError(problems)
    metric = cfg.train.early_stopping.metric or task.job.default_metric
    if metric not in task.metrics:
        raise TunelabError(f"train.early_stopping.metric: {metric!r} is not a {task.name} validation metric; known: "
                           f"{', '.join(task.metrics)} (it is the metric the trials are compared on)")
    cfg.train.early_stopping.metric = metric
    if cfg.data.validation is None and not cfg.data.val_fraction:
        raise TunelabError("tune needs a validation split (trials are compared on validation "
                           f"{metric}): set data.validation to a file, or data.val_fraction > 0")
    base = json.loads(json.dumps(cfg.to_dict()))  # plain data: what the study stores and compares
    base.pop("output_dir")
    return cfg, base, metric, is_minimised(metric)


def _search(args, settings, ranks) -> int:
    """The main process: the folder, the study, the workers, the trials, the summary."""
    from tunelab.train.interrupt import EXIT_CODES, stop_on_signals
    from tunelab.tune.report import write_outputs
    from tunelab.tune.search import run_trials
    from tunelab.tune.study import lock_folder, resolve_storage, share_lock, tally

    info, log = settings.info, settings.log
    found = _checked_folder(args, info.run_dir)
    starting_over = args.overwrite and found is not None and args.worker is None
    marker = None if starting_over else found  # a search started over chooses its storage anew
    settings.storage = resolve_storage(args.storage, info.run_dir, args.workers, marker and marker.get("storage"))
    fd = lock_folder(info.run_dir, exclusive=starting_over)
    try:
        if starting_over:
            _start_over(args, info.run_dir, found, log)
            share_lock(fd)
        study = _open(args, info, marker, settings.storage)
        counts = tally(study.get_trials(deepcopy=False))
        log(_opening_line(info, settings.storage, counts, marker is not None, args.worker is not None))
        workers = _spawn_workers(args, info.run_dir) if args.workers > 1 and args.worker is None else []
        with stop_on_signals(lambda _text: log("stopping the search: no new trial starts")) as stop:
            stopped = run_trials(study, settings, ranks, stop)
            failed_workers = _wait(workers, stopped is not None or stop.asked, log)
        write_outputs(study, info)
        if args.worker is not None:  # its parent sums the search up
            log("no more trials to start" if stopped is None else f"stopped by {stopped}")
            return EXIT_CODES.get(stopped, 130) if stopped else 0
        return _closing(args, study, info, stopped, failed_workers, ranks, log, EXIT_CODES)
    finally:
        os.close(fd)


def _checked_folder(args, run_dir: Path) -> dict | None:
    from tunelab.tune.study import check_folder

    marker = check_folder(run_dir)
    if args.worker is not None and marker is None:
        raise TunelabError(f"--worker {args.worker}: {run_dir} holds no search to join (workers are started by "
                           "`tunelab tune --workers K`)")
    return marker


def _start_over(args, run_dir: Path, marker: dict, log) -> None:
    """--overwrite on a search folder: drop its study and its files. A study is deleted from a --storage only
    when it is the folder's own (tunelab-tune.json names that storage); a study of the new search's name that
    the folder never used may be anyone's, so it is refused rather than deleted or joined."""
    import optuna

    from tunelab.tune.study import clear_folder, parse_storage, search_name

    old_storage, old_name = marker.get("storage"), marker.get("study", search_name(run_dir))
    given = parse_storage(args.storage) if args.storage else None
    if given is not None and given.spec == old_storage:
        try:
            optuna.delete_study(study_name=old_name, storage=given.open())
        except KeyError:  # no such study there
            pass
    else:
        new_name = search_name(run_dir)
        if given is not None and new_name in optuna.get_all_study_names(given.open()):
            where = run_dir / old_storage if old_storage in ("study.db", "study.journal") else old_storage
            raise TunelabError(f"--overwrite --storage {given.spec}: that storage holds a study named {new_name!r}, "
                               f"which this folder's search did not use (it was stored in {where}); it may be "
                               "another search's, so it stays: choose another --output-dir, or delete that study "
                               "yourself (optuna delete-study)")
        if old_storage not in ("study.db", "study.journal"):
            log(f"note: the old study stays in {old_storage} (pass --storage with that URL and --overwrite "
                "to delete it too)")
    clear_folder(run_dir)


def _open(args, info, marker: dict | None, storage):
    """The study: opened, created or checked against this search's space and config. A new search's folder is
    marked first, so that a search stopped at any moment is recognised as one; the mark is taken back when the
    storage or the study cannot be opened, so that the folder is not tied to a storage that holds no study of
    it (every later command would be refused for it)."""
    from tunelab import __version__
    from tunelab.tune.study import MARKER, open_study, pruner, search_name, write_marker

    name = marker.get("study", search_name(info.run_dir)) if marker else search_name(info.run_dir)
    if marker is None:
        write_marker(info.run_dir, name, storage)
    recorded = {"space": info.space.spec(), "base_config": info.base, "metric": info.metric,
                "tunelab_version": __version__}
    try:
        study = open_study(storage.open(), name, info.minimise, recorded, info.run_dir)
    except Exception:  # not a Ctrl-C: the study may exist by then, and the mark is what finds it again
        if marker is None:
            (info.run_dir / MARKER).unlink(missing_ok=True)
        raise
    study.pruner = pruner(args.pruner, args.startup_trials, args.warmup_evals)
    return study


def _opening_line(info, storage, counts, continuing: bool, worker: bool) -> str:
    keys = ", ".join(p.key for p in info.space.params)
    direction = "lower is better" if info.minimise else "higher is better"
    if worker:
        return f"joined the search in {info.run_dir}: {counts.done} of {info.wanted} trials done"
    if counts.done >= info.wanted:
        return (f"{info.run_dir} already holds {counts.done} trials ({counts.words()}) of the {info.wanted} asked: "
                "nothing to run (a larger --trials searches further)")
    if continuing or counts.done or counts.running:
        return (f"going on with the search in {info.run_dir}: {counts.done} of {info.wanted} trials done "
                f"({counts.words()})" + (f", {counts.running} running" if counts.running else ""))
    return (f"search in {info.run_dir}: {info.wanted} trial{'s' if info.wanted > 1 else ''} over {keys}; "
            f"objective: validation {info.metric} ({direction}); study stored in {storage.spec}")


def _spawn_workers(args, run_dir: Path) -> list[subprocess.Popen]:
    """K-1 more processes of this command on the same study (they share this terminal and its Ctrl-C)."""
    argv = [sys.executable, "-m", "tunelab", "tune", args.config, *args.overrides, "--space", args.space,
            "--trials", str(args.trials), "--output-dir", str(run_dir), "--no-progress", "--pruner", args.pruner,
            "--startup-trials", str(args.startup_trials), "--warmup-evals", str(args.warmup_evals)]
    argv += ["--storage", args.storage] if args.storage else []
    argv += ["--timeout", str(args.timeout)] if args.timeout is not None else []
    argv += ["--debug"] if getattr(args, "debug", False) else []
    return [subprocess.Popen([*argv, "--worker", str(i)]) for i in range(1, args.workers)]


def _wait(workers: list[subprocess.Popen], stopping: bool, log) -> list[str]:
    """Wait for the workers (asking them to stop after their step when this process was stopped); how each
    that failed ended."""
    failed = []
    for i, proc in enumerate(workers, start=1):
        if stopping and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # a Ctrl-C of the terminal reached them already; a kill did not
        code = proc.wait()
        if code not in (0, 130, 143, -signal.SIGTERM, -signal.SIGINT):
            failed.append(f"worker {i} exited with code {code}")
    for line in failed:
        log(line)
    return failed


def _closing(args, study, info, stopped: str | None, failed_workers: list[str], ranks, log,
             exit_codes: dict) -> int:
    """The last lines: what the search holds, the best trial and where everything is; the exit code."""
    from tunelab.tune.report import best_row, trial_rows
    from tunelab.tune.search import best_so_far, params_text
    from tunelab.tune.study import tally

    trials = study.get_trials()
    counts = tally(trials)
    best = best_row(trial_rows(trials, info), info.minimise)
    if best is not None:
        log(f"best: trial {best['number']}, validation {info.metric} {best['value']:.4f} "
            f"({params_text(best['params'])}); config {info.run_dir / 'best.yaml'}, run "
            f"{info.run_dir / best['folder']}")
    log(f"report: {info.run_dir / 'report.html'}; every trial: {info.run_dir / 'trials.jsonl'}")
    if counts.done < info.wanted:
        why = f"stopped by {stopped}" if stopped else "stopped" if failed_workers else \
            f"{counts.running} running in other processes" if counts.running else "--timeout"
        log(f"{counts.done} of {info.wanted} trials done ({counts.words()}; {why}); the same command goes on "
            f"with the search:\n  {again(args, info.run_dir, ranks)}")
    else:
        log(f"search done: {counts.done} trials ({counts.words()}); {best_so_far(study, info)}")
    if stopped:
        return exit_codes.get(stopped, 130)
    if failed_workers:
        return 1
    return 0 if best is not None or counts.done < info.wanted else 1


def again(args, run_dir: Path, ranks) -> str:
    """The command that goes on with this search."""
    from tunelab.cli.tune import PRUNER, STARTUP_TRIALS, WARMUP_EVALS

    words = ["tune", args.config, *args.overrides, "--space", args.space, "--trials", str(args.trials),
             "--output-dir", str(run_dir)]
    words += ["--storage", args.storage] if args.storage else []
    words += ["--workers", str(args.workers)] if args.workers > 1 else []
    words += ["--timeout", f"{args.timeout:g}"] if args.timeout is not None else []
    for flag, value, default in (("--pruner", args.pruner, PRUNER), ("--startup-trials", args.startup_trials,
                                 STARTUP_TRIALS), ("--warmup-evals", args.warmup_evals, WARMUP_EVALS)):
        words += [flag, str(value)] if value != default else []
    if ranks.world > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world))
        return shlex.join(["torchrun", "--nproc-per-node", str(local), "-m", "tunelab", *words])
    return shlex.join(["tunelab", *words])
