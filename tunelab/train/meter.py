"""What the training log reports per window of steps: tokens per second and the mean loss per item.

`Throughput` counts only the time inside optimizer steps (forward, backward, update), so evaluations,
logging and waiting for data between steps do not lower the rate. The clock is injected (the loop passes
`time.perf_counter`), so a test can give every step exactly one second. Its run totals live in the
`LoopState` it is given, so a checkpoint of the state carries them.
"""
from __future__ import annotations

from typing import Callable

from tunelab.train.state import LoopState


class Throughput:
    """Times optimizer steps: `start()`, then `stop(tokens)` with the real tokens that step trained on."""

    def __init__(self, state: LoopState, clock: Callable[[], float]):
        self.state, self.clock = state, clock
        self._started: float | None = None
        self.window_tokens, self.window_seconds = 0, 0.0  # since the last `take_rate()`

    def start(self) -> None:
        self._started = self.clock()

    def stop(self, tokens: int) -> float:
        """End the step begun by `start()`: add its tokens and seconds to the window and the run; its seconds."""
        if self._started is None:
            raise RuntimeError("Throughput.stop() without start()")
        seconds = self.clock() - self._started
        self._started = None
        self.window_tokens += tokens
        self.window_seconds += seconds
        self.state.train_tokens += tokens
        self.state.train_seconds += seconds
        return seconds

    def take_rate(self) -> float:
        """Tokens per second inside the steps since the last call; starts a new window."""
        rate = self.window_tokens / max(1e-9, self.window_seconds)
        self.window_tokens, self.window_seconds = 0, 0.0
        return rate


class MeanLoss:
    """The loss per item (example or label token) over the micro-batches since the last `take()`.

    Each micro-batch's loss is a sum over its items, so the window's mean is sum of sums / sum of items.
    """

    def __init__(self):
        self.total, self.items = 0.0, 0

    def add(self, loss_sum: float, items: int) -> None:
        self.total += loss_sum
        self.items += items

    def take(self) -> float:
        mean = self.total / max(1, self.items)
        self.total, self.items = 0.0, 0
        return mean
