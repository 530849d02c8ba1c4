"""Stopping a run cleanly: the first Ctrl-C (SIGINT) or SIGTERM asks the loop to finish its step, write a
checkpoint and stop; a second Ctrl-C stops at once (KeyboardInterrupt), as a user pressing it twice expects.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report them


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C / SIGTERM) and stopped after a step, with a checkpoint in `folder`."""

    def __init__(self, step: int, folder, signal_name: str):
        super().__init__(f"stopped by {signal_name} after step {step}")
        self.step, self.folder, self.signal_name = step, folder, signal_name

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal_name, 130)


class StopRequest:
    """Set by the handlers below; the loop reads `asked` after each step (and stops after it, with a
    checkpoint), the driver after training and after saving the model (and stops there when the run's final
    checkpoint lets `tunelab resume` finish it)."""

    def __init__(self):
        self.asked = False
        self.signal_name = ""


@contextlib.contextmanager
def stop_on_signals(say: Callable[[str], None]) -> Iterator[StopRequest]:
    """Within the block, SIGINT / SIGTERM set the yielded StopRequest instead of killing the process.

    Outside the main thread (signals cannot be caught there) the request is never set.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, _frame):
        name = signal.Signals(signum).name
        if request.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.asked, request.signal_name = True, request.signal_name or name
        say(f"{name}: stopping after this step and writing a checkpoint"
            + (" (press Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else ""))

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in old.items():
            signal.signal(s, h)
