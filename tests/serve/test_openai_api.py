"""/v1/chat/completions and /v1/completions on the real server, through the official `openai` client and as
raw server-sent events (httpx2).

Exact answers come from scripted models (tests/serve/scripted.py): the real SmolLM2 tokenizer with a one-layer
model whose greedy answer is a given text, so the streamed deltas, finish reasons, usage counts and stop
strings are pinned, and a text whose characters the byte-level BPE splits across tokens shows that no delta
carries a broken character. A looping scripted model never ends by itself: disconnects, the queue and the
time limit use it. The tiny Llama causal_lm run (root conftest) checks seeds and that a served run answers
what `tunelab predict` generates.
"""
from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from pathlib import Path

import httpx2
import openai
import pytest
from scripted import smollm2_tokenizer, write_scripted

TEXT = "Hi there! 😀 日本語 ok."
DELTAS = ["Hi", " there", "!", " 😀", " 日", "本", "語", " ok", "."]  # how SmolLM2's tokens complete characters
TEXT_TOKENS = 14  # five of them hold part of a character; the answer is these and EOS
MSG = [{"role": "user", "content": "Say hi."}]
LOOP_MAX = 200_000  # the looping server's max_tokens: far more than any test waits for


@contextlib.contextmanager
def server(ref, **settings):
    """The app serving `ref` on 127.0.0.1 (a free port): (url, state). Module-scoped fixtures use it, as one
    server answers many tests (the conftest's `serve` fixture starts one per test)."""
    from tunelab.serve import ServeSettings
    from tunelab.serve.app import create_app
    from tunelab.serve.model import load_served
    from tunelab.serve.server import ServerThread

    gate = create_app(load_served(str(ref)), ServeSettings(**settings))
    with ServerThread(gate) as url:
        yield url, gate.state


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tok) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scripted")
    return {"say": write_scripted(root / "say", TEXT, tokenizer=tok),
            "loop": write_scripted(root / "loop", "Tra la", loop=True, context=LOOP_MAX * 2, tokenizer=tok),
            "short": write_scripted(root / "short", "Tra la", loop=True, context=64, tokenizer=tok)}


@pytest.fixture(scope="module")
def say(models):
    """(url, state) of the model that answers TEXT then EOS."""
    with server(models["say"]) as running:
        yield running


@pytest.fixture(scope="module")
def loop(models):
    """(url, state) of the model that loops for ever; one request may wait in the queue."""
    with server(models["loop"], max_tokens=LOOP_MAX, queue_size=1) as running:
        yield running


def chat_ids(tok, messages=MSG) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def events(response) -> list[str]:
    """The data of each server-sent event of a streamed httpx2 response."""
    body = "".join(response.iter_text())
    assert body.endswith("\n\n")
    parts = body[:-2].split("\n\n")
    assert all(p.startswith("data: ") for p in parts), parts
    return [p.removeprefix("data: ") for p in parts]


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of /metrics (0 when the series does not exist yet)."""
    text = httpx2.get(url + "/metrics").text
    found = re.search(rf"^{name}{re.escape('{' + labels + '}' if labels else '')} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(url: str, **expected) -> dict:
    """Poll /health until its fields equal `expected` (a generous bound: a failure, not a timing claim)."""
    deadline = time.monotonic() + 60
    while True:
        health = httpx2.get(url + "/health").json()
        if all(health[k] == v for k, v in expected.items()):
            return health
        assert time.monotonic() < deadline, f"/health never showed {expected}: {health}"
        time.sleep(0.02)


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


# ------------------------------------------------------------------------------------------------- answers


def test_models_lists_the_served_model(say):
    url, state = say
    (card,) = client(url).models.list().data
    assert card.id == state.served.id and card.owned_by == "tunelab"
    assert card.model_extra["endpoints"] == ["/v1/chat/completions", "/v1/completions"]
    assert (card.model_extra["context_length"], card.model_extra["max_tokens"]) == (2048, 512)


def test_chat_answer(say, tok):
    url, state = say
    r = client(url).chat.completions.create(model=state.served.id, messages=MSG)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == state.served.id
    (choice,) = r.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", TEXT, "stop")
    prompt = len(chat_ids(tok))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == \
        (prompt, TEXT_TOKENS + 1, prompt + TEXT_TOKENS + 1)  # EOS is a generated token


def test_chat_stream_chunks_in_openais_order_with_usage(say, tok):
    url, state = say
    chunks = list(client(url).chat.completions.create(model=state.served.id, messages=MSG, stream=True,
                                                      stream_options={"include_usage": True}))
    role, *content, last, usage = chunks
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert (role.choices[0].delta.role, role.choices[0].delta.content) == ("assistant", "")
    assert [c.choices[0].delta.content for c in content] == DELTAS
    assert all("\ufffd" not in d for d in DELTAS)
    assert [c.choices[0].finish_reason for c in [role, *content]] == [None] * (len(DELTAS) + 1)
    assert last.choices[0].finish_reason == "stop"
    assert (last.choices[0].delta.content, last.choices[0].delta.role) == (None, None)
    assert all(c.usage is None for c in chunks[:-1])
    assert usage.choices == []
    prompt = len(chat_ids(tok))
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.total_tokens) == \
        (prompt, TEXT_TOKENS + 1, prompt + TEXT_TOKENS + 1)


@pytest.mark.parametrize("include_usage", [True, False])
def test_raw_server_sent_events(say, include_usage):
    url, _ = say
    body = {"messages": MSG, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with httpx2.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        data = events(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, *({"content": d} for d in DELTAS), {}]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish == [None] * (len(DELTAS) + 1) + ["stop"]
    if include_usage:
        assert [c["usage"] for c in chunks[:-1]] == [None] * (len(DELTAS) + 2)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == TEXT_TOKENS + 1
    else:
        assert all("usage" not in c for c in chunks) and len(chunks) == len(DELTAS) + 2


def test_completions(say, tok):
    url, state = say
    c = client(url)
    r = c.completions.create(model=state.served.id, prompt="Q\n")
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert (r.choices[0].text, r.choices[0].finish_reason) == (TEXT, "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(tok("Q\n")["input_ids"]), TEXT_TOKENS + 1)
    chunks = list(c.completions.create(model=state.served.id, prompt="Q\n", stream=True))
    assert [ch.choices[0].text for ch in chunks] == DELTAS + [""]
    assert [ch.choices[0].finish_reason for ch in chunks] == [None] * len(DELTAS) + ["stop"]


def test_stop_strings_cut_the_answer(say):
    url, state = say
    c = client(url)
    r = c.chat.completions.create(model=state.served.id, messages=MSG, stop="日本")
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Hi there! 😀 ", "stop")
    assert r.usage.completion_tokens == 9  # 本 completes with the 9th token: generation stops there
    # '語 o' starts in one delta and ends in the next: '語' is held back and never sent
    chunks = list(c.chat.completions.create(model=state.served.id, messages=MSG, stop=["xyz", "語 o"], stream=True))
    assert [ch.choices[0].delta.content for ch in chunks[1:-1]] == ["Hi", " there", "!", " 😀", " 日", "本"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    r = c.completions.create(model=state.served.id, prompt="Q\n", stop=["!"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == ("Hi there", "stop")


def test_max_tokens_ends_with_length(say):
    url, state = say
    c = client(url)
    r = c.chat.completions.create(model=state.served.id, messages=MSG, max_tokens=3)
    assert (r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens) == \
        ("Hi there!", "length", 3)
    r = c.chat.completions.create(model=state.served.id, messages=MSG, max_completion_tokens=2)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Hi there", "length")
    chunks = list(c.completions.create(model=state.served.id, prompt="Q\n", max_tokens=1, stream=True))
    assert [(ch.choices[0].text, ch.choices[0].finish_reason) for ch in chunks] == [("Hi", None), ("", "length")]


def test_max_tokens_is_capped_by_the_server_and_by_the_context_left(serve, models, tok):
    with serve(models["short"], max_tokens=40) as (url, state):
        c = client(url)
        r = c.chat.completions.create(model=state.served.id, messages=MSG, max_tokens=1000)
        prompt = len(chat_ids(tok))
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt, 64 - prompt)  # the context of 64
        assert r.choices[0].finish_reason == "length"
        r = c.completions.create(model=state.served.id, prompt="Q\n", max_tokens=1000)
        assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (40, "length")  # the server's cap


# ------------------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def llama(llama_run_dir):
    with server(llama_run_dir) as running:
        yield running


def test_the_same_seed_gives_the_same_text(llama):
    url, state = llama
    c = client(url)

    def ask(seed: int, stream: bool = False) -> str:
        r = c.chat.completions.create(model=state.served.id, messages=MSG, max_tokens=16, temperature=1.0,
                                      seed=seed, stream=stream)
        return "".join(ch.choices[0].delta.content or "" for ch in r) if stream else r.choices[0].message.content

    first = ask(11)
    assert ask(11) == first and ask(11, stream=True) == first
    assert ask(12) != first  # 16 draws from the random tiny Llama: a coincidence is out of reach


def test_a_served_run_answers_what_tunelab_predict_generates(llama, llama_run_dir):
    from tunelab.runs import predict_records

    url, state = llama
    question = "Name three colours."
    (row,) = predict_records(llama_run_dir, None, "test", texts=[question],
                             overrides=["generate.max_new_tokens=12"], log=lambda *_: None)
    r = client(url).chat.completions.create(model=state.served.id, max_tokens=12,
                                            messages=[{"role": "user", "content": question}])
    assert r.choices[0].message.content.strip() == row["generated"]  # predict strips its generations
    assert row["generated"]


# ------------------------------------------------------------------------------------------------- going away


def test_a_client_that_closes_a_stream_stops_the_generation(loop):
    url, _ = loop
    wait_for(url, running=0, queue=0)
    generated, gone = metric(url, "tunelab_generated_tokens_total"), \
        metric(url, "tunelab_rejected_total", 'reason="disconnected"')
    with httpx2.stream("POST", url + "/v1/chat/completions",
                       json={"messages": MSG, "stream": True, "max_tokens": LOOP_MAX}) as r:
        lines = r.iter_lines()
        seen = [line for line, _ in zip(lines, range(6)) if line.startswith("data: ")]
        assert json.loads(seen[1].removeprefix("data: "))["choices"][0]["delta"] == {"content": "Tra"}
    wait_for(url, running=0, queue=0)
    assert metric(url, "tunelab_rejected_total", 'reason="disconnected"') == gone + 1
    assert metric(url, "tunelab_generated_tokens_total") - generated < LOOP_MAX / 20


def test_a_client_that_leaves_a_plain_request_stops_the_generation(loop):
    url, state = loop
    wait_for(url, running=0, queue=0)
    generated, gone = metric(url, "tunelab_generated_tokens_total"), \
        metric(url, "tunelab_rejected_total", 'reason="disconnected"')
    sock = raw_request(url, "/v1/chat/completions", {"messages": MSG, "max_tokens": LOOP_MAX})
    wait_for(url, running=1)
    sock.close()
    wait_for(url, running=0, queue=0)
    assert metric(url, "tunelab_rejected_total", 'reason="disconnected"') == gone + 1
    assert metric(url, "tunelab_generated_tokens_total") - generated < LOOP_MAX / 20
    r = client(url).completions.create(model=state.served.id, prompt="Q\n", max_tokens=2)
    assert r.choices[0].text == "Tra la"  # the worker is free for the next request


def test_a_full_queue_answers_503_with_retry_after_even_for_a_stream(loop):
    url, state = loop
    wait_for(url, running=0, queue=0)
    full = metric(url, "tunelab_rejected_total", 'reason="queue_full"')
    with httpx2.stream("POST", url + "/v1/chat/completions",
                       json={"messages": MSG, "stream": True, "max_tokens": LOOP_MAX}) as running:
        lines = running.iter_lines()  # kept: a dropped line iterator closes the response
        next(lines)  # the worker is busy with it
        waiting = raw_request(url, "/v1/completions", {"prompt": "Q\n", "max_tokens": 2})
        wait_for(url, running=1, queue=1)
        for stream in (False, True):
            r = httpx2.post(url + "/v1/chat/completions", json={"messages": MSG, "stream": stream})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "server_overloaded"
        with pytest.raises(openai.APIStatusError) as e:
            client(url).chat.completions.create(model=state.served.id, messages=MSG)
        assert (e.value.status_code, e.value.code) == (503, "server_overloaded")
    status, reply = read_reply(waiting)  # the queued request runs once the stream is closed
    assert (status, reply["choices"][0]["text"]) == (200, "Tra la")
    assert metric(url, "tunelab_rejected_total", 'reason="queue_full"') == full + 3
    wait_for(url, running=0, queue=0)


def test_an_error_after_the_stream_started_is_an_error_event(serve, models):
    """Past the time limit mid-stream the status is long sent: the error comes as an event, then [DONE]."""
    with serve(models["loop"], timeout_s=2.0, max_tokens=LOOP_MAX) as (url, state):
        with httpx2.stream("POST", url + "/v1/chat/completions", json={"messages": MSG, "stream": True}) as r:
            assert r.status_code == 200
            data = events(r)
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["error"]["code"] == "timeout"
        assert all("choices" in json.loads(d) for d in data[:-2])
        with pytest.raises(openai.APIError, match="time limit"):
            list(client(url).chat.completions.create(model=state.served.id, messages=MSG, stream=True))
        assert metric(url, "tunelab_rejected_total", 'reason="time_limit"') == 2


# ------------------------------------------------------------------------------------------------- bad requests

TOO_LONG = [{"role": "user", "content": "x " * 3000}]  # ~3000 tokens, the context is 2048


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}, 400,
     "messages[0].tool_calls"),
    ("/v1/chat/completions", {"messages": MSG, "temperature": "0.5"}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": MSG, "temperature": 2.5}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": MSG, "top_p": 0}, 400, "top_p"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": MSG, "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {"messages": MSG, "stop": 3}, 400, "stop"),
    ("/v1/chat/completions", {"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/chat/completions", {"messages": MSG, "seed": 1.5}, 400, "seed"),
    ("/v1/chat/completions", {"messages": MSG, "n": 2}, 400, "n"),
    ("/v1/chat/completions", {"messages": MSG, "presence_penalty": 0.5}, 400, "presence_penalty"),
    ("/v1/chat/completions", {"messages": MSG, "frequency_penalty": -1}, 400, "frequency_penalty"),
    ("/v1/chat/completions", {"messages": MSG, "logprobs": True}, 400, "logprobs"),
    ("/v1/chat/completions", {"messages": MSG, "logit_bias": {"42": 5}}, 400, "logit_bias"),
    ("/v1/chat/completions", {"messages": MSG, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ("/v1/chat/completions", {"messages": MSG, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/chat/completions", {"messages": MSG, "tools": []}, 400, "tools"),
    ("/v1/chat/completions", {"messages": TOO_LONG}, 400, "messages"),
    ("/v1/chat/completions", {"messages": TOO_LONG, "stream": True}, 400, "messages"),
    ("/v1/chat/completions", {"messages": MSG, "model": "gpt-4o"}, 404, "model"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x " * 3000}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "hi", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": "hi", "suffix": "end"}, 400, "suffix"),
    ("/v1/completions", {"prompt": "hi", "messages": MSG}, 400, "messages"),
])
def test_bad_requests_name_the_field_and_the_server_goes_on(say, path, body, status, param):
    url, _ = say
    r = httpx2.post(url + path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"]
    assert error["type"] == "invalid_request_error"
    ok = httpx2.post(url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1})
    assert ok.json()["choices"][0]["message"]["content"] == "Hi"


def test_malformed_json_and_the_context_message(say):
    url, _ = say
    r = httpx2.post(url + "/v1/chat/completions", content=b'{"messages": [', headers={"content-type":
                                                                                       "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx2.post(url + "/v1/chat/completions", json={"messages": TOO_LONG})
    assert re.fullmatch(r"This model's maximum context length is 2048 tokens; your messages resulted in \d{4} "
                        r"tokens.*", r.json()["error"]["message"])
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_the_openai_client_shows_the_errors(say):
    url, state = say
    c = client(url)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=state.served.id, messages=[])
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=state.served.id, messages=MSG, n=2)
    assert e.value.param == "n" and e.value.code == "unsupported_value"
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
    assert (e.value.param, e.value.code) == ("model", "model_not_found")


def test_a_classification_server_has_no_chat(serve, cls_run_dir):
    with serve(cls_run_dir) as (url, _):
        for path, body in (("/v1/chat/completions", {"messages": MSG}), ("/v1/completions", {"prompt": "hi"})):
            r = httpx2.post(url + path, json=body)
            assert r.status_code == 404 and r.json()["error"]["code"] == "unsupported_endpoint"
            assert "/v1/classify" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------------------- SmolLM2


@pytest.mark.integration
def test_smollm2_streams_a_greedy_answer():
    with server("builtin:smollm2-135m-instruct") as (url, state):
        c = client(url)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        chunks = list(c.chat.completions.create(model="builtin:smollm2-135m-instruct", messages=messages,
                                                max_tokens=8, stream=True, stream_options={"include_usage": True}))
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        plain = c.chat.completions.create(model=state.served.id, messages=messages, max_tokens=8)
    assert streamed == plain.choices[0].message.content and "\ufffd" not in streamed
    assert "Paris" in streamed
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens <= 8
