"""`tunelab tune` under torchrun (2 CPU processes, gloo): rank 0 alone talks to the study and sends each trial's
values to rank 1, both ranks train the very same config, a pruned trial stops both at once, and one launch runs
several trials, each an ordinary distributed run with a process group of its own."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .tune_helpers import ENV, queued_search, study_of, tune_args

HERE = Path(__file__).resolve().parent


def test_every_rank_trains_the_trial_rank_0_asked_for(helpers, tiny_bert, data_dir, tmp_path):
    # the second queued trial is behind the first at its first evaluation (validation loss 1.19 against 1.10 with
    # two processes of batch 8): pruned there, on both ranks
    config, storage, queued = queued_search(helpers, tiny_bert, data_dir, tmp_path)
    run_dir, noted = tmp_path / "search", tmp_path / "noted"
    noted.mkdir()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              str(HERE / "torchrun_tune.py"), str(noted), *tune_args(config, run_dir, 2, *queued)]
    proc = subprocess.Popen(launch, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a hang: take the launcher and both ranks down, not only the launcher
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the torchrun search did not finish in 240 s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    ranks = [[json.loads(line) for line in (noted / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same trials, the same whole configs, in the same order
    good, bad = study_of(run_dir, storage).trials
    assert [n["trial"] for n in ranks[0]] == ["000", "001"]
    assert [n["config"]["train"]["lr"] for n in ranks[0]] == [good.params["train.lr"], bad.params["train.lr"]]
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED") and list(bad.intermediate_values) == [1]
    first = run_dir / "trials" / "000"
    assert good.value == json.loads((first / "eval.json").read_text())["best_validation"]["loss"]
    assert yaml.safe_load((first / "config.yaml").read_text())["train"]["lr"] == 0.01
    assert "in 2 processes (ddp)" in out  # each trial trained as one distributed run
    assert json.loads((run_dir / "trials" / "001" / "tunelab-run.json").read_text())["status"] == "pruned"
