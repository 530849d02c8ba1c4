"""Serving tests: `serve(ref_or_served, **settings)` starts the real app under uvicorn on 127.0.0.1 (a free
port) in a thread and yields its base URL."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@contextlib.contextmanager
def running(ref, overrides=(), **settings):
    """The app serving `ref` (a run folder, a model reference, or an already loaded Served) with
    ServeSettings(**settings); yields (base URL, the app's State)."""
    from tunelab.serve import ServeSettings
    from tunelab.serve.app import create_app
    from tunelab.serve.model import Served, load_served
    from tunelab.serve.server import ServerThread

    served = ref if isinstance(ref, Served) else load_served(str(ref), list(overrides))
    gate = create_app(served, ServeSettings(**settings))
    with ServerThread(gate) as url:
        yield url, gate.state


@pytest.fixture
def serve():
    """serve(ref, overrides=(), **settings) -> a context manager yielding (url, state)."""
    return running
