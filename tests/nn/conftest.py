"""Shared setup for the tests of tunelab.nn."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run each test on one intra-op thread, then restore the previous setting.

    The models here are tiny: handing a 4x8 matmul to a second thread costs more than it saves, and on a
    2-core machine that is busy with anything else, torch's spinning worker threads slow the step-by-step
    RNN loops by ~100x (measured: 1.3 s vs 0.01 s for the LSTM parity test).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
