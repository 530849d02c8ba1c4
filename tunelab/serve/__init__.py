"""`tunelab serve RUN_DIR|MODEL`: a finished run (or a causal LM model reference) behind an HTTP API that
existing clients already speak, on FastAPI + uvicorn.

What a request goes through, one module each:

  app.py          create_app(served, settings) -> FastAPI: the ASGI middleware (API key -> 401, body size ->
                  413, request counts and latency), /health, /metrics, GET / (the playground page), the routers
  errors.py       ApiError -> an OpenAI-style error object {"error": {message, type, param, code}}; FastAPI's
                  validation errors (400, `param` names the field), unknown routes and crashes (500) alike
  scheduler.py    Scheduler: a bounded queue run by `workers` threads; a full queue raises QueueFull (503 +
                  Retry-After); a job past its deadline is dropped (503) or told to stop (504); jobs that share
                  a `batch_key` are run together as one batch (task endpoints)
  limits.py       run_limited(state, request, fn, payload): model work within the time limit while the client
                  is there (until_done), the scheduler's refusals as HTTP errors (refusal(): 503
                  server_overloaded / queue_timeout + Retry-After, 504 timeout)
  metrics.py      Metrics: prometheus_client counters / histograms / gauges in a registry of the app's own
  model.py        Served: what is served, loaded once (a run via tunelab.runs.load_run, or a model reference as
                  `tunelab chat` loads it), its model id and the endpoints its task offers (Task.api)
  textgen.py      one generation as a stream of text deltas: chat template server-side, UTF-8-safe incremental
                  decoding, stop strings, seed, stops when cancelled (client gone) or past its deadline
  openai_api.py   /v1/models, /v1/chat/completions, /v1/completions (+ server-sent events, include_usage)
  task_api.py     /v1/classify, /v1/translate, /v1/answer, /v1/entities, /v1/embeddings: through the run's
                  task `predict` (the code behind `tunelab predict`), batched across requests
  playground.html the page at GET /: self-contained (no CDN), chat with streaming and a form per task

The endpoint names a task offers are `Task.api` (tunelab.tasks.base): "chat.completions", "completions",
"classify", "translate", "answer", "entities", "embeddings". tunelab.serve never asks which task it holds.

Nothing heavy is imported here: `tunelab --help` must not pay for FastAPI or torch.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs (the `tunelab serve` options); the model's own settings come from its run."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    """Required as `Authorization: Bearer KEY` on every path but / and /health (None: open)."""
    max_tokens: int = 512
    """Cap on a request's max_tokens (and the default when a request gives none)."""
    workers: int = 1
    """Threads running model work; on 2 cores one generation at a time is fastest."""
    queue_size: int = 64
    """Requests that may wait beyond the running ones; one more gets 503 with Retry-After."""
    batch_size: int = 16
    """Task requests (classify, ...) run together as one batch, at most this many (1: no batching)."""
    batch_wait_ms: float = 2.0
    """How long a worker waits for more task requests to fill a batch before it runs a smaller one."""
    timeout_s: float = 120.0
    """Time limit of a request, queueing included: 503 if it has not started by then, 504 if still running."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413."""
    device: str = "cpu"
    """cpu, cuda or auto (cuda when there is one)."""
    index: str | None = None
    """A vector index (tunelab index build) for /v1/answer with retrieval."""
    k: int = 3
    """Passages retrieved per question with `index`."""


API_KEY_ENV = "TUNELAB_API_KEY"
"""Environment variable read when --api-key is not given."""
