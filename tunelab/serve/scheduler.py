"""A bounded queue of model work, run by a fixed number of worker threads.

Handlers are async (FastAPI); the model runs in worker threads so the event loop keeps answering /health,
streaming tokens and refusing requests while a model works. On a 2-core machine one worker is fastest: two
generations at once share the same cores and each gets slower. Why not a ThreadPoolExecutor: it queues
without a bound and cannot batch, drop stale jobs, or tell a running job to stop.

- `run(fn, payload)` waits for `fn(payload, job)`; a full queue raises QueueFull at once (the handler answers
  503 with Retry-After) instead of letting requests pile up until they time out.
- Jobs with the same `batch_key` are taken together, up to `batch_size`, and run as one call
  `fn([payload, ...]) -> [result, ...]`: concurrent classification requests become one forward pass. A
  batch that fails is re-run one job at a time, so one bad request cannot fail its neighbours.
- Every job has a deadline. A job still queued at its deadline leaves the queue then (DeadlineExceeded, never
  started); a running one sees `job.stopped()` turn true (generation checks it after each token), as it does
  when its client disconnects (`job.cancel`), and its waiter gives up a second later (TimeLimitExceeded).
  A job whose client went away while it was queued leaves the queue at once, so it holds no place there.
"""
from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """No room in the queue; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The job waited in the queue past its deadline and was never started."""


class TimeLimitExceeded(Exception):
    """The job started but was still running a second after its deadline (it was told to stop)."""


@dataclass(eq=False)
class Job:
    """One request's model work. `fn(payload, job)`, or `fn([payloads])` for a batch key."""

    fn: Callable
    payload: Any
    deadline: float
    batch_key: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def stopped(self) -> bool:
        """True once the client is gone or the deadline has passed: a running job should stop."""
        return self.cancel.is_set() or time.monotonic() > self.deadline

    def resolve(self, result=None, error: BaseException | None = None) -> None:
        """Hand the result (or error) to the waiting handler, from any thread."""
        def settle():
            if self.future is not None and not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(settle)


class Scheduler:
    """`workers` threads over a queue of at most `queue_size` waiting jobs."""

    def __init__(self, workers: int = 1, queue_size: int = 64, batch_size: int = 16, batch_wait_s: float = 0.002,
                 on_batch: Callable[[str, int], None] | None = None):
        self.workers, self.queue_size = workers, queue_size
        self.batch_size, self.batch_wait_s = max(1, batch_size), batch_wait_s
        self.on_batch = on_batch  # metrics: (batch_key, size) of each batch run
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._closing = False
        self._seconds = collections.deque(maxlen=32)  # recent job run times, for Retry-After

    # ------------------------------------------------------------------ state
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue's work at the recent mean job time, at least 1."""
        mean = sum(self._seconds) / len(self._seconds) if self._seconds else 1.0
        return max(1, math.ceil(mean * (len(self._queue) + self._running) / self.workers))

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        self._closing = False
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"tunelab-serve-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop the workers after their current job; queued jobs are told the server is shutting down."""
        with self._cond:
            self._closing = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in dropped:
            job.resolve(error=DeadlineExceeded("the server is shutting down"))
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    # ------------------------------------------------------------------ submit
    def submit(self, job: Job) -> Job:
        """Queue `job` (its future and loop already set), or raise QueueFull."""
        with self._cond:
            idle = max(0, len(self._threads) - self._running)  # a job an idle worker takes at once never waits
            if len(self._queue) >= self.queue_size + idle or self._closing:
                raise QueueFull(self.retry_after())
            self._queue.append(job)
            self._cond.notify()
        return job

    async def run(self, fn: Callable, payload: Any, *, timeout: float, batch_key: str | None = None,
                  cancel: threading.Event | None = None) -> Any:
        """Queue fn's work and wait for its result. Raises QueueFull, DeadlineExceeded (the deadline passed
        before the job started), TimeLimitExceeded (it started and was still running a second after the
        deadline), or fn's own error.

        If the awaiting task is cancelled (the client went away), a job still queued leaves the queue, and a
        running one is told to stop. Either way its result is dropped unread.
        """
        loop = asyncio.get_running_loop()
        job = Job(fn, payload, time.monotonic() + timeout, batch_key, cancel or threading.Event(),
                  loop.create_future(), loop)
        self.submit(job)
        try:
            try:
                return await asyncio.wait_for(asyncio.shield(job.future), max(0.0, job.deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            if self._withdraw(job):
                raise DeadlineExceeded("the request waited in the queue past its time limit")
            try:  # a second of grace: a job that checks job.stopped() ends by itself at its deadline
                return await asyncio.wait_for(asyncio.shield(job.future), 1.0)
            except asyncio.TimeoutError:
                self._abandon(job)
                raise TimeLimitExceeded(f"the request ran past the server's time limit of {timeout:g} s") from None
        except asyncio.CancelledError:
            if not self._withdraw(job):  # already running: told to stop, its result dropped
                self._abandon(job)
            raise

    def _withdraw(self, job: Job) -> bool:
        """Take `job` out of the queue if no worker has taken it yet (True), so it never starts."""
        with self._cond:
            if job not in self._queue:
                return False
            self._queue.remove(job)
        self._abandon(job)
        return True

    @staticmethod
    def _abandon(job: Job) -> None:
        """Nobody waits for `job` any more: tell it to stop, and cancel its future so that a result or error
        it ends with later is dropped (Job.resolve settles only a pending future) rather than reported by
        asyncio as never retrieved."""
        job.cancel.set()
        if job.future is not None:
            job.future.cancel()

    # ------------------------------------------------------------------ workers
    def _take(self) -> list[Job] | None:
        """The next job, or the next batch of jobs sharing its batch key; None when closing."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            first = self._queue.popleft()
            batch = [first]
            if first.batch_key is not None and self.batch_size > 1:
                until = time.monotonic() + self.batch_wait_s
                while len(batch) < self.batch_size:
                    same = [j for j in self._queue if j.batch_key == first.batch_key]
                    for j in same[:self.batch_size - len(batch)]:
                        self._queue.remove(j)
                        batch.append(j)
                    left = until - time.monotonic()
                    if len(batch) >= self.batch_size or left <= 0:
                        break
                    self._cond.wait(left)
            self._running += len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                live = []
                for job in batch:
                    if job.cancel.is_set():
                        job.resolve(error=asyncio.CancelledError())
                    elif time.monotonic() > job.deadline:
                        job.resolve(error=DeadlineExceeded("the request waited in the queue past its time limit"))
                    else:
                        live.append(job)
                if live:
                    started = time.monotonic()
                    self._run(live)
                    self._seconds.append((time.monotonic() - started) / len(live))
            finally:
                with self._cond:
                    self._running -= len(batch)

    def _run(self, jobs: list[Job]) -> None:
        if jobs[0].batch_key is None:
            self._call_one(jobs[0])
            return
        if self.on_batch is not None:
            self.on_batch(jobs[0].batch_key, len(jobs))
        try:
            results = jobs[0].fn([j.payload for j in jobs])
        except Exception as e:
            if len(jobs) == 1:
                jobs[0].resolve(error=e)
                return
            for job in jobs:  # find the request that failed; the others still get their answer
                try:
                    job.resolve(job.fn([job.payload])[0])
                except Exception as e_one:
                    job.resolve(error=e_one)
            return
        for job, result in zip(jobs, results):
            job.resolve(result)

    @staticmethod
    def _call_one(job: Job) -> None:
        try:
            job.resolve(job.fn(job.payload, job))
        except BaseException as e:  # noqa: BLE001 - handed to the request, the worker goes on
            job.resolve(error=e)
