"""The playground page (GET /) in a real headless Chromium, driven through Playwright: it fetches nothing but the
server's own API, streams a chat reply token by token (the reply a plain request gets; Stop ends the generation
on the server), draws classification bars that agree with /v1/classify, shows what the other task endpoints
answer, and shows the server's error messages.

Every page a test opens has the browser's network restricted to the server under test: any other request is
aborted and recorded, and the test asserts there was none. Screenshots of each view go to the test's tmp_path
and, when TUNELAB_ARTIFACTS names a folder, there as well (never into the repository).

Skipped, with the reason, where Debian's chromium or the playwright package is missing (`.ci/run` installs
chromium when it can).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("the playground tests need Debian's Chromium (apt-get install chromium); none on PATH",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playground tests need the playwright package "
                                                             "(pip install -r requirements.txt)")

from tunelab.serve.app import PLAYGROUND  # noqa: E402

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # generous: 2 busy cores; nothing here asserts how long a step took


# ---------------------------------------------------------------------------------------------
# The browser, pages confined to one server, screenshots


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """open_page(url, width=1000) -> a page showing `url`, whose requests may only go to `url`'s server.

    The page has `.outside` (requests that went elsewhere, aborted), `.requests` (those let through) and
    `.errors` (uncaught JavaScript errors); the fixture asserts at the end that `.outside` and `.errors` stayed
    empty.
    """
    contexts = []

    def open_(url: str, width: int = 1000):
        context = browser.new_context(viewport={"width": width, "height": 800})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.outside, page.requests, page.errors = [], [], []

        def route(r):
            if r.request.url.startswith(url + "/"):
                page.requests.append(r.request.url[len(url):])
                r.continue_()
            else:
                page.outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(url + "/")
        return page

    yield open_
    pages = [p for c in contexts for p in c.pages]
    for context in contexts:
        context.close()
    assert [p.outside for p in pages if p.outside] == []
    assert [p.errors for p in pages if p.errors] == []


def screenshot(page, tmp_path: Path, name: str) -> None:
    """`name`.png of the whole page into tmp_path, and into $TUNELAB_ARTIFACTS when it is set."""
    folders = [tmp_path] + ([Path(os.environ["TUNELAB_ARTIFACTS"])] if os.environ.get("TUNELAB_ARTIFACTS") else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    print(f"screenshot {name}.png in {', '.join(map(str, folders))}")


# ---------------------------------------------------------------------------------------------
# The same requests the page makes, straight over HTTP


def call(url: str, path: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of GET (body None) or POST `path`."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def shown_error(page) -> str:
    """The error line, once the page shows one."""
    page.wait_for_selector("#error:not([hidden])")
    return page.text_content("#error")


def wait_for_error(page, error: dict) -> None:
    """Until the page's error line reads as the server's error object `error` (message, then param if any)."""
    text = "Error: " + error["message"] + (f" (param: {error['param']})" if error.get("param") else "")
    page.wait_for_function("t => { const e = document.getElementById('error'); return !e.hidden && "
                           "e.textContent === t; }", arg=text)


# ---------------------------------------------------------------------------------------------
# The page itself


def test_the_page_fetches_nothing_but_the_server_api(serve, cls_run_dir, open_page, tmp_path):
    html = PLAYGROUND.read_text(encoding="utf-8")
    assert re.findall(r"(?i)https?://|(?:src|href|action)\s*=\s*[\"']?//|url\(|@import", html) == []
    references = re.findall(r"(?i)\b(?:src|href|action)\s*=\s*[\"']([^\"']*)", html)
    assert references == ["data:,"]  # the empty favicon: without it the browser asks the server for one
    with serve(cls_run_dir) as (url, state):
        with urllib.request.urlopen(url + "/") as response:
            assert response.read().decode("utf-8") == html  # served as is
        page = open_page(url)
        page.wait_for_selector("#classify-view:not([hidden])")
        assert page.text_content("#model-id") == state.served.id
        assert page.text_content("#model-task") == "classification"
        assert page.is_hidden("#chat-view") and page.is_hidden("#tabs")  # one endpoint: one view, no tabs
        assert page.requests == ["/", "/v1/models"]
        screenshot(page, tmp_path, "playground-classify-empty")

        narrow = open_page(url, width=380)  # a phone: nothing sticks out sideways
        narrow.wait_for_selector("#classify-view:not([hidden])")
        assert narrow.evaluate("document.documentElement.scrollWidth") <= 380
        screenshot(narrow, tmp_path, "playground-380px")


def test_classification_bars_agree_with_the_classify_endpoint(serve, cls_run_dir, open_page, tmp_path, helpers):
    text = "goal match team today news about"
    with serve(cls_run_dir) as (url, state):
        status, expected = call(url, "/v1/classify", {"input": text})
        assert status == 200, expected
        scores = expected["data"][0]["scores"]
        ranked = sorted(scores, key=scores.get, reverse=True)
        page = open_page(url)
        page.fill("#classify-input", text)
        page.click("#classify-button")
        page.wait_for_selector("#classify-result .bar-row")
        rows = page.query_selector_all("#classify-result .bar-row")
        assert [r.get_attribute("data-label") for r in rows] == ranked
        assert sorted(ranked) == helpers.LABELS  # a bar for every label of the run
        assert [r.query_selector(".bar-value").text_content() for r in rows] == [
            f"{100 * scores[label]:.1f}%" for label in ranked]
        top = page.query_selector_all("#classify-result .bar-row.top")
        assert [t.get_attribute("data-label") for t in top] == [expected["data"][0]["label"]]
        widths = [r.query_selector(".bar-fill").evaluate("e => e.getBoundingClientRect().width") for r in rows]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
        screenshot(page, tmp_path, "playground-classify")


def test_server_errors_are_shown_and_the_api_key_is_sent(serve, cls_run_dir, open_page, tmp_path):
    with serve(cls_run_dir, api_key="right-key") as (url, state):
        missing = call(url, "/v1/models")
        wrong = call(url, "/v1/models", key="wrong-key")
        assert missing[0] == wrong[0] == 401
        page = open_page(url)  # the page itself is open; /v1/models is not
        wait_for_error(page, missing[1]["error"])
        assert page.text_content("#model-id") == "model unavailable"
        screenshot(page, tmp_path, "playground-error")

        page.fill("#api-key", "wrong-key")
        page.press("#api-key", "Enter")
        wait_for_error(page, wrong[1]["error"])

        page.fill("#api-key", "right-key")
        page.press("#api-key", "Enter")
        page.wait_for_selector("#classify-view:not([hidden])")
        assert page.is_hidden("#error")
        assert page.text_content("#model-id") == state.served.id
        assert page.evaluate("sessionStorage.getItem('tunelab.apiKey')") == "right-key"
        page.fill("#classify-input", "bread cheese soup")
        page.click("#classify-button")
        page.wait_for_selector("#classify-result .bar-row")

        # an error naming its field (the page refuses an empty text itself, so the request is emptied on the
        # way): the page writes the param beside the message
        status, body = call(url, "/v1/classify", {"input": ""}, key="right-key")
        assert status == 400 and body["error"]["param"]
        page.route(url + "/v1/classify", lambda r: r.continue_(post_data=json.dumps({"input": ""})))
        page.fill("#classify-input", "bread")
        page.click("#classify-button")
        wait_for_error(page, body["error"])
        assert page.query_selector_all("#classify-result .bar-row") == []  # the last result is cleared


# ---------------------------------------------------------------------------------------------
# Chat: a scripted causal LM (tests/serve/scripted.py) whose greedy reply is known token by token

REPLY = "Streamed one token at a time, <b>café ✓"
"""18 distinct SmolLM2 tokens; ' ✓' is three byte tokens, so its UTF-8 bytes come in pieces."""

RECORD_REPLY_STATES = """() => {
  // Every text the page writes into a reply, in order: each write replaces the .text span's text node, and a
  // mutation record keeps the node it added, so no state is lost however the browser batches the callbacks.
  window.replyStates = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (!r.target.classList || !r.target.classList.contains("text")) continue;
      if (!r.target.parentElement.classList.contains("assistant")) continue;
      for (const n of r.addedNodes) if (n.nodeType === Node.TEXT_NODE) window.replyStates.push(n.data);
    }
  }).observe(document.getElementById("messages"), { childList: true, subtree: true });
}"""


@pytest.fixture(scope="module")
def scripted_chat(tmp_path_factory) -> Path:
    from scripted import write_scripted

    return write_scripted(tmp_path_factory.mktemp("scripted") / "once", REPLY)


@pytest.fixture(scope="module")
def scripted_loop(tmp_path_factory) -> Path:
    """REPLY over and over, up to 100k tokens: a reply that is still streaming whenever the test acts."""
    from scripted import write_scripted

    return write_scripted(tmp_path_factory.mktemp("scripted") / "loop", REPLY, loop=True, context=100_000)


def send_chat(page, *lines: str) -> dict:
    """Type `lines` into the chat box (Shift+Enter between them), press Enter; the request body the page sent."""
    page.click("#chat-input")
    for i, line in enumerate(lines):
        if i:
            page.keyboard.press("Shift+Enter")
        page.keyboard.type(line)
    with page.expect_request("**/v1/chat/completions") as sent:
        page.keyboard.press("Enter")
    return json.loads(sent.value.post_data)


def grows(states: list[str]) -> bool:
    """Each state extends the one before it."""
    return all(b.startswith(a) and len(b) > len(a) for a, b in zip(states, states[1:]))


def test_chat_streams_the_reply_that_the_api_gives(serve, scripted_chat, open_page, tmp_path):
    with serve(scripted_chat) as (url, state):
        page = open_page(url)
        page.wait_for_selector("#chat-view:not([hidden])")
        assert page.text_content("#model-task") == "causal_lm"
        page.evaluate(RECORD_REPLY_STATES)
        page.click("#chat-view summary")  # the settings
        page.fill("#temperature", "0")
        sent = send_chat(page, "line one", "line two")
        assert sent == {"messages": [{"role": "user", "content": "line one\nline two"}], "stream": True,
                        "stream_options": {"include_usage": True}, "temperature": 0}
        page.wait_for_selector("#chat-stats:not(:empty)")

        status, plain = call(url, "/v1/chat/completions", {key: sent[key] for key in ("messages", "temperature")})
        assert status == 200, plain
        assert plain["choices"][0]["message"]["content"] == REPLY
        assert page.text_content("#messages .user .text") == "line one\nline two"
        assert page.text_content("#messages .assistant .text") == REPLY
        states = page.evaluate("window.replyStates")
        assert states[-1] == REPLY and grows(states) and len(states) >= 3  # two partial replies at least
        assert not any("\ufffd" in s for s in states)  # ✓'s bytes came in pieces, never shown broken
        tokens = plain["usage"]["completion_tokens"]
        assert page.text_content("#chat-stats").startswith(f"{tokens} tokens · ")
        screenshot(page, tmp_path, "playground-chat")

        # the next turn carries the conversation, and the system prompt when there is one
        page.fill("#system-prompt", "Be brief.")
        sent = send_chat(page, "again")
        assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "line one\nline two"},
                                    {"role": "assistant", "content": REPLY}, {"role": "user", "content": "again"}]
        page.wait_for_function("document.querySelectorAll('#messages .assistant').length === 2 && "
                               "!document.querySelector('#messages .streaming')")
        assert page.text_content("#messages .assistant:last-child .text") == REPLY

        page.click("#new-chat")
        assert page.query_selector_all("#messages .msg") == []
        sent = send_chat(page, "fresh")
        assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "fresh"}]
        page.wait_for_selector("#chat-stats:not(:empty)")


def test_stop_ends_the_stream_and_the_generation(serve, scripted_loop, open_page, tmp_path):
    with serve(scripted_loop, max_tokens=100_000) as (url, state):
        page = open_page(url)
        page.wait_for_selector("#chat-view:not([hidden])")
        page.evaluate(RECORD_REPLY_STATES)
        send_chat(page, "go on")
        page.wait_for_function("window.replyStates.length >= 3")
        assert page.is_disabled("#send")
        page.click("#stop")
        page.wait_for_selector("#messages .assistant .note")
        assert page.text_content("#messages .assistant .note") == "(stopped)"
        assert page.is_enabled("#send") and page.is_disabled("#stop")
        shown = page.text_content("#messages .assistant .text")
        assert (REPLY * (len(shown) // len(REPLY) + 1)).startswith(shown) and len(shown) > 0
        # the browser dropped the connection: the server stops generating, long before 100k tokens
        waited = 0.0
        while state.scheduler.running and waited < 60:
            time.sleep(0.05)
            waited += 0.05
        assert state.scheduler.running == 0
        screenshot(page, tmp_path, "playground-chat-stopped")


def test_an_error_inside_the_stream_is_shown(serve, scripted_loop, open_page, tmp_path):
    # the request's time limit passes while it streams: the server ends the stream with an error event
    with serve(scripted_loop, max_tokens=100_000, timeout_s=1.0) as (url, state):
        page = open_page(url)
        page.wait_for_selector("#chat-view:not([hidden])")
        send_chat(page, "go on")
        assert "time limit" in shown_error(page)  # the server's message, not the page's own
        page.wait_for_selector("#messages .assistant.failed")
        assert page.text_content("#messages .assistant .note") == "(ended by the error above)"
        assert page.is_enabled("#send")
        screenshot(page, tmp_path, "playground-chat-error")


# ---------------------------------------------------------------------------------------------
# The forms of the other tasks show what their endpoints answer


def check_translate(page, url) -> None:
    text = "moon tree fish bird"
    page.fill("#translate-input", text)
    page.click("#translate-button")
    page.wait_for_selector("#translate-output:not(:empty)")
    assert page.text_content("#translate-output") == call(url, "/v1/translate", {"input": text})[1]["data"][0]["text"]


def check_entities(page, url) -> None:
    from token_helpers import ner_records

    texts = [" ".join(r["tokens"]) for r in ner_records(8, seed=7)]
    found = call(url, "/v1/entities", {"input": texts})[1]["data"]
    text, entities = next((t, row["entities"]) for t, row in zip(texts, found) if len(row["entities"]) >= 2)
    page.fill("#entities-input", text)
    page.click("#entities-button")
    page.wait_for_selector("#entities-table")
    marks = page.query_selector_all("#entities-result .marked mark")
    assert [(m.evaluate("m => m.firstChild.data"), m.query_selector(".tag").text_content()) for m in marks] == [
        (e["text"], e["label"]) for e in sorted(entities, key=lambda e: e["start"])]
    # the highlighted text reads as the input, tags aside
    assert page.evaluate("""() => { const box = document.querySelector('#entities-result .marked').cloneNode(true);
                                    box.querySelectorAll('.tag').forEach((t) => t.remove());
                                    return box.textContent; }""") == text
    rows = page.query_selector_all("#entities-table tbody tr")
    assert [r.query_selector("td").text_content() for r in rows] == [e["text"] for e in entities]


def check_answer(page, url) -> None:
    question, context = "which animal is there ?", "the old house near the river was big and a red fox was on the hill"
    expected = call(url, "/v1/answer", {"question": question, "context": context})[1]
    assert expected["answer"] and context[expected["start"]:expected["end"]] == expected["answer"]
    page.fill("#answer-question", question)
    page.fill("#answer-context", context)
    page.click("#answer-button")
    page.wait_for_selector("#answer-text")
    assert page.text_content("#answer-text") == expected["answer"]
    assert page.text_content("#answer-result .marked mark") == expected["answer"]
    assert page.text_content("#answer-result .marked") == context


def check_embeddings(page, url) -> None:
    texts = ["bread cheese soup", "the match team goal win"]
    a, b = (d["embedding"] for d in call(url, "/v1/embeddings", {"input": texts})[1]["data"])
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))  # noqa: E731 - summed in the page's order
    page.fill("#embed-a", texts[0])
    page.fill("#embed-b", texts[1])
    page.click("#embed-button")
    page.wait_for_selector("#embed-stats")
    shown = [d.text_content() for d in page.query_selector_all("#embed-stats dd")]
    assert shown[0] == str(len(a)) and shown[1] == f"{math.sqrt(dot(a, a)):.4f}"
    assert shown[2].startswith(", ".join(f"{x:.4f}" for x in a[:8]))
    assert shown[3] == f"{dot(a, b) / math.sqrt(dot(a, a) * dot(b, b)):.4f}"


@pytest.mark.parametrize("run, view, check", [
    ("seq2seq_run_dir", "translate", check_translate), ("ner_run_dir", "entities", check_entities),
    ("qa_run_dir", "answer", check_answer), ("retrieval_run_dir", "embeddings", check_embeddings)])
def test_each_task_form_shows_what_its_endpoint_answers(run, view, check, request, serve, open_page, tmp_path):
    with serve(request.getfixturevalue(run)) as (url, state):
        page = open_page(url)
        page.wait_for_selector(f"#{view}-view:not([hidden])")
        check(page, url)
        assert page.is_hidden("#error")
        screenshot(page, tmp_path, f"playground-{view}")
