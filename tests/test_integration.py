"""The real packaged model on the real packaged data: a few steps of MiniLM on BBC News."""
from __future__ import annotations

import json
import math

import pytest


@pytest.mark.integration
def test_minilm_trains_a_few_steps_on_bbc_news(tmp_path, helpers):
    from tunelab.config import config_from_dict

    cfg = config_from_dict({
        "model": {"name": "builtin:minilm-l6", "max_length": 32},
        "data": {"train": "builtin:bbc-news", "limit": 40, "val_fraction": 0.02, "test_fraction": 0.02},
        "method": {"name": "full"},
        "train": {"max_steps": 3, "batch_size": 8, "log_every": 1, "seed": 0, "device": "cpu"},
        "output_dir": str(tmp_path / "run")})
    run_dir = helpers.train_quietly(cfg)

    train_losses = [r["loss"] for r in helpers.read_metrics(run_dir, "train")]
    assert len(train_losses) == 3 and all(math.isfinite(x) for x in train_losses)
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "report.html", "model/model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert test["labels"] == ["business", "entertainment", "politics", "sports", "tech"]
    assert test["n"] == sum(map(sum, test["confusion_matrix"])) > 0
