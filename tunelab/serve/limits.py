"""Model work under the server's limits, as the HTTP answers clients expect.

Every endpoint hands its model work to the scheduler the same way: with the server's time limit, and with the
scheduler's refusals turned into OpenAI-style errors, each counted in tunelab_rejected_total by reason:

  queue full                      503 server_overloaded, with Retry-After (the client backs off and retries)
  time limit passed in the queue  503 queue_timeout (never started; retrying later may succeed)
  still running past the limit    504 timeout (the job was told to stop)
  a TunelabError of the model code 400 with its message (e.g. a DataError naming the record)

The openai client retries 503 / 504 by itself (with backoff); a 400 it shows as is.

FastAPI does not cancel a handler whose client went away (it finds out only when it writes the answer), so a
waiting handler asks `request.is_disconnected()` every POLL_S (`until_done`): a client that goes away takes
its request out of the queue, or tells its running job to stop, and is counted as disconnected; the answer
nobody receives is logged with status 499.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from starlette.requests import Request

from tunelab.errors import TunelabError
from tunelab.serve.errors import ApiError
from tunelab.serve.scheduler import DeadlineExceeded, QueueFull, TimeLimitExceeded

POLL_S = 0.1  # how often a waiting handler checks that its client is still there
CLIENT_GONE = 499  # nginx's "client closed request": the status logged for an answer nobody receives


def refusal(state, e: BaseException) -> ApiError | None:
    """The HTTP error for a scheduler refusal (counted in tunelab_rejected_total by reason), an ApiError as it
    is, or None for anything else (a crash: the caller re-raises it and the client gets a 500)."""
    settings, rejected = state.settings, state.metrics.rejected
    if isinstance(e, ApiError):
        return e
    if isinstance(e, QueueFull):
        rejected.labels("queue_full").inc()
        return ApiError(503, f"the server is busy: all {settings.workers} worker(s) are running and "
                             f"{settings.queue_size} request(s) are waiting; retry after {e.retry_after} s",
                        None, "server_overloaded", {"Retry-After": str(e.retry_after)})
    if isinstance(e, DeadlineExceeded):
        rejected.labels("deadline").inc()
        return ApiError(503, f"{e}; it was not run (time limit {settings.timeout_s:g} s, queueing included): retry "
                             "later, or start the server with a longer --timeout", None, "queue_timeout",
                        {"Retry-After": str(state.scheduler.retry_after())})
    if isinstance(e, TimeLimitExceeded):
        rejected.labels("time_limit").inc()
        return ApiError(504, f"{e} and was stopped; send less at once (fewer inputs, lower max_tokens) or start "
                             "the server with a longer --timeout", None, "timeout")
    return None


async def until_done(request: Request, waiting: asyncio.Future, cancel: threading.Event, state) -> bool:
    """Wait for `waiting`, checking that the client is still there. False when it went away first (counted
    as disconnected). Unless `waiting` finished, it is cancelled and the job told to stop (`cancel`) on the
    way out, also when this handler itself is cancelled."""
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=POLL_S)
            if done:
                return True
            if await request.is_disconnected():
                state.metrics.rejected.labels("disconnected").inc()
                return False
    finally:
        if not waiting.done():
            cancel.set()
            waiting.cancel()


async def run_limited(state, request: Request, fn: Callable, payload: Any, *, batch_key: str | None = None,
                      param: str | None = None) -> Any:
    """`state.scheduler.run(fn, payload)` within `state.settings.timeout_s`, while the client is there;
    refusals raise ApiError.

    `param` names the request field a TunelabError of the model code is about (None: the request as a whole).
    A client that goes away takes its job out of the queue or stops it (`until_done`); the handler then
    answers CLIENT_GONE to nobody.
    """
    cancel = threading.Event()
    task = asyncio.ensure_future(state.scheduler.run(fn, payload, timeout=state.settings.timeout_s,
                                                     batch_key=batch_key, cancel=cancel))
    if not await until_done(request, task, cancel, state):
        raise ApiError(CLIENT_GONE, "the client went away before the answer was ready", None, "client_gone")
    try:
        return task.result()
    except (QueueFull, DeadlineExceeded, TimeLimitExceeded) as e:
        raise refusal(state, e) from None
    except TunelabError as e:
        raise ApiError(400, str(e), param, "invalid_input") from None
