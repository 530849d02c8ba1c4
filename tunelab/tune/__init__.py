"""Hyper-parameter search (`tunelab tune`) on Optuna: TPE sampling seeded by train.seed, median pruning at each
evaluation, a study stored in RUN_DIR (SQLite, or a journal file for several workers) or a shared database, so
the same command goes on with an interrupted search and several processes or machines can work on one.

- space.py: the space file (one entry per config key), checked against the config schema before any trial.
- study.py: where the study is stored, the search folder, asking for trials (and retrying interrupted ones).
- trial.py: one trial: its config, its run through tunelab.run.train, the pruner's hook, its outcome.
- search.py: one process's trial loop; under torchrun the other ranks follow rank 0 (ranks.py).
- report.py: best.yaml, trials.jsonl, report.html.
- cli.py: run_tune(args), what `tunelab tune` calls.
"""
