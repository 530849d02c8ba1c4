"""Helpers the serving tests share: a server in a thread (`running`, also the conftest's `serve` fixture), a
POST with a generous client timeout, a sample of the app's metrics, waiting for a condition, a Served whose
task predicts through a wrapper, and requests sent on a plain socket (a client that can go away mid-request).

A module rather than conftest functions: the module name `conftest` is not unique across the test folders."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import time

CLIENT_TIMEOUT_S = 120  # a bound that only a hung server reaches; nothing asserts how long a request took


@contextlib.contextmanager
def running(ref, overrides=(), **settings):
    """The app serving `ref` (a run folder, a model reference, or an already loaded Served) with
    ServeSettings(**settings) on 127.0.0.1 (a free port) in a thread; yields (base URL, the app's State)."""
    from tunelab.serve import ServeSettings
    from tunelab.serve.app import create_app
    from tunelab.serve.model import Served, load_served
    from tunelab.serve.server import ServerThread

    served = ref if isinstance(ref, Served) else load_served(str(ref), list(overrides))
    gate = create_app(served, ServeSettings(**settings))
    with ServerThread(gate) as url:
        yield url, gate.state


def post(url: str, path: str, body, **kwargs) -> httpx2.Response:
    """POST `body` as JSON to url + path."""
    import httpx2  # here, so that the conftest loads where only the model side is installed (a GPU machine)

    return httpx2.post(url + path, json=body, timeout=CLIENT_TIMEOUT_S, **kwargs)


def metric(state, name: str, **labels) -> float:
    """One sample of the app's metrics (what GET /metrics shows), 0 when the series does not exist yet, e.g.
    metric(state, "tunelab_rejected_total", reason="queue_full")."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    head = name + ("{" + want + "}" if want else "")
    for line in state.metrics.text().decode().splitlines():
        if line.startswith(head + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition, what: str, seconds: float = 60) -> None:
    """Poll `condition()` until true; a generous bound turns a hang into a failure naming `what`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def idle(state) -> bool:
    """No request running or queued."""
    return state.scheduler.running == 0 and state.scheduler.queued == 0


def with_predict(served, predict):
    """A copy of `served` whose task predicts with `predict(real_predict, run, records, source, log)`."""
    real = served.run.task.predict
    task = dataclasses.replace(served.run.task, predict=lambda *a: predict(real, *a))
    return dataclasses.replace(served, run=dataclasses.replace(served.run, task=task))


def raw_request(url: str, path: str, body: dict) -> socket.socket:
    """A POST sent on a plain socket (not read): closing the socket is a client that goes away."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def read_reply(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of the answer to a `raw_request`; closes the socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        more = sock.recv(65536)
        assert more, f"the server closed the connection after {data!r}"
        data += more
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", data.partition(b"\r\n\r\n")[0], re.I)
    return int(found.group(1)) if found else 0
