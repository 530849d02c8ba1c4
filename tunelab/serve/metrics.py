"""What GET /metrics reports, in Prometheus' text format (prometheus_client), in a registry of the app's own
so that several apps in one process (tests) do not share counters."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created gauges (process start times) are noise on a dashboard

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Request counts and latency per route, tokens, batches, queue length and refusals."""

    def __init__(self, scheduler=None):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("tunelab_request_seconds", "time from request to the end of the answer "
                                 "(streams included)", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunelab_time_to_first_token_seconds", "time from request to the first "
                              "generated text", buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "prompt tokens of generations", registry=r)
        self.generated_tokens = Counter("tunelab_generated_tokens", "tokens generated", registry=r)
        self.batch_size = Histogram("tunelab_batch_size", "requests run together in one batch", ["endpoint"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.rejected = Counter("tunelab_rejected", "requests refused or stopped by the server, by reason "
                                "(queue_full, deadline, time_limit, disconnected)", ["reason"], registry=r)
        self.queue = Gauge("tunelab_queue_length", "requests waiting for a worker", registry=r)
        self.running = Gauge("tunelab_running_requests", "requests a worker is running", registry=r)
        if scheduler is not None:
            self.queue.set_function(lambda: scheduler.queued)
            self.running.set_function(lambda: scheduler.running)

    def text(self) -> bytes:
        return generate_latest(self.registry)
