"""`tunelab tune ARGS` in one process of a torchrun launch, noting every trial config this rank trains.

Usage: python -m torch.distributed.run ... tests/tune/torchrun_tune.py OUT_DIR tune CONFIG ...
Each rank appends {"trial": folder name, "config": the whole config} to OUT_DIR/rank-R.jsonl before it trains,
so the test can check that every rank trained the very config rank 0's study holds.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import tunelab.run
from tunelab.cli import main

OUT = Path(sys.argv[1])
_train = tunelab.run.train


def noting_train(cfg, **kwargs):
    with open(OUT / f"rank-{os.environ['RANK']}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"trial": Path(cfg.output_dir).name, "config": cfg.to_dict()}) + "\n")
    return _train(cfg, **kwargs)


tunelab.run.train = noting_train  # tunelab.tune.trial looks it up when each trial starts
sys.exit(main(sys.argv[2:]))
