"""`tunelab tune`: a hyper-parameter search over a run config (tunelab.tune). Thin: the arguments, handed over to
tunelab.tune.cli.run_tune."""
from __future__ import annotations

import argparse

PRUNER, STARTUP_TRIALS, WARMUP_EVALS = "median", 3, 1

EPILOG = """examples:
  tunelab tune examples/bbc-news.yaml --space examples/spaces/bbc-news.yaml --trials 12 --output-dir runs/bbc-tune
  tunelab tune examples/bbc-news.yaml --space examples/spaces/bbc-news.yaml --trials 12 --output-dir runs/bbc-tune
      (the same command again goes on with an interrupted search)
  tunelab tune examples/bbc-news.yaml --space space.yaml --trials 40 --workers 2 --output-dir runs/t
  torchrun --nproc-per-node 2 -m tunelab tune CONFIG --space space.yaml --trials 20 --output-dir runs/t
  tunelab tune CONFIG --space space.yaml --trials 40 --storage postgresql://host/db --output-dir runs/t
each trial is a run in RUN_DIR/trials/NNN; the best config is RUN_DIR/best.yaml (for `tunelab train`), the
report RUN_DIR/report.html"""


def cmd_tune(args) -> int:
    from tunelab.tune.cli import run_tune

    return run_tune(args)


def add_commands(sub) -> None:
    """Register `tune` on the main parser's subparsers."""
    p = sub.add_parser("tune", help="search hyper-parameters (Optuna: TPE sampling, pruning, resumable)",
                       description="Search a space of config values: each trial trains a run; trials whose "
                                   "validation metric falls behind are stopped early. The study lives in "
                                   "RUN_DIR/study.db (SQLite), or RUN_DIR/study.journal (Optuna's journal file) "
                                   "with --workers > 1, unless --storage names another, so the same command "
                                   "continues an interrupted search.",
                       epilog=EPILOG)
    p.add_argument("config", help="a YAML run config (the trials change the keys named in --space)")
    p.add_argument("overrides", nargs="*", help="config overrides for every trial, e.g. train.epochs=2")
    p.add_argument("--space", required=True, help="YAML file: config key -> {type: float|int|categorical, ...}")
    p.add_argument("--trials", type=int, required=True, help="trials the study should hold when done (finished, "
                                                             "pruned or failed)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting new trials after S seconds")
    p.add_argument("--output-dir", default=None, help="RUN_DIR of the search (default: the config's output_dir)")
    p.add_argument("--storage", default=None, help="a database URL (sqlite:///..., postgresql://...) or "
                                                   "journal:PATH (Optuna's journal file) shared by many workers")
    p.add_argument("--workers", type=int, default=1, help="local processes running trials at once (default 1)")
    p.add_argument("--overwrite", action="store_true", help="start a new search in place of RUN_DIR's")
    p.add_argument("--pruner", choices=("median", "none"), default=PRUNER,
                   help="median (default): stop a trial whose best value so far is worse than the median of the "
                        "complete trials at the same evaluation; none: every trial trains to its end")
    p.add_argument("--startup-trials", type=int, default=STARTUP_TRIALS,
                   help=f"complete trials before any trial is pruned (default {STARTUP_TRIALS})")
    p.add_argument("--warmup-evals", type=int, default=WARMUP_EVALS,
                   help=f"evaluations every trial gets before it may be pruned (default {WARMUP_EVALS}: the "
                        "first evaluation is noisy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars in the trials")
    # a process started by --workers: joins the search of its parent (never starts it over, starts no workers)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_tune)
