"""Where progress goes: metrics.jsonl (one JSON object per event), TensorBoard, and what a person sees.

What a person sees goes through one helper, `progress(iterable, total, desc)`, used by training and by every
long step (evaluation, generation, prediction, merging): a tqdm bar when standard error is a terminal, plain
lines at a modest rate when it is not (CI, `> log.txt`, nohup: a bar's `\\r` frames would fill the log),
nothing when progress is switched off (`tunelab train --no-progress` -> `set_progress(False)`). tqdm does the
bar; the plain reporter is ours because tqdm has no line mode (with `file=` a log still gets `\\r` frames).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

_enabled = True  # the process-wide switch: `--no-progress` turns every display off
PLAIN_MIN_S = 10.0  # plain mode: at most one line per this many seconds at a 10% milestone ...
PLAIN_MAX_S = 30.0  # ... and one at least this often while items keep coming


def set_progress(enabled: bool) -> None:
    """Switch every progress display of this process on or off (bars, plain lines, phase notes)."""
    global _enabled
    _enabled = bool(enabled)


def progress_enabled() -> bool:
    return _enabled


def _on_terminal() -> bool:
    """True when standard error is an interactive terminal, where a redrawn bar is readable."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", leave: bool = False):
    """Wrap `iterable` (or count `update(n)` calls) with a display fit for where standard error goes.

    Returns an object with tqdm's small interface (iterate, update, set_postfix, write, close): a tqdm bar on a
    terminal, a `PlainProgress` otherwise, a silent tqdm (`disable=True`) when progress is switched off.
    """
    from tqdm.auto import tqdm

    if not _enabled:
        return tqdm(iterable, total=total, disable=True)
    if _on_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr)
    return PlainProgress(iterable, total, desc, unit)


def note(text: str) -> None:
    """A one-line progress note on standard error (a slow phase starting), unless progress is off."""
    if _enabled:
        print(text, file=sys.stderr, flush=True)


class PlainProgress:
    """Progress as whole lines, for logs: at a 10% milestone at most every PLAIN_MIN_S seconds, at least
    every PLAIN_MAX_S seconds while items come, and a last line when the work took PLAIN_MIN_S or more.

    Lines look like `evaluate: 40/100 batches (40%), 12s, about 18s left`.
    """

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it"):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = 0
        self._start = self._last = time.monotonic()
        self._milestone = 0  # the last 10% step reported
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        milestone = int(10 * self.n / self.total) if self.total else 0
        if self.total and self.n >= self.total:
            return  # the last line (close) says it
        if ((milestone > self._milestone and now - self._last >= PLAIN_MIN_S)
                or now - self._last >= PLAIN_MAX_S):
            self._milestone = milestone
            self._last = now
            self._line(now)

    def set_postfix(self, values: dict | None = None, refresh: bool = False, **kwargs) -> None:
        """Ignored: the values a bar shows beside itself are printed as their own lines (RunLogger.log)."""

    def write(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = time.monotonic() - self._start
        if elapsed >= PLAIN_MIN_S:
            count = f"{self.n}/{self.total}" if self.total else str(self.n)
            self._emit(f"{count} {self.unit} in {elapsed:.0f}s")

    def _line(self, now: float) -> None:
        elapsed = now - self._start
        if self.total:
            left = elapsed * (self.total - self.n) / max(self.n, 1)
            text = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%), {elapsed:.0f}s, " \
                   f"about {left:.0f}s left"
        else:
            text = f"{self.n} {self.unit}, {elapsed:.0f}s"
        self._emit(text)

    def _emit(self, text: str) -> None:
        print(f"{self.desc}: {text}" if self.desc else text, file=sys.stderr, flush=True)


def format_train_line(step: int, total: int, values: dict) -> str:
    """`step 20/100: loss 2.3456, lr 1.00e-04, 1234 tokens/s, grad_norm 0.812` (what the bar shows)."""
    parts = [f"loss {values['loss']:.4f}"] if "loss" in values else []
    if "lr" in values:
        parts.append(f"lr {values['lr']:.2e}")
    if "tokens_per_s" in values:
        parts.append(f"{values['tokens_per_s']:.0f} tokens/s")
    if "grad_norm" in values:
        parts.append(f"grad_norm {values['grad_norm']:.3f}")
    return f"step {step}/{total}: " + ", ".join(parts)


class RunLogger:
    """One training run's events: metrics.jsonl, TensorBoard, and the step display (`progress`).

    `show_progress` is also the process-wide switch (`set_progress`): `--no-progress` quiets evaluation and
    test generation too. Without a tqdm bar (switched off, or not a terminal) each periodic training log
    is printed as a plain line, so the losses are never invisible.
    """

    def __init__(self, run_dir: Path | None, total_steps: int, show_progress: bool = True):
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if run_dir else None
        self._tb = None
        if run_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        set_progress(show_progress)
        self.total_steps = total_steps
        self._display = progress(total=total_steps, desc="train", unit="steps", leave=True)
        self._is_bar = show_progress and _on_terminal()  # a redrawn bar shows the losses as its postfix
        self.history: list[dict] = []

    def log(self, kind: str, step: int, values: dict) -> None:
        """Record one event (`kind` is 'train' or 'eval'); scalar values also go to TensorBoard."""
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.history.append(record)
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        if kind == "train" and not self._is_bar:
            self.message(format_train_line(step, self.total_steps, values))

    def progress(self, n: int, **postfix: str) -> None:
        self._display.update(n)
        if postfix:
            self._display.set_postfix(postfix, refresh=False)

    def message(self, text: str) -> None:
        if self._is_bar:
            self._display.write(text)  # printed above the bar, which is redrawn below it
        else:
            print(text, flush=True)

    def close(self) -> None:
        self._display.close()
        if self._tb:
            self._tb.close()
        if self._jsonl:
            self._jsonl.close()
