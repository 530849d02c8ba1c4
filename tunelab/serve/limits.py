"""Model work under the server's limits, as the HTTP answers clients expect.

Every endpoint hands its model work to the scheduler the same way: with the server's time limit, and with the
scheduler's refusals turned into OpenAI-style errors, each counted in tunelab_rejected_total by reason:

  queue full                      503 server_overloaded, with Retry-After (the client backs off and retries)
  time limit passed in the queue  503 queue_timeout (never started; retrying later may succeed)
  still running past the limit    504 timeout (the job was told to stop)
  a TunelabError of the model code 400 with its message (e.g. a DataError naming the record)

The openai client retries 503 / 504 by itself (with backoff); a 400 it shows as is.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from tunelab.errors import TunelabError
from tunelab.serve.errors import ApiError
from tunelab.serve.scheduler import DeadlineExceeded, QueueFull, TimeLimitExceeded


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


async def run_limited(state, fn: Callable, payload: Any, *, batch_key: str | None = None,
                      cancel: threading.Event | None = None, param: str | None = None) -> Any:
    """`state.scheduler.run(fn, payload)` within `state.settings.timeout_s`; refusals raise ApiError.

    `param` names the request field a TunelabError of the model code is about (None: the request as a whole).
    A client that goes away cancels the job (the scheduler tells it to stop) and is counted as disconnected.
    """
    try:
        return await state.scheduler.run(fn, payload, timeout=state.settings.timeout_s, batch_key=batch_key,
                                         cancel=cancel)
    except (QueueFull, DeadlineExceeded, TimeLimitExceeded) as e:
        raise refusal(state, e) from None
    except asyncio.CancelledError:
        state.metrics.rejected.labels("disconnected").inc()
        raise
    except TunelabError as e:
        raise ApiError(400, str(e), param, "invalid_input") from None
