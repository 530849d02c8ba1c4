"""`tunelab serve` under load and bad input: the gate (API key from the flag or the environment, body size
with and without Content-Length, JSON that is malformed or not an object, no CDN-backed /docs), the
scheduler's limits as HTTP answers (a full queue is 503 + Retry-After, a request whose time limit passes in
the queue 503 at its deadline, one still running 504, clients that leave the queue free their places, a crash
500, and the server answers afterwards), /metrics and /health, the Scheduler itself, and `tunelab serve` as a
command (a real process that stops on SIGTERM, one-line errors with exit code 2 for a busy port, a port out of
range, a time limit of 0, an address not on this machine).

Concurrency is made deterministic with Events: the single worker is held (inside `predict`, or by a job of the
test's own) until the test has queued what it needs, and a job past its time limit is held until the test has
its answer, so the limit passes by construction. The one timing assumption, where a running request must pass
its limit: an idle worker takes a request within 1 s. No assertion depends on how long anything takes."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from serve_helpers import metric, post, raw_request, wait_for, with_predict

from tunelab.cli import main
from tunelab.serve.model import load_served
from tunelab.serve.scheduler import DeadlineExceeded, Job, QueueFull, Scheduler, TimeLimitExceeded

TEXT = "goal match team today news"


def classify(url: str, text: str = TEXT, **kwargs) -> httpx2.Response:
    return post(url, "/v1/classify", {"input": text}, **kwargs)


@pytest.fixture(scope="module")
def cls_served(cls_run_dir):
    return load_served(str(cls_run_dir))


class Held:
    """A predict that holds the worker on the text "hold" until `release()`; "crash" raises RuntimeError."""

    def __init__(self):
        self.gate, self.entered = threading.Event(), threading.Event()

    def __call__(self, real, run, records, source, log):
        texts = [r.get("text") for r in records]
        if "crash" in texts:
            raise RuntimeError("the model fell over")
        if "hold" in texts:
            self.entered.set()
            assert self.gate.wait(60), "the test never released the worker"
        return real(run, records, source, log)

    def release(self) -> None:
        self.gate.set()


# ---------------------------------------------------------------------------------------------
# The gate: API key, body size, JSON


def test_an_api_key_is_needed_everywhere_but_the_page_and_health(cls_served, serve):
    with serve(cls_served, api_key="s3cret") as (url, _):
        missing = classify(url)
        wrong = classify(url, headers={"Authorization": "Bearer nope"})
        basic = classify(url, headers={"Authorization": "Basic s3cret"})
        right = classify(url, headers={"Authorization": "Bearer s3cret"})
        metrics = httpx2.get(url + "/metrics")
        health, page = httpx2.get(url + "/health"), httpx2.get(url + "/")
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
    assert (basic.status_code, metrics.status_code) == (401, 401)
    assert right.status_code == 200 and health.status_code == 200
    assert page.status_code != 401


def test_the_api_key_comes_from_the_flag_or_the_environment(cls_served, monkeypatch, capsys):
    """cmd_serve builds the settings: $TUNELAB_API_KEY when --api-key is absent, the flag when given."""
    started = []

    def serve_forever(app, sock, **kwargs):
        started.append(app.state.settings)
        sock.close()

    monkeypatch.setattr("tunelab.serve.server.serve_forever", serve_forever)
    monkeypatch.setattr("tunelab.serve.model.load_served", lambda *a, **k: cls_served)
    monkeypatch.setenv("TUNELAB_API_KEY", "from-env")
    assert main(["serve", "RUN", "--port", "0"]) == 0
    assert main(["serve", "RUN", "--port", "0", "--api-key", "from-flag", "--queue-size", "3"]) == 0
    monkeypatch.delenv("TUNELAB_API_KEY")
    assert main(["serve", "RUN", "--port", "0"]) == 0
    assert [s.api_key for s in started] == ["from-env", "from-flag", None]
    assert (started[1].queue_size, started[1].host) == (3, "127.0.0.1")
    assert "serving " + cls_served.id in capsys.readouterr().out


def test_no_api_docs_page_loads_scripts_from_a_cdn_and_the_schema_stays_behind_the_key(cls_served, serve):
    """FastAPI's /docs (Swagger UI) fetches its CSS and JS from cdn.jsdelivr.net: not served. /openapi.json is."""
    key = {"Authorization": "Bearer s3cret"}
    with serve(cls_served, api_key="s3cret") as (url, _):
        docs = httpx2.get(url + "/docs", headers=key)
        schema, refused = httpx2.get(url + "/openapi.json", headers=key), httpx2.get(url + "/openapi.json")
    assert docs.status_code == 404 and "cdn" not in docs.text
    assert schema.status_code == 200 and "/v1/classify" in schema.json()["paths"]
    assert refused.status_code == 401


def test_a_body_over_the_limit_is_413_with_or_without_content_length(cls_served, serve):
    big = {"input": "goal " * 400}  # ~2 KB of JSON

    def chunks():
        yield b'{"input": "'
        for _ in range(200):
            yield b"goal " * 4
        yield b'"}'

    with serve(cls_served, max_body_bytes=1000) as (url, _):
        declared = post(url, "/v1/classify", big)
        chunked = httpx2.post(url + "/v1/classify", content=chunks(), timeout=60,
                              headers={"Content-Type": "application/json"})
        small = classify(url)
    assert (declared.status_code, declared.json()["error"]["code"]) == (413, "body_too_large")
    assert (chunked.status_code, chunked.json()["error"]["code"]) == (413, "body_too_large")
    assert "1000 bytes" in chunked.json()["error"]["message"]
    assert small.status_code == 200


@pytest.mark.parametrize("content, words", [
    (b'{"input": "goal', "the body is not valid JSON"),
    (b'["goal", "win"]', "the body must be a JSON object"),
    (b'"goal"', "the body must be a JSON object"),
])
def test_a_body_that_is_not_a_json_object_is_400(cls_served, serve, content, words):
    with serve(cls_served) as (url, _):
        r = httpx2.post(url + "/v1/classify", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"] and r.json()["error"]["param"] is None


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_not_sent_as_json_is_415_saying_which_header_to_send(cls_served, serve, content_type):
    # `curl -d '{...}'` sends a form type; so can any web page, cross-site and unasked: never run as JSON
    headers = {"Content-Type": content_type} if content_type else {}
    with serve(cls_served) as (url, state):
        r = httpx2.post(url + "/v1/classify", content=b'{"input": "goal"}', headers=headers)
        ran = metric(state, "tunelab_batch_size_count", endpoint="classify")
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    assert "Content-Type: application/json" in r.json()["error"]["message"] and ran == 0


# ---------------------------------------------------------------------------------------------
# The scheduler's limits, over HTTP


def test_a_full_queue_is_503_with_retry_after_and_the_server_still_answers(cls_served, serve):
    held = Held()
    with serve(with_predict(cls_served, held), queue_size=1, batch_size=1) as (url, state):
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(classify, url, "hold")
            assert held.entered.wait(30)
            waiting = pool.submit(classify, url)
            wait_for(lambda: state.scheduler.queued == 1, "the second request waits in the queue")
            refused = classify(url)
            held.release()
            assert (running.result().status_code, waiting.result().status_code) == (200, 200)
        after = classify(url)
        rejected = metric(state, "tunelab_rejected_total", reason="queue_full")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == {"message": refused.json()["error"]["message"], "type": "server_error",
                                       "param": None, "code": "server_overloaded"}
    assert int(refused.headers["retry-after"]) >= 1
    assert after.status_code == 200 and rejected == 1


def hold_worker(state) -> threading.Event:
    """Occupy the server's only worker with a job of the test's own (a deadline far away) until the returned
    Event is set: requests sent meanwhile wait in the queue, whatever the server's time limit."""
    gate = threading.Event()
    state.scheduler.submit(Job(lambda payload, job: gate.wait(60), None, time.monotonic() + 60))
    wait_for(lambda: state.scheduler.running == 1, "the worker takes the holding job")
    return gate


def test_a_request_whose_time_limit_passes_in_the_queue_is_503_at_its_deadline_and_never_runs(cls_served, serve):
    """The handler does not wait for the worker: at the deadline the request leaves the queue with 503
    queue_timeout (not 504 "stopped", which is for a request that ran)."""
    seen = []
    served = with_predict(cls_served, lambda real, run, records, *a: seen.extend(records) or real(run, records, *a))
    with serve(served, timeout_s=0.3) as (url, state):
        gate = hold_worker(state)
        try:
            late = classify(url, "too late")  # the worker is held until after this answer: it never starts
            queued_after = state.scheduler.queued
        finally:
            gate.set()
        wait_for(lambda: state.scheduler.running == 0, "the holding job ends")
        rejected = metric(state, "tunelab_rejected_total", reason="deadline")
    assert late.status_code == 503, late.text
    assert late.json()["error"]["code"] == "queue_timeout" and int(late.headers["retry-after"]) >= 1
    assert "waited in the queue past its time limit" in late.json()["error"]["message"]
    assert queued_after == 0 and seen == [] and rejected == 1


def test_a_request_still_running_past_its_time_limit_is_504_and_the_next_one_runs(cls_served, serve):
    """The held predict ends only after the 504 came (the deadline passed by construction). The one timing
    assumption: the idle worker takes the request within its 1 s limit."""
    held = Held()
    with serve(with_predict(cls_served, held), timeout_s=1.0) as (url, state):
        try:
            stuck = classify(url, "hold")  # the handler gives up 1 s after the deadline
        finally:
            held.release()
        wait_for(lambda: state.scheduler.running == 0, "the worker is free again")
        # the next request gets a generous limit: it shows that the worker is free, not how fast it is
        state.settings = dataclasses.replace(state.settings, timeout_s=120.0)
        after = classify(url)
        rejected = metric(state, "tunelab_rejected_total", reason="time_limit")
    assert stuck.status_code == 504 and stuck.json()["error"]["code"] == "timeout"
    assert "time limit of 1 s" in stuck.json()["error"]["message"]
    assert after.status_code == 200 and rejected == 1


def test_clients_that_leave_while_queued_free_their_places(cls_served, serve):
    """Two requests fill the queue, their clients go away: they leave the queue at once (not when a worker
    would pop them), and a new request is accepted."""
    with serve(cls_served, queue_size=2) as (url, state):
        gate = hold_worker(state)
        try:
            waiting = [raw_request(url, "/v1/classify", {"input": TEXT}) for _ in range(2)]
            wait_for(lambda: state.scheduler.queued == 2, "both requests wait in the queue")
            full = classify(url)
            for sock in waiting:
                sock.close()
            wait_for(lambda: state.scheduler.queued == 0, "the requests of the clients that left leave the queue")
            health = httpx2.get(url + "/health").json()
            with ThreadPoolExecutor(1) as pool:
                accepted = pool.submit(classify, url)
                wait_for(lambda: state.scheduler.queued == 1, "the new request waits in the queue")
                gate.set()
                assert accepted.result().status_code == 200
        finally:
            gate.set()
        gone = metric(state, "tunelab_rejected_total", reason="disconnected")
    assert full.status_code == 503 and full.json()["error"]["code"] == "server_overloaded"
    assert (health["queue"], gone) == (0, 2)


def test_a_crash_inside_predict_is_500_and_the_server_keeps_answering(cls_served, serve):
    with serve(with_predict(cls_served, Held())) as (url, _):
        crash = classify(url, "crash")
        after = classify(url)
    assert crash.status_code == 500
    error = crash.json()["error"]
    assert error["type"] == "server_error" and "RuntimeError: the model fell over" in error["message"]
    assert after.status_code == 200


def test_metrics_count_requests_by_route_and_status_and_health_says_what_is_served(cls_served, serve):
    with serve(cls_served) as (url, state):
        for body in ({"input": TEXT}, {"input": [TEXT, "chip"]}, {"input": []}):
            post(url, "/v1/classify", body)
        httpx2.get(url + "/nowhere")
        health = httpx2.get(url + "/health").json()
        text = httpx2.get(url + "/metrics").text
    assert metric(state, "tunelab_requests_total", route="/v1/classify", status="200") == 2
    assert metric(state, "tunelab_requests_total", route="/v1/classify", status="400") == 1
    assert metric(state, "tunelab_requests_total", route="unmatched", status="404") == 1
    assert re.search(r'^tunelab_request_seconds_count\{route="/v1/classify"\} 3\.0$', text, re.M)
    assert re.search(r'^tunelab_batch_size_count\{endpoint="classify"\} 2\.0$', text, re.M)
    assert "tunelab_queue_length 0.0" in text and "tunelab_running_requests 0.0" in text
    assert set(health) == {"status", "model", "task", "device", "queue", "running", "uptime_s"}
    assert (health["status"], health["model"], health["task"], health["device"]) == \
        ("ok", cls_served.id, "classification", "cpu")
    assert (health["queue"], health["running"]) == (0, 0) and health["uptime_s"] >= 0


# ---------------------------------------------------------------------------------------------
# The Scheduler itself


def scheduled(scheduler: Scheduler, calls: list):
    """Coroutine factory: run(payload, key) on `scheduler`, recording each model call in `calls`."""
    def batch(payloads):
        calls.append(list(payloads))
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [p.upper() for p in payloads]

    def one(payload, job):
        calls.append(payload)
        return payload.upper()

    def run(payload: str, key: str | None, cancel: threading.Event | None = None):
        return scheduler.run(batch if key else one, payload, timeout=30, batch_key=key, cancel=cancel)

    return run


def gather_all(*coroutines):
    async def go():
        return await asyncio.gather(*coroutines, return_exceptions=True)
    return go


def test_a_batch_takes_only_jobs_of_its_key_and_a_failing_batch_reruns_them_one_by_one():
    async def scenario():
        scheduler, calls = Scheduler(workers=1, queue_size=10, batch_size=8, batch_wait_s=0), []
        run = scheduled(scheduler, calls)
        # queued before the worker starts, so the batches do not depend on timing
        tasks = [asyncio.ensure_future(run(p, k)) for p, k in
                 [("a1", "a"), ("b1", "b"), ("plain", None), ("a2", "a"), ("x", "c"), ("bad", "c"), ("y", "c")]]
        await asyncio.sleep(0)
        assert scheduler.queued == 7
        scheduler.start()
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            scheduler.stop()
        return results, calls

    results, calls = asyncio.run(scenario())
    assert results[:5] + results[6:] == ["A1", "B1", "PLAIN", "A2", "X", "Y"]
    assert isinstance(results[5], ValueError)
    assert calls == [["a1", "a2"], ["b1"], "plain", ["x", "bad", "y"], ["x"], ["bad"], ["y"]]


def test_a_cancelled_job_is_skipped_and_a_stopped_scheduler_takes_nothing_new():
    async def scenario():
        scheduler, calls = Scheduler(workers=1, queue_size=10, batch_size=8, batch_wait_s=0), []
        run = scheduled(scheduler, calls)
        gone = threading.Event()
        gone.set()  # the client of this one has left
        tasks = [asyncio.ensure_future(run("kept", "k")), asyncio.ensure_future(run("left", "k", cancel=gone))]
        await asyncio.sleep(0)
        scheduler.start()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        scheduler.stop()
        with pytest.raises(QueueFull):
            await run("after", None)
        return results, calls

    (kept, left), calls = asyncio.run(scenario())
    assert kept == "KEPT" and isinstance(left, asyncio.CancelledError)
    assert calls == [["kept"]]  # the batch ran without the job whose client left


def test_stop_tells_queued_jobs_the_server_is_shutting_down_and_a_full_queue_refuses_at_once():
    async def scenario():
        scheduler, calls = Scheduler(workers=1, queue_size=2), []
        run = scheduled(scheduler, calls)
        queued = [asyncio.ensure_future(run(p, None)) for p in ("one", "two")]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as full:
            await run("three", None)
        scheduler.stop()  # never started: both jobs are still queued
        return await asyncio.gather(*queued, return_exceptions=True), full.value, calls

    results, full, calls = asyncio.run(scenario())
    assert all(isinstance(r, DeadlineExceeded) and "shutting down" in str(r) for r in results)
    assert full.retry_after >= 1 and calls == []


def held_scheduler(queue_size: int = 2):
    """A started one-worker Scheduler, a job function that waits for `release`, and `release`."""
    scheduler, release = Scheduler(workers=1, queue_size=queue_size), threading.Event()

    def slow(payload, job):
        assert release.wait(60), "the test never released the worker"
        return payload

    scheduler.start()
    return scheduler, slow, release


def unretrieved(loop) -> list[str]:
    """Collects what the loop reports as never retrieved (a future settled with nobody awaiting it)."""
    reports = []
    loop.set_exception_handler(lambda _, context: reports.append(context["message"]))
    return reports


def test_jobs_whose_clients_left_leave_the_queue_at_once_and_are_never_settled():
    async def scenario():
        scheduler, slow, release = held_scheduler()
        reports = unretrieved(asyncio.get_running_loop())
        try:
            busy = asyncio.ensure_future(scheduler.run(slow, "busy", timeout=60))
            while scheduler.running == 0:
                await asyncio.sleep(0.005)
            gone = [asyncio.ensure_future(scheduler.run(slow, f"gone{i}", timeout=60)) for i in range(2)]
            await asyncio.sleep(0)
            assert scheduler.queued == 2
            for task in gone:  # the handlers awaiting them are cancelled (their clients went away)
                task.cancel()
            await asyncio.gather(*gone, return_exceptions=True)
            queued = scheduler.queued
            new = asyncio.ensure_future(scheduler.run(slow, "new", timeout=60))  # room again: no QueueFull
            await asyncio.sleep(0)
            release.set()
            results = await asyncio.gather(busy, new)
        finally:
            release.set()
            scheduler.stop()
        gc.collect()  # a future settled with an unread exception reports itself when collected
        await asyncio.sleep(0)
        return queued, results, [t.cancelled() for t in gone], reports

    queued, results, cancelled, reports = asyncio.run(scenario())
    assert queued == 0 and results == ["busy", "new"] and cancelled == [True, True]
    assert reports == []


def test_a_job_still_queued_at_its_deadline_raises_deadline_exceeded_then_and_leaves_the_queue():
    """Not TimeLimitExceeded a grace second later: the job never started. The worker is held throughout, so
    the deadline passes in the queue by construction."""
    async def scenario():
        scheduler, slow, release = held_scheduler()
        reports = unretrieved(asyncio.get_running_loop())
        try:
            busy = asyncio.ensure_future(scheduler.run(slow, "busy", timeout=60))
            while scheduler.running == 0:
                await asyncio.sleep(0.005)
            with pytest.raises(DeadlineExceeded, match="waited in the queue past its time limit"):
                await scheduler.run(slow, "late", timeout=0.2)
            queued = scheduler.queued
            release.set()
            result = await busy
        finally:
            release.set()
            scheduler.stop()
        gc.collect()
        await asyncio.sleep(0)
        return queued, result, reports

    assert asyncio.run(scenario()) == (0, "busy", [])


def test_a_started_job_past_its_deadline_and_the_grace_second_raises_time_limit_exceeded():
    async def scenario():
        scheduler, slow, release = held_scheduler()
        reports = unretrieved(asyncio.get_running_loop())
        try:
            def fails_late(payload, job):
                slow(payload, job)
                raise RuntimeError("too late to matter")

            # released only after the error; the idle worker takes the job within its 1 s limit
            with pytest.raises(TimeLimitExceeded, match="time limit of 1 s"):
                await scheduler.run(fails_late, "stuck", timeout=1.0)
            release.set()
            while scheduler.running:  # the job then fails; nobody awaits it any more, and nothing complains
                await asyncio.sleep(0.005)
        finally:
            release.set()
            scheduler.stop()
        gc.collect()
        await asyncio.sleep(0)
        return reports

    assert asyncio.run(scenario()) == []


# ---------------------------------------------------------------------------------------------
# `tunelab serve` as a command


def test_tunelab_serve_runs_as_a_process_and_stops_on_sigterm(cls_run_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_API_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", str(cls_run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        found = re.search(r"at (http://127\.0\.0\.1:\d+):", "".join(lines))
        assert found, "".join(lines)
        url = found.group(1)
        wait_for(lambda: _answers(url), "the server answers /health", 60)
        models = httpx2.get(url + "/v1/models", headers={"Authorization": "Bearer k3y"})
        refused = httpx2.get(url + "/v1/models")
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then raises the signal it caught again: the status says SIGTERM
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert models.json()["data"][0]["task"] == "classification" and refused.status_code == 401


def _answers(url: str) -> bool:
    try:
        return httpx2.get(url + "/health", timeout=5).json()["status"] == "ok"
    except httpx2.TransportError:
        return False


def test_a_busy_port_is_one_line_and_exit_2(cls_run_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(cls_run_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port} is in use by another program; pass another --port" in err


@pytest.mark.parametrize("flags, words", [
    (["--port", "70000"], "serve --port: got 70000; it must be 0 to 65535"),
    (["--port", "-1"], "serve --port: got -1; it must be 0 to 65535"),
    (["--timeout", "0"], "serve --timeout: got 0; it must be more than 0 seconds"),
    (["--timeout", "nan"], "serve --timeout: got nan; it must be more than 0 seconds"),
    (["--host", "192.0.2.1"], "serve: --host 192.0.2.1: no such address on this machine"),
])
def test_a_bad_port_timeout_or_host_is_one_line_and_exit_2(cls_served, monkeypatch, capsys, flags, words):
    """Checked before the model loads or the server starts (both replaced here, so a missing check cannot hang
    the test in serve_forever)."""
    monkeypatch.setattr("tunelab.serve.server.serve_forever", lambda app, sock, **kwargs: sock.close())
    monkeypatch.setattr("tunelab.serve.model.load_served", lambda *a, **k: cls_served)
    assert main(["serve", "RUN", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert "another --port" not in err  # a host that is not here is not a port problem


def test_bind_words_an_address_that_is_not_here_and_a_port_out_of_range_as_tunelab_errors():
    from tunelab.errors import TunelabError
    from tunelab.serve.server import bind

    with pytest.raises(TunelabError, match=r"^serve: --host 192\.0\.2\.1: no such address on this machine"):
        bind("192.0.2.1", 0)
    with pytest.raises(TunelabError, match=r"^serve: --port 70000: .*0 to 65535"):
        bind("127.0.0.1", 70000)


def test_a_run_without_endpoints_or_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    pretrain = tmp_path / "pretrain-run"
    (pretrain / "model").mkdir(parents=True)
    (pretrain / "config.yaml").write_text("task: pretrain\nmodel: {name: 'scratch:gpt'}\ndata: {format: text}\n")
    assert main(["serve", str(pretrain), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"serve: {pretrain} is a pretrain run, which has no HTTP endpoints" in err
    assert main(["serve", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err and str(tmp_path / "nowhere") in err
    assert "is not a finished run" in err and "model.name" not in err


def test_queue_size_0_means_no_waiting_room_but_an_idle_worker_still_takes_a_request():
    release = threading.Event()

    async def scenario():
        scheduler = Scheduler(workers=1, queue_size=0)
        scheduler.start()
        try:
            def slow(payload, job):
                release.wait(10)
                return payload

            running = asyncio.ensure_future(scheduler.run(slow, "first", timeout=30))
            while scheduler.running == 0:  # the idle worker took it at once
                await asyncio.sleep(0.01)
            with pytest.raises(QueueFull):  # busy worker, no waiting room
                await scheduler.run(slow, "second", timeout=30)
            release.set()
            return await running
        finally:
            release.set()
            scheduler.stop()

    assert asyncio.run(scenario()) == "first"
