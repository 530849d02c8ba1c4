"""POST /v1/chat/completions and POST /v1/completions: OpenAI's request and response, streaming included,
so the official `openai` client (and anything built on it) talks to a tunelab model unchanged.

A request is checked twice before any model work: pydantic types (strict: "1" is not a number; unknown
fields are refused by name) and then the values this server does not serve (n > 1, penalties, logprobs,
JSON mode, ...), each a 400 naming its field. The prompt is built and tokenized by the worker that
generates (tunelab.serve.textgen), so a prompt longer than the context is found there.

Streaming answers decide their HTTP status before the 200 starts: the handler waits until the job has
started (its prompt fits) or failed (queue full: 503, prompt too long: 400). Then the chunks follow OpenAI's
rules: a role chunk, content chunks, one chunk with finish_reason and an empty delta, the usage chunk when
stream_options.include_usage asks for it, `data: [DONE]`. An error after the 200 is sent as
`data: {"error": ...}` then `data: [DONE]` (the openai client raises it). A client that goes away - closing a
stream, or dropping a non-streamed request while it waits - sets the job's cancel event, and the worker
stops within one token.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, PlainValidator
from pydantic_core import PydanticCustomError

from tunelab.serve import textgen
from tunelab.serve.errors import ApiError, error_body
from tunelab.serve.limits import CLIENT_GONE, refusal, run_limited, until_done
from tunelab.serve.scheduler import TimeLimitExceeded

log = logging.getLogger("tunelab.serve")

MAX_STOP = 4  # as OpenAI: up to 4 stop strings
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""Roles a message may have, and the role the chat template sees ("developer" is OpenAI's newer "system")."""


# ------------------------------------------------------------------------------------------------- requests


def _invalid(kind: str, message: str) -> PydanticCustomError:
    """A validation error with `message` as it is (pydantic would read braces in it as placeholders)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def _content(value: Any) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts (joined by newlines,
    as vLLM joins them)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _invalid("content_type", 'expected a string or a list of text parts [{"type": "text", "text": '
                                       f'...}}], got {type(value).__name__}')
    texts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
            raise _invalid("content_part", f'part {i} is not a text part {{"type": "text", "text": str}} (got type '
                                           f"{kind!r}); this server reads text only")
        texts.append(part["text"])
    return "\n".join(texts)


def _stop(value: Any) -> tuple[str, ...]:
    """`stop`: null, one string, or a list of up to 4 strings."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items) or len(items) > MAX_STOP:
        raise _invalid("stop_type", f"expected a string or a list of up to {MAX_STOP} strings")
    return tuple(items)


Content = Annotated[str, PlainValidator(_content)]
Stop = Annotated[tuple[str, ...], PlainValidator(_stop)]


class Strict(BaseModel):
    # strict: "0.5" is not a temperature and true is not an n; unknown fields are named in the 400
    model_config = ConfigDict(extra="forbid", strict=True)


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Content
    name: str | None = None
    """Accepted as OpenAI accepts it; the chat template does not show it."""


class StreamOptions(Strict):
    include_usage: bool = False


class Common(Strict):
    """The fields both endpoints share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Stop = ()
    seed: int | None = Field(None, ge=-2**63, le=2**63 - 1)  # OpenAI's int64
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(Common):
    prompt: str
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


def refuse_unserved(req: Common) -> None:
    """400 for a value this server does not serve, naming the field (the defaults pass)."""
    def refuse(param: str, value: Any, served: str) -> None:
        raise ApiError(400, f"{param}={json.dumps(value)} is not supported by this server; {served}", param,
                       "unsupported_value")

    if req.n not in (None, 1):
        refuse("n", req.n, "it returns one choice per request: leave out n (or send 1) and send more requests")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if getattr(req, penalty) not in (None, 0):
            refuse(penalty, getattr(req, penalty), "only 0 is accepted (the run's generate.repetition_penalty "
                                                   "applies)")
    if req.logit_bias:
        refuse("logit_bias", req.logit_bias, "leave it out")
    if req.logprobs not in (None, False, 0):
        refuse("logprobs", req.logprobs, "log probabilities are not returned")
    if getattr(req, "top_logprobs", None) not in (None, 0):
        refuse("top_logprobs", req.top_logprobs, "log probabilities are not returned")
    if getattr(req, "response_format", None) not in (None, {"type": "text"}):
        refuse("response_format", req.response_format, 'only {"type": "text"} is served')
    if getattr(req, "echo", None):
        refuse("echo", req.echo, "the prompt is not echoed")
    if getattr(req, "suffix", None):
        refuse("suffix", req.suffix, "there is no insertion mode")
    if getattr(req, "best_of", None) not in (None, 1):
        refuse("best_of", req.best_of, "one completion is generated per request")
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", "stream_options", "invalid_value")


# ------------------------------------------------------------------------------------------------- the job


@dataclass
class Payload:
    """One generation's work, handed to a worker: a chat or a completion prompt and its settings."""

    messages: list[dict] | None
    prompt: str | None
    params: textgen.Params
    """max_tokens is the request's (None: the server's cap); the worker caps it once the prompt is known."""
    requested: int | None
    received: float  # time.monotonic() when the request came in: time to first token starts here
    post: Callable[[tuple], None] = lambda event: None
    """Hands ("start", prompt_tokens) and ("text", delta) events to the streaming handler, from the worker."""

    @property
    def param(self) -> str:
        return "messages" if self.messages is not None else "prompt"


def params_of(req: Common, gen) -> textgen.Params:
    """The request's sampling settings; what it leaves out comes from the run's `generate:` settings."""
    return textgen.Params(max_tokens=0, temperature=gen.temperature if req.temperature is None else req.temperature,
                          top_p=gen.top_p if req.top_p is None else req.top_p, top_k=gen.top_k,
                          repetition_penalty=gen.repetition_penalty, seed=req.seed, stop=req.stop)


def make_work(state) -> Callable:
    """fn(payload, job) for the scheduler: prompt, budget, generation, token metrics. Runs in a worker."""
    served, settings, metrics = state.served, state.settings, state.metrics

    def work(p: Payload, job) -> textgen.Generation:
        tok = served.tokenizer
        if p.messages is not None:
            ids = textgen.chat_prompt(tok, p.messages)
        else:
            ids = textgen.completion_prompt(tok, p.prompt)
            if not ids:
                raise ApiError(400, "prompt: the prompt is empty; send the text the model should continue",
                               "prompt", "invalid_value")
        budget = textgen.token_budget(len(ids), p.requested, settings.max_tokens, served.context, p.param)
        p.post(("start", len(ids)))
        g = textgen.generate(served.model, tok, ids, replace(p.params, max_tokens=budget), stopped=job.stopped,
                             on_text=lambda text: p.post(("text", text)), device=served.device)
        metrics.prompt_tokens.inc(g.prompt_tokens)
        metrics.generated_tokens.inc(g.completion_tokens)
        if g.first_token_at is not None:
            metrics.ttft.observe(g.first_token_at - p.received)
        if g.finish_reason == "cancelled" and not job.cancel.is_set():
            raise TimeLimitExceeded(f"the generation ran past the server's time limit of {settings.timeout_s:g} s "
                                    f"after {g.completion_tokens} tokens")
        return g

    return work


# ------------------------------------------------------------------------------------------------- answers


class Shape:
    """Response objects of one endpoint: chat ("chat.completion") or legacy completions ("text_completion")."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _object(self, obj: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def answer(self, g: textgen.Generation) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": g.text}, "logprobs": None,
                      "finish_reason": g.finish_reason}
        else:
            choice = {"index": 0, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
        return self._object("chat.completion" if self.chat else "text_completion", [choice], usage=usage(g))

    def chunk(self, delta: dict | str, finish_reason: str | None = None, **extra) -> dict:
        """A chat delta ({"role"/"content"}) or a completion text, as one streamed choice."""
        if self.chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [choice], **extra)

    def usage_chunk(self, g: textgen.Generation) -> dict:
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [], usage=usage(g))


def usage(g: textgen.Generation) -> dict:
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}


def sse(obj: dict | str) -> str:
    """One server-sent event."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


# ------------------------------------------------------------------------------------------------- routes


def router(state) -> APIRouter:
    """The OpenAI routes of the app (tunelab.serve.app.create_app includes them)."""
    api = APIRouter()
    work = make_work(state)

    async def complete(request: Request, req: Common, shape: Shape, payload: Payload) -> Response:
        if req.stream:
            stream_opts = req.stream_options or StreamOptions()
            return await streamed(request, shape, payload, threading.Event(), stream_opts.include_usage)
        return JSONResponse(shape.answer(await run_limited(state, request, work, payload, param=payload.param)))

    async def streamed(request: Request, shape: Shape, payload: Payload, cancel: threading.Event,
                       include_usage: bool) -> Response:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        payload.post = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)

        async def run() -> None:  # the job's end is an event too, after every event the worker posted
            try:
                events.put_nowait(("done", await state.scheduler.run(work, payload, timeout=state.settings.timeout_s,
                                                                     cancel=cancel)))
            except Exception as e:  # noqa: BLE001 - handed to the stream
                events.put_nowait(("error", e))
            except asyncio.CancelledError as e:  # the job was dropped before it started (client gone)
                events.put_nowait(("error", e))
                raise

        runner = asyncio.ensure_future(run())
        first = asyncio.ensure_future(events.get())
        if not await until_done(request, first, cancel, state):
            runner.cancel()  # a job still queued leaves the queue
            return Response(status_code=CLIENT_GONE)
        kind, value = first.result()
        if kind == "error":  # before the 200: an HTTP status as for a plain request
            raise refusal(state, value) or value
        extra = {"usage": None} if include_usage else {}

        async def chunks():
            finished = False
            try:
                if shape.chat:
                    yield sse(shape.chunk({"role": "assistant", "content": ""}, **extra))
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        yield sse(shape.chunk({"content": value} if shape.chat else value, **extra))
                    elif kind == "done":
                        yield sse(shape.chunk({} if shape.chat else "", value.finish_reason, **extra))
                        if include_usage:
                            yield sse(shape.usage_chunk(value))
                        break
                    elif kind == "error":
                        error = refusal(state, value)
                        if error is None:
                            log.error("generation failed", exc_info=value)
                        yield sse(error.body() if error else error_body(
                            500, f"the generation failed ({type(value).__name__}: {value}); the server keeps "
                                 "running, its log has the traceback"))
                        break
                yield sse("[DONE]")
                finished = True
            finally:
                if not finished:  # the client went away: the worker stops within a token
                    cancel.set()
                    state.metrics.rejected.labels("disconnected").inc()
                    runner.cancel()

        return StreamingResponse(chunks(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request) -> Response:
        received = time.monotonic()
        state.require("chat.completions")
        state.check_model(req.model)
        refuse_unserved(req)
        messages = [{"role": ROLES[m.role], "content": m.content} for m in req.messages]
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        payload = Payload(messages, None, params_of(req, generate_settings(state)), requested, received)
        return await complete(request, req, Shape(True, state.served.id), payload)

    @api.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        received = time.monotonic()
        state.require("completions")
        state.check_model(req.model)
        refuse_unserved(req)
        payload = Payload(None, req.prompt, params_of(req, generate_settings(state)), req.max_tokens, received)
        return await complete(request, req, Shape(False, state.served.id), payload)

    return api


def generate_settings(state):
    """The served run's `generate:` settings (a model reference gets tunelab's defaults)."""
    from tunelab.config import GenerateConfig

    return state.served.gen or GenerateConfig()
