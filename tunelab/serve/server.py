"""Running the app under uvicorn: on a socket bound here first (so a busy port is one clear error, and port 0
gives a free port whose number we know), in the foreground (`tunelab serve`) or in a thread (tests, bench)."""
from __future__ import annotations

import errno
import socket
import threading
import time

from tunelab.errors import TunelabError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or one line saying why not: the address when it is not one of
    this machine's (or no address at all), the port otherwise."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OverflowError:  # the port is out of range
        sock.close()
        raise TunelabError(f"serve: --port {port}: a port is 0 to 65535 (0: any free one)") from None
    except OSError as e:
        sock.close()
        if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
            raise TunelabError(f"serve: --host {host}: no such address on this machine ({e.strerror}); pass one "
                               "of its addresses, 127.0.0.1 (this machine only) or 0.0.0.0 (all of them)") from None
        why = "is in use by another program" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
        raise TunelabError(f"serve: {host}:{port} {why}; pass another --port (or --port 0 for any free one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(app, sock: socket.socket, log_level: str, access_log: bool):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=5,
                            lifespan="on")
    return uvicorn.Server(config)


def serve_forever(app, sock: socket.socket, *, log_level: str = "warning", access_log: bool = False) -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn handles both and stops gracefully)."""
    _server(app, sock, log_level, access_log).run(sockets=[sock])


class ServerThread:
    """`with ServerThread(app) as url:` - the app served on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.server = _server(app, self.sock, log_level, False)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server thread did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
