"""One trial of `tunelab tune`: its config, its run (tunelab.run.train, in this process), what the pruner is told
at each evaluation, and the outcome the study records.

A trial's config is the search's base config with the sampled values set and output_dir RUN_DIR/trials/NNN; the
config's own checks decide whether it can run, so a combination they refuse fails that trial with their message.
Every validation result is reported to Optuna with the evaluation's number as its step (the k-th evaluation of
every trial is compared with the k-th of the others, whatever their batch sizes), and the pruner may stop the run
there (tunelab.train.loop.StopRun): the trial is PRUNED, its folder keeps config.yaml and metrics.jsonl with its
marker saying "pruned". The trial's value is its best validation value (RUN_DIR/eval.json), as the run itself
picks its best checkpoint.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, TunelabError


@dataclass
class Outcome:
    state: str
    """complete | pruned | failed | interrupted (Ctrl-C / SIGTERM: queued again, the search stops)."""
    value: float | None = None
    message: str = ""
    evaluations: int = 0
    seconds: float = 0.0
    signal: str | None = None


class Reporter:
    """The `on_evaluation` hook of one trial's run. In the process that owns the trial (`trial` given) it reports
    the metric and asks the pruner; `share(k, verdict)` gives every process of a torchrun the owner's verdict at
    evaluation k (tunelab.tune.ranks.Verdicts), so that all of them stop together."""

    def __init__(self, trial, metric: str, share=None):
        self.trial, self.metric = trial, metric
        self.share = share or (lambda _k, verdict: verdict)
        self.evaluations = 0
        self.last: float | None = None

    def __call__(self, step: int, metrics: dict) -> str | None:
        self.evaluations += 1
        value, verdict = metrics.get(self.metric), None
        # an undefined metric (ROC-AUC without a class) is not reported: there is nothing to compare
        if self.trial is not None and isinstance(value, (int, float)):
            self.last = float(value)
            self.trial.report(self.last, self.evaluations)
            verdict = "pruned" if self.trial.should_prune() else None
        return self.share(self.evaluations, verdict)


def trial_config(base: dict, values: dict[str, Any], folder: Path):
    """The RunConfig of a trial: `base` (a resolved config as a dict) with `values` set at their keys."""
    from tunelab.config import config_from_dict
    from tunelab.tune.space import set_key

    data = copy.deepcopy(base)
    for key, value in values.items():
        set_key(data, key, value)
    data["output_dir"] = str(folder)
    return config_from_dict(data, source=f"trial {folder.name}")


def run_trial(base: dict, values: dict, folder: Path, metric: str, trial=None, *, show_progress: bool = True,
              log=print, debug: bool = False, share=None) -> Outcome:
    """Train one trial's config in `folder`; what became of it. `trial`: the Optuna trial (None in processes
    that do not own it); `share`: how the owner's pruning verdicts reach every process (see Reporter)."""
    from tunelab.run import train
    from tunelab.train.interrupt import Interrupted
    from tunelab.train.loop import StopRun

    t0 = time.monotonic()
    reporter = Reporter(trial, metric, share)

    def outcome(state: str, **kwargs) -> Outcome:
        return Outcome(state, evaluations=reporter.evaluations, seconds=time.monotonic() - t0, **kwargs)

    def run_log(text: str) -> None:
        # an interrupted trial is queued again and its run removed (tune.study.replace_interrupted): of the run's
        # "SIGINT: stopped after step N; checkpoint PATH\nresume with: ..." keep what happened, not what is gone
        if "\nresume with: " in text:
            text = text.split("; checkpoint ")[0]
        log(text)

    try:
        cfg = trial_config(base, values, folder)
        train(cfg, show_progress=show_progress, log=run_log, on_evaluation=reporter)
    except StopRun as e:
        return outcome("pruned", value=reporter.last, message=f"at evaluation {reporter.evaluations} (step {e.step})")
    except Interrupted as e:
        return outcome("interrupted", signal=e.signal_name)
    except KeyboardInterrupt:  # a second Ctrl-C
        return outcome("interrupted", signal="SIGINT")
    except ConfigError as e:
        return outcome("failed", message=f"the config refuses these values: {'; '.join(e.problems)}")
    except TunelabError as e:
        return outcome("failed", message=str(e))
    except Exception as e:  # noqa: BLE001 - a trial that breaks (out of memory, a bug) must not end the search
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return outcome("failed", message=f"{type(e).__name__}: {first} (--debug shows the traceback)")
    if trial is None:
        return outcome("complete")
    value = best_value(folder, metric)
    if value is None:
        return outcome("failed", message=f"no validation {metric} was computed (an empty validation split, or "
                                         "the metric was undefined at every evaluation)")
    return outcome("complete", value=value)


def best_value(run_dir: Path, metric: str) -> float | None:
    """The best validation value of `metric` of a finished run (eval.json), or None without one."""
    try:
        summary = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = (summary.get("best_validation") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def record(study, trial, outcome: Outcome) -> None:
    """Tell the study how the trial ended (an interrupted one is replaced by the caller)."""
    from optuna.trial import TrialState

    from tunelab.tune.study import ERROR

    if outcome.state == "complete":
        study.tell(trial, outcome.value)
    elif outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr(ERROR, outcome.message[:2000])
        study.tell(trial, state=TrialState.FAIL)
