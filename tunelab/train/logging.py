"""Where progress goes: metrics.jsonl (one JSON object per event), TensorBoard, and what a person sees.

What a person sees goes through one helper, `progress(iterable, total, desc)`, used by training and by every
long step (evaluation, generation, prediction, merging): a tqdm bar when standard error is a terminal, plain
lines at a modest rate when it is not (CI, `> log.txt`, nohup: a bar's `\\r` frames would fill the log),
nothing when progress is switched off (`tunelab train --no-progress` -> `progress_shown(False)` for the run). tqdm does the
bar; the plain reporter is ours because tqdm has no line mode (with `file=` a log still gets `\\r` frames).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator

_enabled = True  # the process-wide switch: `--no-progress` turns every display off
PLAIN_MIN_S = 10.0  # plain mode: at most one line per this many seconds at a 10% milestone ...
PLAIN_MAX_S = 30.0  # ... and one at least this often, items finished or not
PLAIN_TICK_S = 1.0  # how often a watcher thread checks whether a line is due (a slow item gives no signal)


def set_progress(enabled: bool) -> None:
    """Switch every progress display of this process on or off (bars, plain lines, phase notes)."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def progress_shown(enabled: bool) -> Iterator[None]:
    """Progress displays on or off (as `set_progress`) inside the block, and as they were after it."""
    global _enabled
    was, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = was


def _on_terminal() -> bool:
    """True when standard error is an interactive terminal with a width, where a redrawn bar is readable.

    A terminal of width 0 (a pseudo-terminal nobody sized: `script`, some containers run with -t) gets
    plain lines: tqdm would draw nothing at all there.
    """
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        if not (isatty and isatty()):
            return False
    except ValueError:  # a closed stream
        return False
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):  # a stand-in stream without a descriptor: trust its isatty
        return True


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
        sys.stderr.write(text + "\n")  # one write: a progress watcher thread may be writing lines too
        sys.stderr.flush()


class PlainProgress:
    """Progress as whole lines, for logs. A line comes at a 10% milestone at most every PLAIN_MIN_S seconds
    and at least every PLAIN_MAX_S seconds; the first one after PLAIN_MIN_S even if no item has finished
    (a watcher thread looks every PLAIN_TICK_S: one evaluation batch of a real model can take 40 s);
    the last line only when the work took PLAIN_MIN_S or more, so quick steps stay quiet.

    Lines look like `evaluate: 40/100 batches (40%), 12s, about 18s left`.
    """

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it"):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = 0
        self._start = self._last = time.monotonic()
        self._milestone, self._said, self._closed = 0, False, False  # last 10% step reported, any line yet
        self._lock, self._stop = threading.Lock(), threading.Event()
        # the watcher holds a weak reference, so a display nobody closes does not print forever
        threading.Thread(target=PlainProgress._watch, args=(weakref.ref(self), self._stop), daemon=True,
                         name=f"tunelab-progress-{desc}").start()

    @staticmethod
    def _watch(ref, stop: threading.Event) -> None:
        while not stop.wait(PLAIN_TICK_S):
            display = ref()
            if display is None:
                return
            display._check(time.monotonic())
            del display

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        if n:
            self.n += n
            self._check(time.monotonic())

    def _check(self, now: float) -> None:
        """Print a line if one is due (called after each item and by the watcher)."""
        with self._lock:
            if self._closed or (self.total and self.n >= self.total):
                return  # the last line (close) says it
            milestone = int(10 * self.n / self.total) if self.total else 0
            if (((milestone > self._milestone or not self._said) and now - self._last >= PLAIN_MIN_S)
                    or now - self._last >= PLAIN_MAX_S):
                self._milestone, self._last, self._said = milestone, now, True
                self._line(now)

    def set_postfix(self, values: dict | None = None, refresh: bool = False, **kwargs) -> None:
        """Ignored: the values a bar shows beside itself are printed as their own lines (RunLogger.log)."""

    def write(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
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
            text = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%), {elapsed:.0f}s"
            if self.n:
                text += f", about {elapsed * (self.total - self.n) / self.n:.0f}s left"
        else:
            text = f"{self.n} {self.unit}, {elapsed:.0f}s"
        self._emit(text)

    def _emit(self, text: str) -> None:
        # one write per line: the watcher thread and the loop must not interleave half lines
        sys.stderr.write((f"{self.desc}: {text}" if self.desc else text) + "\n")
        sys.stderr.flush()


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


def _logged_until(path: Path, step: int) -> list[dict]:
    """The records of metrics.jsonl up to `step` (a resumed run logs the later steps again); the file is
    rewritten (atomically) to hold only those."""
    from tunelab.io import atomic_write_text

    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the last line of a killed run may be cut short
            continue
        if record.get("step", 0) <= step:
            kept.append(record)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


class RunLogger:
    """One training run's events: metrics.jsonl, TensorBoard, and the step display (`progress`).

    `tunelab.run.train` turns the process-wide switch (`progress_shown`) off with `--no-progress` for the
    whole run, so evaluation and test generation are quiet too. Without a tqdm bar (switched off, or not a terminal) each periodic training log
    is printed as a plain line, so the losses are never invisible.
    """

    def __init__(self, run_dir: Path | None, total_steps: int, show_progress: bool = True,
                 resume_step: int | None = None, echo: bool = True):
        self.echo = echo  # False: print nothing (the other processes of a distributed run)
        self.history: list[dict] = []
        if run_dir and resume_step is not None:  # going on from a checkpoint: drop what was logged after it
            self.history = _logged_until(run_dir / "metrics.jsonl", resume_step)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if run_dir else None
        self._tb = None
        if run_dir:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1  # TensorBoard forgets later events
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        self.total_steps = total_steps
        with progress_shown(show_progress and _enabled):
            self._display = progress(total=total_steps, desc="train", unit="steps", leave=True)
        self._is_bar = show_progress and _on_terminal()  # a redrawn bar shows the losses as its postfix

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
        if not self.echo:
            return
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
