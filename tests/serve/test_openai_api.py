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

import json
import re
import threading
from pathlib import Path

import httpx2
import openai
import pytest
from scripted import smollm2_tokenizer, write_scripted
from serve_helpers import idle, metric, raw_request, read_reply, running, wait_for

TEXT = "Hi there! 😀 日本語 ok."
DELTAS = ["Hi", " there", "!", " 😀", " 日", "本", "語", " ok", "."]  # how SmolLM2's tokens complete characters
TEXT_TOKENS = 14  # five of them hold part of a character; the answer is these and EOS
MSG = [{"role": "user", "content": "Say hi."}]
LOOP_MAX = 200_000  # the looping server's max_tokens: far more than any test waits for


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
            "short": write_scripted(root / "short", "Tra la", loop=True, context=64, tokenizer=tok),
            "no_system": write_scripted(root / "no_system", TEXT, tokenizer=no_system_tokenizer())}


def no_system_tokenizer():
    """SmolLM2's tokenizer whose chat template raises for a system message, as Gemma's does."""
    tok = smollm2_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}"
                         + tok.chat_template)
    return tok


@pytest.fixture(scope="module")
def say(models):
    """(url, state) of the model that answers TEXT then EOS."""
    with running(models["say"]) as url_state:
        yield url_state


@pytest.fixture(scope="module")
def loop(models):
    """(url, state) of the model that loops for ever; one request may wait in the queue."""
    with running(models["loop"], max_tokens=LOOP_MAX, queue_size=1) as url_state:
        yield url_state


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
    with running(llama_run_dir) as url_state:
        yield url_state


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
    url, state = loop
    wait_for(lambda: idle(state), "the server is idle")
    generated, gone = metric(state, "tunelab_generated_tokens_total"), \
        metric(state, "tunelab_rejected_total", reason="disconnected")
    with httpx2.stream("POST", url + "/v1/chat/completions",
                       json={"messages": MSG, "stream": True, "max_tokens": LOOP_MAX}) as r:
        lines = r.iter_lines()
        seen = [line for line, _ in zip(lines, range(6)) if line.startswith("data: ")]
        assert json.loads(seen[1].removeprefix("data: "))["choices"][0]["delta"] == {"content": "Tra"}
    wait_for(lambda: idle(state), "the server is idle")
    assert metric(state, "tunelab_rejected_total", reason="disconnected") == gone + 1
    assert metric(state, "tunelab_generated_tokens_total") - generated < LOOP_MAX / 20


def test_a_client_that_leaves_a_plain_request_stops_the_generation(loop):
    url, state = loop
    wait_for(lambda: idle(state), "the server is idle")
    generated, gone = metric(state, "tunelab_generated_tokens_total"), \
        metric(state, "tunelab_rejected_total", reason="disconnected")
    sock = raw_request(url, "/v1/chat/completions", {"messages": MSG, "max_tokens": LOOP_MAX})
    wait_for(lambda: state.scheduler.running == 1, "the request runs")
    sock.close()
    wait_for(lambda: idle(state), "the server is idle")
    assert metric(state, "tunelab_rejected_total", reason="disconnected") == gone + 1
    assert metric(state, "tunelab_generated_tokens_total") - generated < LOOP_MAX / 20
    r = client(url).completions.create(model=state.served.id, prompt="Q\n", max_tokens=2)
    assert r.choices[0].text == "Tra la"  # the worker is free for the next request


def test_a_full_queue_answers_503_with_retry_after_even_for_a_stream(loop):
    url, state = loop
    wait_for(lambda: idle(state), "the server is idle")
    full = metric(state, "tunelab_rejected_total", reason="queue_full")
    with httpx2.stream("POST", url + "/v1/chat/completions",
                       json={"messages": MSG, "stream": True, "max_tokens": LOOP_MAX}) as busy:
        lines = busy.iter_lines()  # kept: a dropped line iterator closes the response
        next(lines)  # the worker is busy with it
        waiting = raw_request(url, "/v1/completions", {"prompt": "Q\n", "max_tokens": 2})
        wait_for(lambda: (state.scheduler.running, state.scheduler.queued) == (1, 1), "one request runs, one waits")
        for stream in (False, True):
            r = httpx2.post(url + "/v1/chat/completions", json={"messages": MSG, "stream": stream})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "server_overloaded"
        with pytest.raises(openai.APIStatusError) as e:
            client(url).chat.completions.create(model=state.served.id, messages=MSG)
        assert (e.value.status_code, e.value.code) == (503, "server_overloaded")
    status, reply = read_reply(waiting)  # the queued request runs once the stream is closed
    assert (status, reply["choices"][0]["text"]) == (200, "Tra la")
    assert metric(state, "tunelab_rejected_total", reason="queue_full") == full + 3
    wait_for(lambda: idle(state), "the server is idle")


class HeldAfterFirstToken:
    """Wraps a served model's forward: the prompt's pass (the first token) runs, each later pass waits for
    `release()`. A generation held so stays past its time limit by construction, whatever the machine's
    speed; `rearm()` holds the next one."""

    def __init__(self, served):
        self.real, self.gate = served.model.forward, threading.Event()
        served.model.forward = self.forward

    def forward(self, *args, **kwargs):
        if kwargs["input_ids"].shape[1] == 1:  # a step after the prompt's (the KV cache holds the rest)
            assert self.gate.wait(60), "the test never released the generation"
        return self.real(*args, **kwargs)

    def release(self) -> None:
        self.gate.set()

    def rearm(self) -> None:
        self.gate = threading.Event()


def test_an_error_after_the_stream_started_is_an_error_event(serve, models):
    """Past the time limit mid-stream the status is long sent: the error comes as an event, then [DONE].

    The generation is held after its first token until the error came; the one timing assumption is that the
    idle worker takes the request within its 1 s limit."""
    from tunelab.serve.model import load_served

    served = load_served(str(models["loop"]))
    held = HeldAfterFirstToken(served)
    with serve(served, timeout_s=1.0, max_tokens=LOOP_MAX) as (url, state):
        try:
            with httpx2.stream("POST", url + "/v1/chat/completions", json={"messages": MSG, "stream": True}) as r:
                assert r.status_code == 200
                data = events(r)
        finally:
            held.release()
        assert data[-1] == "[DONE]"
        assert [json.loads(d)["choices"][0]["delta"] for d in data[:2]] == [{"role": "assistant", "content": ""},
                                                                            {"content": "Tra"}]
        error = json.loads(data[2])["error"]
        assert (error["code"], error["type"]) == ("timeout", "server_error") and len(data) == 4
        assert "time limit of 1 s" in error["message"]
        wait_for(lambda: idle(state), "the released generation ends")
        held.rearm()
        try:
            with pytest.raises(openai.APIError, match="time limit"):
                list(client(url).chat.completions.create(model=state.served.id, messages=MSG, stream=True))
        finally:
            held.release()
        assert metric(state, "tunelab_rejected_total", reason="time_limit") == 2


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
    ("/v1/chat/completions", {"messages": MSG, "temperature": 1, "seed": 2**64}, 400, "seed"),  # int64, as OpenAI
    ("/v1/completions", {"prompt": "Q\n", "temperature": 1, "seed": -2**63 - 1}, 400, "seed"),
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


@pytest.mark.parametrize("body", [
    {"temperature": 1e-300},  # below 1e-5: greedy (dividing the logits by it would overflow to inf)
    {"temperature": 1e-6, "stream": True},
    {"temperature": 1, "seed": 2**63 - 1},  # the ends of OpenAI's int64 seed
    {"temperature": 1, "seed": -2**63, "stream": True},
])
def test_extreme_temperatures_and_seeds_are_answered(say, body):
    url, _ = say
    r = httpx2.post(url + "/v1/chat/completions", json={"messages": MSG, **body}, timeout=120)
    assert r.status_code == 200, r.text
    if body.get("stream"):
        chunks = [json.loads(d) for d in events(r)[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    else:
        text = r.json()["choices"][0]["message"]["content"]
    assert text == TEXT  # the scripted token's logit is 50 above the rest: sampling picks it too


def test_a_chat_template_that_refuses_the_messages_is_a_400_with_its_words(serve, models):
    """The template's raise_exception (e.g. "roles must alternate") is the client's mistake, not a crash."""
    with serve(models["no_system"]) as (url, _):
        refused = httpx2.post(url + "/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "system", "content": "Be brief."}, *MSG]})
        streamed = httpx2.post(url + "/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "developer", "content": "Be brief."}, *MSG], "stream": True})
        ok = httpx2.post(url + "/v1/chat/completions", json={"messages": MSG}, timeout=120)
    for r in (refused, streamed):
        assert r.status_code == 400, r.text
        assert r.json()["error"] == {"message": "messages: the model's chat template refused them: System role not "
                                                "supported", "type": "invalid_request_error", "param": "messages",
                                     "code": "invalid_messages"}
    assert ok.json()["choices"][0]["message"]["content"] == TEXT


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
    with running("builtin:smollm2-135m-instruct") as (url, state):
        c = client(url)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        chunks = list(c.chat.completions.create(model="builtin:smollm2-135m-instruct", messages=messages,
                                                max_tokens=8, stream=True, stream_options={"include_usage": True}))
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        plain = c.chat.completions.create(model=state.served.id, messages=messages, max_tokens=8)
    assert streamed == plain.choices[0].message.content and "\ufffd" not in streamed
    assert "Paris" in streamed
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens <= 8
