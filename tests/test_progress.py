"""What a person sees while tunelab works: a bar on a terminal, plain lines in a log, losses with the bar off.

pytest's captured standard error is not a terminal, so these runs see what CI, `> log.txt` and nohup see.
"""
from __future__ import annotations

import io
import re
import time
import types

import pytest
import torch

from tunelab.train import logging as tl_logging
from tunelab.train.logging import PlainProgress, RunLogger, progress, set_progress


@pytest.fixture
def every_line(monkeypatch):
    """Plain mode prints at every 10% milestone and a last line however fast the work (no rate limit)."""
    monkeypatch.setattr(tl_logging, "PLAIN_MIN_S", 0.0)
    monkeypatch.setattr(tl_logging, "PLAIN_MAX_S", 0.0)
    monkeypatch.setattr(tl_logging, "_enabled", True)  # restored afterwards, whatever set_progress did


@pytest.fixture
def restore_switch(monkeypatch):
    monkeypatch.setattr(tl_logging, "_enabled", True)


@pytest.fixture
def no_library_bars():
    """transformers' own bars (loading, saving) off, as the `tunelab` command turns them off."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    yield
    if was:
        hf_logging.enable_progress_bar()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train_lines(text: str) -> list[str]:
    return re.findall(r"^step \d+/\d+: loss .*$", text, flags=re.M)


def test_no_progress_still_prints_the_training_losses(make_config, helpers, capsys, restore_switch, no_library_bars):
    from tunelab.run import train

    train(make_config({"train.max_steps": 3, "train.log_every": 1}), show_progress=False, log=helpers.quiet)
    out, err = capsys.readouterr()
    lines = _train_lines(out)
    assert [line.split(":")[0] for line in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert re.fullmatch(r"step 1/3: loss \d+\.\d{4}, lr \d\.\d\de[-+]\d\d, \d+ tokens/s, grad_norm \d+\.\d{3}",
                        lines[0])
    assert err == ""  # progress off: no bar, no plain progress lines, no evaluation progress


def test_without_a_terminal_progress_is_plain_lines(make_config, helpers, capsys, every_line, no_library_bars):
    from tunelab.run import train

    train(make_config({"train.max_steps": 3, "train.log_every": 1}), show_progress=True, log=helpers.quiet)
    out, err = capsys.readouterr()
    assert "\r" not in err and "\r" not in out  # tqdm frames would fill a log file
    assert len(_train_lines(out)) == 3  # the bar's loss postfix is printed as lines instead
    assert "train: 1/3 steps (33%)" in err and "train: 3/3 steps in " in err
    assert re.search(r"^classify: \d+/\d+ batches", err, flags=re.M)  # validation and test show progress too


def test_on_a_terminal_progress_is_a_tqdm_bar(monkeypatch, restore_switch):
    from tqdm import tqdm

    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    bar = progress(range(3), desc="work", unit="batches")
    assert isinstance(bar, tqdm) and not bar.disable
    assert list(bar) == [0, 1, 2]
    assert "work:" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_a_terminal_without_a_width_gets_plain_lines(monkeypatch, restore_switch):
    """A pseudo-terminal nobody sized (`script`, containers run with -t) is 0 columns wide: tqdm draws nothing."""
    import os

    leader, follower = os.openpty()  # a fresh pseudo-terminal: 0 x 0
    with open(follower, "w") as stream:
        monkeypatch.setattr("sys.stderr", stream)
        assert stream.isatty() and isinstance(progress(range(2), desc="work"), PlainProgress)
    os.close(leader)


def test_switched_off_progress_is_silent(capsys, restore_switch):
    set_progress(False)
    assert list(progress(range(3), desc="work")) == [0, 1, 2]
    shown = progress(total=5, desc="work")
    shown.update(5)
    shown.close()
    assert capsys.readouterr() == ("", "")


def test_plain_lines_come_at_a_modest_rate(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(tl_logging, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(tl_logging, "PLAIN_TICK_S", 3600.0)  # the watcher stays out of this fake clock

    def run(items: int, seconds_each: float) -> list[str]:
        for _ in PlainProgress(range(items), desc="work", unit="batches"):
            now[0] += seconds_each
        return capsys.readouterr().err.splitlines()

    assert run(1000, 0.001) == []  # a one-second step says nothing
    lines = run(100, 1.0)  # 100 s: a line per 10% (10 s apart) up to 90%, then the last one
    assert len(lines) == 10 and lines[0] == "work: 10/100 batches (10%), 10s, about 90s left"
    assert lines[-1] == "work: 100/100 batches in 100s"
    lines = run(1000, 0.5)  # 500 s: 10% milestones are 50 s apart, so the 30 s floor sets the pace
    elapsed = [int(re.search(r"(\d+)s", line.split(")")[-1]).group(1)) for line in lines[:-1]]
    gaps = [b - a for a, b in zip([0] + elapsed, elapsed)]
    assert len(lines) > 10 and all(10 <= g <= 30 for g in gaps), lines
    assert len(run(3, 100.0)) == 3  # slow items: a line after each (at least every 30 s), the last says "in"


def test_a_slow_first_item_is_announced_while_it_runs(monkeypatch, capsys):
    """One evaluation batch of a real model can take 40 s: a line comes while it runs, not only after."""
    monkeypatch.setattr(tl_logging, "PLAIN_MIN_S", 0.05)
    monkeypatch.setattr(tl_logging, "PLAIN_TICK_S", 0.01)
    for _ in PlainProgress(range(1), desc="evaluate", unit="batches"):
        time.sleep(0.5)
        assert re.fullmatch(r"evaluate: 0/1 batches \(0%\), \d+s\n", capsys.readouterr().err)
    assert re.fullmatch(r"evaluate: 1/1 batches in \d+s\n", capsys.readouterr().err)


def test_classification_prediction_shows_progress(tiny_bert, helpers, capsys, every_line, no_library_bars):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.tasks.classification import make_examples, predict_proba

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3)
    records = helpers.synthetic_records(4)
    ex = make_examples(tokenizer, records, text_field="text", label_field=None, label2id=None, max_length=16,
                       source="test")
    probs = predict_proba(model, ex, 4, 0, torch.device("cpu"))
    assert probs.shape == (12, 3)
    err = capsys.readouterr().err
    assert "classify: 1/3 batches (33%)" in err and "classify: 3/3 batches in " in err and "\r" not in err


def test_no_progress_in_one_run_does_not_silence_the_rest_of_the_process(helpers, tiny_bert, data_dir, tmp_path):
    """`train(show_progress=False)` quiets that run only: a later prediction in the same process (the API,
    a notebook) shows its progress again."""
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "run")
    helpers.train_quietly(cfg)  # show_progress=False
    assert tl_logging._enabled is True
    with tl_logging.progress_shown(False):
        assert tl_logging._enabled is False
    assert tl_logging._enabled is True
