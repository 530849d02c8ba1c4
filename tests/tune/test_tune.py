"""`tunelab tune` end to end on the tiny BERT: a 4-trial search, its outputs (best.yaml trains to the best
trial's value again), a search killed with SIGKILL that the same command finishes without repeating a finished
trial, a trial the pruner stops at its first evaluation, starting over, and two workers on one journal."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main

from .tune_helpers import queued_search, study_of, tune_args, tunelab_process, write_search_config


def counted(study) -> dict:
    from tunelab.tune.study import tally

    counts = tally(study.get_trials())
    return {"complete": counts.complete, "pruned": counts.pruned, "failed": counts.failed,
            "running": counts.running, "waiting": counts.waiting}


@pytest.fixture(scope="module")
def search(helpers, tiny_bert, data_dir, tmp_path_factory) -> dict:
    """A finished 4-trial search (default pruner), and what it printed."""
    folder = tmp_path_factory.mktemp("search")
    config = write_search_config(helpers, tiny_bert, data_dir, folder)
    run_dir = folder / "search"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(tune_args(config, run_dir, 4))
    return {"config": config, "run_dir": run_dir, "code": code, "out": out.getvalue()}


def test_a_search_holds_its_trials_each_an_ordinary_run(search):
    run_dir = search["run_dir"]
    assert search["code"] == 0
    study = study_of(run_dir)
    assert counted(study)["running"] == counted(study)["waiting"] == 0
    assert len(study.trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert sorted(p.name for p in (run_dir / "trials").iterdir()) == ["000", "001", "002", "003"]
    rows = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    assert [r["number"] for r in rows] == [0, 1, 2, 3]
    for trial, row in zip(study.trials, rows):
        folder = run_dir / "trials" / f"{trial.number:03d}"
        config = yaml.safe_load((folder / "config.yaml").read_text())
        # the trial trained the values the study gave it
        assert config["train"]["lr"] == trial.params["train.lr"] == row["params"]["train.lr"]
        assert config["method"]["name"] == trial.params["method.name"] == row["params"]["method.name"]
        assert 1e-3 <= trial.params["train.lr"] <= 3e-2 and trial.params["method.name"] in ("full", "head")
        if trial.state.name == "COMPLETE":  # its value: the run's best validation f1_macro
            assert trial.value == json.loads((folder / "eval.json").read_text())["best_validation"]["f1_macro"]
            assert list(trial.intermediate_values) == [1, 2, 3, 4]  # one report per evaluation
    assert re.search(r"^trial 0 started: train\.lr=\S+ method\.name=\w+ ", search["out"], re.M)
    assert re.search(r"^trial 0 complete after \d+s: f1_macro \d\.\d{4}; best \d\.\d{4} \(trial 0\)$",
                     search["out"], re.M)
    assert "search done: 4 trials (" in search["out"]


def test_best_yaml_loads_and_trains_to_the_best_trials_value(search, helpers, tmp_path):
    from tunelab.config import load_config

    run_dir = search["run_dir"]
    best = max((t for t in study_of(run_dir).trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    cfg = load_config(run_dir / "best.yaml")
    assert cfg.output_dir == str(run_dir.parent / "search-best")
    trial_cfg = load_config(run_dir / "trials" / f"{best.number:03d}" / "config.yaml")
    trial_cfg.output_dir = cfg.output_dir
    assert cfg == trial_cfg  # the best trial's whole config
    cfg.output_dir = str(tmp_path / "again")
    again = helpers.train_quietly(cfg)
    assert json.loads((again / "eval.json").read_text())["best_validation"]["f1_macro"] == best.value


def test_the_report_has_the_table_the_history_and_the_importances(search):
    from tunelab.config import load_config
    from tunelab.tune.report import SearchInfo, importances
    from tunelab.tune.space import load_space

    page = (search["run_dir"] / "report.html").read_text()
    table = page.split("<h2>Trials</h2>")[1].split("</table>")[0]
    assert table.count("<tr") == 5  # a header and 4 trials
    assert "<h2>Optimisation history</h2><img src=\"data:image/png;base64," in page
    assert "<h2>Parameter importances</h2><p>fANOVA over the " in page
    assert page.split("<h2>Parameter importances</h2>")[1].split("</p>")[1].startswith('<img src="data:image/png;')
    base = load_config(search["config"]).to_dict()
    info = SearchInfo(search["run_dir"], load_space(search["config"].parent / "space.yaml", base), base,
                      "f1_macro", False, 4)
    weights, _ = importances(study_of(search["run_dir"]), info)
    assert set(weights) == {"train.lr", "method.name"} and abs(sum(weights.values()) - 1) < 1e-9


def test_the_same_command_on_a_finished_search_runs_nothing(search, capsys):
    run_dir = search["run_dir"]
    before = (run_dir / "trials.jsonl").read_text()
    assert main(tune_args(search["config"], run_dir, 4)) == 0
    out = capsys.readouterr().out
    assert f"{run_dir} already holds 4 trials (" in out and "nothing to run" in out
    assert len(study_of(run_dir).trials) == 4 and (run_dir / "trials.jsonl").read_text() == before


def test_another_space_or_storage_for_a_search_is_refused(search, tmp_path, capsys):
    run_dir, config = search["run_dir"], search["config"]
    other = tmp_path / "space.yaml"
    other.write_text("train.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n")
    args = tune_args(config, run_dir, 4)
    args[args.index("--space") + 1] = str(other)
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {run_dir}: this search was started with another search space (--space): train.lr.high: 0.03 -> "
        "0.01; method.name left out; run the command it was started with to go on with it, start over with "
        "--overwrite, or choose another --output-dir\n")
    assert main(tune_args(config, run_dir, 4, "--storage", f"journal:{tmp_path / 'j'}")) == 2
    assert capsys.readouterr().err == (
        f"error: --storage journal:{tmp_path / 'j'}: {run_dir} holds a search stored in {run_dir / 'study.db'}; "
        "leave out --storage (or pass that one) to go on with it, or start over with --overwrite\n")


def test_overwrite_starts_a_search_over_but_never_replaces_a_run(search, tmp_path, capsys):
    copy = Path(shutil.copytree(search["run_dir"], tmp_path / "search"))
    assert main(tune_args(search["config"], copy, 1, "--overwrite")) == 0
    assert len(study_of(copy).trials) == 1 and [p.name for p in (copy / "trials").iterdir()] == ["000"]
    capsys.readouterr()
    a_run = copy / "trials" / "000"
    assert main(tune_args(search["config"], a_run, 1, "--overwrite")) == 2
    assert capsys.readouterr().err == (f"error: --output-dir {a_run} is not empty and is a training run (a search "
                                       "folder holds tunelab-tune.json); choose another --output-dir\n")


def test_a_killed_search_goes_on_without_repeating_finished_trials(helpers, tiny_bert, data_dir, tmp_path, capsys):
    config = write_search_config(helpers, tiny_bert, data_dir, tmp_path)
    run_dir = tmp_path / "search"
    proc = tunelab_process(tune_args(config, run_dir, 4), start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "trials" / "002").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # trial 2 is asked, marked and training once its folder exists
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, out
    first = {t.number: t for t in study_of(run_dir).trials}
    assert [(n, t.state.name) for n, t in first.items()] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "RUNNING")]
    finished = {n: (run_dir / "trials" / f"{n:03d}" / "eval.json").stat().st_mtime_ns for n in (0, 1)}

    assert main(tune_args(config, run_dir, 4)) == 0
    out = capsys.readouterr().out
    assert "going on with the search in" in out and ": 2 of 4 trials done (2 complete, 0 pruned, 0 failed), " \
                                                    "1 running" in out
    assert "trial 2 did not finish (its process is gone): queued again with the same parameters" in out
    study = study_of(run_dir)
    trials = {t.number: t for t in study.trials}
    for n in (0, 1):  # finished trials: not run again, their runs untouched
        assert trials[n].value == first[n].value and trials[n].params == first[n].params
        assert (run_dir / "trials" / f"{n:03d}" / "eval.json").stat().st_mtime_ns == finished[n]
        assert f"trial {n} started" not in out
    assert trials[2].state.name == "FAIL" and not (run_dir / "trials" / "002").exists()
    assert trials[3].system_attrs["failed_trial"] == 2 and trials[3].params == first[2].params
    assert trials[3].state.name in ("COMPLETE", "PRUNED")
    counts = counted(study)  # --trials 4: four trials that ended on their own; the interrupted one is replaced
    assert counts["complete"] + counts["pruned"] == 4 and counts["failed"] == counts["running"] == 0
    assert len(trials) == 5
    rows = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    assert rows[2]["interrupted"] is True and rows[2]["retried_as"] == 3 and rows[3]["retry_of"] == 2


def test_an_interrupted_trials_log_names_no_checkpoint_or_resume(helpers, tiny_bert, data_dir, tmp_path):
    """The search removes an interrupted trial's run and queues the trial again: the run's own line naming its
    checkpoint and `tunelab resume` would point at nothing."""
    from tunelab.config import load_config
    from tunelab.tune.trial import run_trial

    base = json.loads(json.dumps(load_config(write_search_config(helpers, tiny_bert, data_dir, tmp_path)).to_dict()))
    base.pop("output_dir")

    def ctrl_c_at_first_evaluation(k: int, verdict):
        if k == 1:  # as a Ctrl-C in the terminal: the run stops after this step with a checkpoint
            os.kill(os.getpid(), signal.SIGINT)
        return verdict

    folder, lines = tmp_path / "000", []
    outcome = run_trial(base, {}, folder, "f1_macro", None, show_progress=False, log=lines.append,
                        share=ctrl_c_at_first_evaluation)
    assert (outcome.state, outcome.signal) == ("interrupted", "SIGINT")
    assert (folder / "checkpoints").is_dir()  # the run wrote one, which the search then removes
    text = "\n".join(lines)
    assert re.search(r"^SIGINT: stopped after step \d+$", text, re.M)
    assert str(folder / "checkpoints") not in text and "resume" not in text


def test_a_trial_behind_the_median_is_pruned_at_its_first_evaluation(helpers, tiny_bert, data_dir, tmp_path,
                                                                   capsys):
    # lr 0.01 learns (validation loss 1.108 at its first evaluation, 0.609 at the end); lr 0.03 starts worse
    # (1.364 at its first evaluation)
    config, storage, queued = queued_search(helpers, tiny_bert, data_dir, tmp_path)
    run_dir = tmp_path / "search"
    assert main(tune_args(config, run_dir, 2, *queued)) == 0
    out = capsys.readouterr().out
    good, bad = study_of(run_dir, storage).trials
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    assert list(bad.intermediate_values) == [1] and bad.intermediate_values[1] > good.intermediate_values[1]
    assert re.search(r"^trial 1 pruned after \d+s: at evaluation 1 \(step 8\), loss 1\.3637; best 0\.6086 "
                     r"\(trial 0\)$", out, re.M)
    pruned, full = run_dir / "trials" / "001", run_dir / "trials" / "000"
    assert json.loads((pruned / "tunelab-run.json").read_text())["status"] == "pruned"
    assert sorted(p.name for p in pruned.iterdir()) == ["config.yaml", "metrics.jsonl", "tensorboard",
                                                        "tunelab-run.json"]
    steps = [r["step"] for r in helpers.read_metrics(pruned)]
    assert max(steps) == 8 and max(r["step"] for r in helpers.read_metrics(full)) == 32


def test_two_workers_share_one_journal_and_never_run_a_trial_twice(helpers, tiny_bert, data_dir, tmp_path, capfd,
                                                                  monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = write_search_config(helpers, tiny_bert, data_dir, tmp_path)
    run_dir = tmp_path / "search"
    assert main(tune_args(config, run_dir, 6, "--workers", "2")) == 0
    out = capfd.readouterr().out
    assert "[worker 1] joined the search in" in out and "[worker 0] search done: 6 trials (" in out
    assert json.loads((run_dir / "tunelab-tune.json").read_text())["storage"] == "study.journal"
    assert not (run_dir / "study.db").exists()
    study = _journal_study(run_dir)
    assert [t.number for t in study.trials] == list(range(6))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert sorted(p.name for p in (run_dir / "trials").iterdir()) == [f"{n:03d}" for n in range(6)]
    for t in study.trials:  # each trial started once, by one process, in its own folder
        assert out.count(f"] trial {t.number} started:") == 1
        assert yaml.safe_load((run_dir / "trials" / f"{t.number:03d}" / "config.yaml").read_text())["train"]["lr"] \
            == t.params["train.lr"]


def _journal_study(run_dir: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name=run_dir.name, storage=storage)
