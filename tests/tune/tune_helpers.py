"""What the tune tests share: a search config on the tiny BERT, the command line, reading a search's study."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The child processes do not see conftest.py's pins: one thread each (two processes share two cores), fp32 in
# the configs, no network.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

# 32 steps of 8 records (an epoch is 8 steps of the 63 training records), evaluated every 8: four evaluations
# per trial; the tiny model learns within them at lr 3e-3 .. 1e-2 (f1_macro 0.17 -> 0.56 .. 1.0)
SEARCH = {"train.max_steps": 32, "train.eval_every": 8, "train.log_every": 8, "train.precision": "fp32"}
SPACE = """\
train.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
method.name: {type: categorical, choices: [full, head]}
"""


def write_search_config(helpers, tiny_bert: Path, data_dir: Path, folder: Path, **overrides) -> Path:
    """config.yaml for the tiny BERT search (output_dir: folder/run) and space.yaml beside it."""
    from tunelab.config import dump_config

    folder.mkdir(parents=True, exist_ok=True)
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", folder / "run", {**SEARCH, **overrides})
    (folder / "space.yaml").write_text(SPACE, encoding="utf-8")
    path = folder / "config.yaml"
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path


def queued_search(helpers, tiny_bert: Path, data_dir: Path, folder: Path) -> tuple[Path, str, list[str]]:
    """A search on validation loss over train.lr whose study is made beforehand in a shared database (as a team
    would), with two trials queued: lr 0.01, which learns, then lr 0.03, which starts worse; with one complete
    trial enough to prune and no warm-up, the second is pruned at its first evaluation.
    (config, storage URL, the options that say so)."""
    import optuna

    config = write_search_config(helpers, tiny_bert, data_dir, folder, **{"train.early_stopping.metric": "loss"})
    (folder / "space.yaml").write_text("train.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n")
    storage = f"sqlite:///{folder / 'shared.db'}"
    made = optuna.create_study(study_name="search", storage=storage, direction="minimize")
    made.enqueue_trial({"train.lr": 0.01})
    made.enqueue_trial({"train.lr": 0.03})
    return config, storage, ["--storage", storage, "--startup-trials", "1", "--warmup-evals", "0"]


def tune_args(config: Path, run_dir: Path, trials: int, *more: str) -> list[str]:
    return ["tune", str(config), "--space", str(config.parent / "space.yaml"), "--trials", str(trials),
            "--output-dir", str(run_dir), "--no-progress", *more]


def tunelab_process(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def study_of(run_dir: Path, storage: str | None = None):
    """The study of a search folder (its default SQLite storage unless `storage`)."""
    import optuna

    return optuna.load_study(study_name=run_dir.name, storage=storage or f"sqlite:///{run_dir / 'study.db'}")
