"""The trial loop of one `tunelab tune` process: ask, train, record, write the outputs, until the study holds
--trials trials, --timeout passed or Ctrl-C / SIGTERM asked to stop.

Under torchrun the loop runs on rank 0 (the only process that talks to the study); the other ranks follow it
(`follow`): they receive each trial's values, train the same config with rank 0 and stop when it says so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from tunelab.tune.ranks import Verdicts
from tunelab.tune.report import SearchInfo, write_outputs
from tunelab.tune.study import Storage, heartbeat, next_trial, replace_interrupted, trial_folder
from tunelab.tune.trial import Outcome, record, run_trial


@dataclass
class Settings:
    """One process's part in the search."""

    info: SearchInfo
    storage: Storage | None  # set once the search folder is checked
    seed: int
    timeout_s: float | None
    show_progress: bool
    debug: bool
    log: Callable[[str], None]
    train_log: Callable[[str], None] = print


def params_text(values: dict) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in values.items())


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_trials(study, settings: Settings, ranks, stop) -> str | None:
    """Run trials until there is nothing left to start; the signal's name when one stopped the search."""
    info, log = settings.info, settings.log
    started = time.monotonic()
    while not stop.asked:
        if settings.timeout_s is not None and time.monotonic() - started >= settings.timeout_s:
            log(f"--timeout {settings.timeout_s:g}s passed: this process starts no more trials")
            break
        trial = next_trial(study, info.space.distributions(), info.wanted, settings.seed, settings.storage,
                           info.run_dir, log)
        if trial is None:
            break
        values = info.space.values(trial.params)
        folder = trial_folder(info.run_dir, trial.number)
        log(f"trial {trial.number} started: {params_text(values)}  ({folder})")
        assignment = ranks.share({"number": trial.number, "values": values})
        with heartbeat(study, trial, settings.storage), ranks.trial_store(assignment):
            outcome = run_trial(info.base, values, folder, info.metric, trial, show_progress=settings.show_progress,
                                log=settings.train_log, debug=settings.debug, share=Verdicts(ranks, assignment))
        if outcome.state == "interrupted":  # every rank of a torchrun stopped in this run too
            replace_interrupted(study, trial.number, info.run_dir, log, f"stopped by {outcome.signal}")
            write_outputs(study, info)
            return outcome.signal
        record(study, trial, outcome)
        write_outputs(study, info)
        log(end_line(trial.number, outcome, study, info))
    ranks.share(None)  # the other ranks of a torchrun stop too
    return stop.signal_name if stop.asked else None


def follow(ranks, info: SearchInfo, settings: Settings) -> None:
    """A rank other than 0 under torchrun: train each trial rank 0 sends, until it sends None. A Ctrl-C between
    trials is rank 0's to act on (it then sends None); during a trial every rank's run stops at the same step."""
    from tunelab.train.interrupt import stop_on_signals

    with stop_on_signals(lambda _text: None):
        _follow(ranks, info, settings)


def _follow(ranks, info: SearchInfo, settings: Settings) -> None:
    while True:
        assignment = ranks.share(None)
        if assignment is None:
            return
        folder = trial_folder(info.run_dir, assignment["number"])
        with ranks.trial_store(assignment):
            outcome = run_trial(info.base, assignment["values"], folder, info.metric, None, show_progress=False,
                                log=settings.train_log, debug=settings.debug, share=Verdicts(ranks, assignment))
        if outcome.state == "interrupted":  # every rank was asked to stop in the same step
            return


def end_line(number: int, outcome: Outcome, study, info: SearchInfo) -> str:
    """`trial 3 complete after 85s: f1_macro 0.9412; best 0.9521 (trial 1)`."""
    if outcome.state == "failed":
        what = outcome.message
    else:  # pruned ones say where, and stand at their last reported value
        value = f"{info.metric} {outcome.value:.4f}" if outcome.value is not None else f"no {info.metric} reported"
        what = f"{outcome.message}, {value}" if outcome.message else value
    return f"trial {number} {outcome.state} after {outcome.seconds:.0f}s: {what}; {best_so_far(study, info)}"


def best_so_far(study, info: SearchInfo) -> str:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "no complete trial yet"
    best = min(complete, key=lambda t: (t.value if info.minimise else -t.value, t.number))
    return f"best {best.value:.4f} (trial {best.number})"
