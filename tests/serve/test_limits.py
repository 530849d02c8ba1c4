"""`tunelab serve` under load and bad input: the gate (API key from the flag or the environment, body size
with and without Content-Length, JSON that is malformed or not an object), the scheduler's limits as HTTP
answers (a full queue is 503 + Retry-After, a request whose time limit passes in the queue 503, one still
running 504, a crash 500, and the server answers afterwards), /metrics and /health, the Scheduler itself, and
`tunelab serve` as a command (a real process that stops on SIGTERM, one-line errors with exit code 2).

Concurrency is made deterministic with Events: the single worker is held inside `predict` until the test has
queued what it needs; no assertion depends on how long anything takes."""
from __future__ import annotations

import asyncio
import dataclasses
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

from tunelab.cli import main
from tunelab.serve.model import load_served
from tunelab.serve.scheduler import DeadlineExceeded, QueueFull, Scheduler

TEXT = "goal match team today news"


@pytest.fixture(scope="module")
def cls_served(cls_run_dir):
    return load_served(str(cls_run_dir))


def post(url: str, path: str = "/v1/classify", body=None, **kwargs) -> httpx2.Response:
    return httpx2.post(url + path, json={"input": TEXT} if body is None else body, timeout=60, **kwargs)


def wait_for(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def with_predict(served, predict):
    """A copy of `served` whose task predicts with `predict(real_predict, run, records, source, log)`."""
    real = served.run.task.predict
    task = dataclasses.replace(served.run.task, predict=lambda *a: predict(real, *a))
    return dataclasses.replace(served, run=dataclasses.replace(served.run, task=task))


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


def metric(state, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    head = name + ("{" + want + "}" if want else "")
    for line in state.metrics.text().decode().splitlines():
        if line.startswith(head + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------------------------------------
# The gate: API key, body size, JSON


def test_an_api_key_is_needed_everywhere_but_the_page_and_health(cls_served, serve):
    with serve(cls_served, api_key="s3cret") as (url, _):
        missing = post(url)
        wrong = post(url, headers={"Authorization": "Bearer nope"})
        basic = post(url, headers={"Authorization": "Basic s3cret"})
        right = post(url, headers={"Authorization": "Bearer s3cret"})
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


def test_a_body_over_the_limit_is_413_with_or_without_content_length(cls_served, serve):
    big = {"input": "goal " * 400}  # ~2 KB of JSON

    def chunks():
        yield b'{"input": "'
        for _ in range(200):
            yield b"goal " * 4
        yield b'"}'

    with serve(cls_served, max_body_bytes=1000) as (url, _):
        declared = post(url, body=big)
        chunked = httpx2.post(url + "/v1/classify", content=chunks(), timeout=60,
                              headers={"Content-Type": "application/json"})
        small = post(url)
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


# ---------------------------------------------------------------------------------------------
# The scheduler's limits, over HTTP


def test_a_full_queue_is_503_with_retry_after_and_the_server_still_answers(cls_served, serve):
    held = Held()
    with serve(with_predict(cls_served, held), queue_size=1, batch_size=1) as (url, state):
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post, url, body={"input": "hold"})
            assert held.entered.wait(30)
            waiting = pool.submit(post, url)
            wait_for(lambda: state.scheduler.queued == 1, "the second request waits in the queue")
            refused = post(url)
            held.release()
            assert (running.result().status_code, waiting.result().status_code) == (200, 200)
        after = post(url)
        rejected = metric(state, "tunelab_rejected_total", reason="queue_full")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == {"message": refused.json()["error"]["message"], "type": "server_error",
                                       "param": None, "code": "server_overloaded"}
    assert int(refused.headers["retry-after"]) >= 1
    assert after.status_code == 200 and rejected == 1


def test_a_request_whose_time_limit_passes_in_the_queue_is_503_and_never_runs(cls_served, serve):
    held, seen = Held(), []
    served = with_predict(cls_served, lambda real, run, records, *a: seen.extend(records) or held(real, run,
                                                                                                   records, *a))
    with serve(served, batch_size=1) as (url, state):
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post, url, body={"input": "hold"})
            assert held.entered.wait(30)
            waiting = pool.submit(post, url, body={"input": "too late"})
            wait_for(lambda: state.scheduler.queued == 1, "the second request waits in the queue")
            # age the queued job past its deadline instead of sleeping through a time limit
            state.scheduler._queue[0].deadline = time.monotonic() - 1
            held.release()
            late = waiting.result()
            assert running.result().status_code == 200
        rejected = metric(state, "tunelab_rejected_total", reason="deadline")
    assert late.status_code == 503 and late.json()["error"]["code"] == "queue_timeout"
    assert "waited in the queue past its time limit" in late.json()["error"]["message"]
    assert "too late" not in [r["text"] for r in seen] and rejected == 1


def test_a_request_still_running_past_its_time_limit_is_504_and_the_next_one_runs(cls_served, serve):
    held = Held()
    with serve(with_predict(cls_served, held), timeout_s=1.0) as (url, state):
        stuck = post(url, body={"input": "hold"})  # the handler gives up 1 s after the deadline
        held.release()
        after = post(url)
        rejected = metric(state, "tunelab_rejected_total", reason="time_limit")
    assert stuck.status_code == 504 and stuck.json()["error"]["code"] == "timeout"
    assert "time limit of 1 s" in stuck.json()["error"]["message"]
    assert after.status_code == 200 and rejected == 1


def test_a_crash_inside_predict_is_500_and_the_server_keeps_answering(cls_served, serve):
    with serve(with_predict(cls_served, Held())) as (url, _):
        crash = post(url, body={"input": "crash"})
        after = post(url)
    assert crash.status_code == 500
    error = crash.json()["error"]
    assert error["type"] == "server_error" and "RuntimeError: the model fell over" in error["message"]
    assert after.status_code == 200


def test_metrics_count_requests_by_route_and_status_and_health_says_what_is_served(cls_served, serve):
    with serve(cls_served) as (url, state):
        for body in ({"input": TEXT}, {"input": [TEXT, "chip"]}, {"input": []}):
            post(url, body=body)
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
