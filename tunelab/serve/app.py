"""The FastAPI app of `tunelab serve`: one served model, one scheduler, one metrics registry.

The gate in front of every route is plain ASGI middleware rather than FastAPI dependencies, so that it also
covers unknown routes and streamed answers: it checks the API key (401), caps the body (413; the body is
read here, at most `max_body_bytes`, then handed on), and counts each request with its latency, measured to
the last byte of a stream.
"""
from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from tunelab.serve import ServeSettings
from tunelab.serve.errors import ApiError, error_body, install
from tunelab.serve.metrics import Metrics
from tunelab.serve.model import Served
from tunelab.serve.scheduler import Scheduler

OPEN_PATHS = ("/", "/health", "/favicon.ico")  # no API key needed: the page holds no data, probes need /health
PLAYGROUND = Path(__file__).with_name("playground.html")


@dataclass
class State:
    """What every route needs; `app.state.tunelab`."""

    served: Served
    settings: ServeSettings
    scheduler: Scheduler
    metrics: Metrics
    started: float

    def check_model(self, name: str | None, param: str = "model") -> None:
        """A request's `model` must be absent or name the served model (404, as OpenAI answers)."""
        if name is not None and name not in self.served.names():
            raise ApiError(404, f"The model '{name}' does not exist here; this server serves '{self.served.id}' "
                                "(GET /v1/models)", param, "model_not_found")

    def require(self, endpoint: str) -> None:
        """404 naming what the served model offers when `endpoint` is not among them."""
        if endpoint not in self.served.endpoints:
            offered = ", ".join("/v1/" + e.replace(".", "/") for e in self.served.endpoints)
            raise ApiError(404, f"/v1/{endpoint.replace('.', '/')} is not served here: '{self.served.id}' is a "
                                f"{self.served.task} model, which answers {offered}", None, "unsupported_endpoint")


def create_app(served: Served, settings: ServeSettings) -> FastAPI:
    """The app; its scheduler's workers start and stop with the app (lifespan)."""
    from contextlib import asynccontextmanager

    from tunelab.serve import openai_api, task_api

    scheduler = Scheduler(settings.workers, settings.queue_size, settings.batch_size,
                          settings.batch_wait_ms / 1000)
    metrics = Metrics(scheduler)
    scheduler.on_batch = lambda key, size: metrics.batch_size.labels(key).observe(size)
    state = State(served, settings, scheduler, metrics, time.time())

    @asynccontextmanager
    async def lifespan(app):
        from tunelab.train.logging import progress_shown

        # A server's log is no place for progress bars of the tasks' predict. The switch is process-wide, so it
        # is turned off once for the server's life: workers flipping it around each batch would race.
        with progress_shown(False):
            scheduler.start()
            try:
                yield
            finally:
                scheduler.stop()

    # no /docs: Swagger UI loads its CSS and JS from a CDN; /openapi.json (behind the API key) describes the API
    app = FastAPI(title="tunelab serve", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tunelab = state
    install(app)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served.id, "task": served.task, "device": served.device,
                "queue": scheduler.queued, "running": scheduler.running,
                "uptime_s": round(time.time() - state.started, 1)}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card(state)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        state.check_model(name, "name")
        return model_card(state)

    app.include_router(openai_api.router(state))
    app.include_router(task_api.router(state))
    return Gate(app, state)


def model_card(state: State) -> dict:
    """A /v1/models entry: OpenAI's fields, plus what a client needs to know about a tunelab model."""
    s = state.served
    card = {"id": s.id, "object": "model", "created": int(state.started), "owned_by": "tunelab",
            "task": s.task, "endpoints": ["/v1/" + e.replace(".", "/") for e in s.endpoints],
            "max_tokens": state.settings.max_tokens if s.context is not None or s.gen is not None else None,
            "context_length": s.context}
    if s.run is not None and "labels" in s.run.meta:
        card["labels"] = list(s.run.meta["labels"])
    return card


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunelab")
    except PackageNotFoundError:
        return "0"


class Gate:
    """ASGI middleware: API key, body size, request metrics. Wraps the FastAPI app (`.app`)."""

    def __init__(self, app: FastAPI, state: State):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {"code": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None:
                receive, refusal = await self._read_body(scope, receive)
            if refusal is not None:
                await _send_error(send_counted, refusal)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            m = self.state.metrics
            m.requests.labels(label, str(status["code"])).inc()
            m.latency.labels(label).observe(time.perf_counter() - started)

    def _refusal(self, scope) -> ApiError | None:
        key = self.state.settings.api_key
        if key is None or scope["path"] in OPEN_PATHS:
            return None
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, given = auth.partition(" ")
        if not auth:
            return ApiError(401, "You didn't provide an API key. Send it as the header 'Authorization: Bearer "
                                 "KEY' (the openai client's api_key)", None, "missing_api_key",
                            {"WWW-Authenticate": "Bearer"})
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            return ApiError(401, "Incorrect API key provided; send the key the server was started with as "
                                 "'Authorization: Bearer KEY'", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        return None

    async def _read_body(self, scope, receive):
        """(a receive that replays the body, None), or (receive, a 413 ApiError) for a body over the cap."""
        limit = self.state.settings.max_body_bytes
        too_big = ApiError(413, f"the request body is larger than the server's limit of {limit} bytes; send "
                                "less (or start the server with a larger --max-body-kb)", None, "body_too_large")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return receive, too_big
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away while sending
                return receive, None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return receive, too_big
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes away

        return replay, None


async def _send_error(send, error: ApiError) -> None:
    body = json.dumps(error_body(error.status, error.message, error.param, error.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def request_state(request: Request) -> State:
    return request.app.state.tunelab
