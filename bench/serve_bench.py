"""bench part `serve`: `tunelab serve` under a bounded load on this machine's loopback (127.0.0.1 only).

Every server is a real `tunelab serve` child process started on a free port (`--port 0`; its first line names
the port), ready once GET /health answers, and stopped with SIGTERM at the end (or on any failure). The load
comes from this process: CLIENTS threads, each with its own keep-alive `httpx2` connection, taking the next
request of a fixed list until it is empty or the phase's time cap (CAP_S) has passed, so a phase always stops.
Every answer's status is counted; anything but 200 and 503 (queue full) stops the bench with the counts.

1. Classification: `tunelab train` of examples/bbc-news.yaml cut short (RUN: MiniLM-L6, max_length 256; its
   accuracy is not the point, only that it is a real BBC News classifier), in a child process, in a fresh work
   folder (bench/out/serve-work/, smoke: serve-smoke-work/). Two servers of that run: with server-side batching
   (`--batch-size 16`, the default) and without (`--batch-size 1`). Each gets the same CLASSIFY requests, one
   BBC test article of the run's split per POST /v1/classify, at their real length, from 8 clients, in the
   order A B B A (drift hits both alike). Per phase: requests/s (answers over the phase's wall time), p50/p99
   latency, statuses, and the mean batch size from the change of /metrics' tunelab_batch_size over the phase.
   Both servers' labels are compared article by article (batching must not change an answer).
2. Chat: builtin:smollm2-135m-instruct served with its defaults (one worker), CHAT prompts (the first ShareGPT
   questions of 20-300 characters) as streaming chat completions (SSE, `stream_options.include_usage`), greedy,
   max_tokens 64; 1 client, then 4 at once (they queue for the one worker), then 4 and 1 again. Per request:
   time to the first text, tokens/s of its stream (completion_tokens - 1 over the time from the first text to
   the last), total latency.
3. Overload: the same model behind `--queue-size 2`; a burst of OVERLOAD requests released together by a
   barrier: the excess must be answered 503 with Retry-After at once, and /metrics must count them.

Every server first answers a few warm-up requests that are not counted. Stored as bench/out/serve-<stamp>.json;
`markdown()` renders results.md's section from that file alone.

    python bench/run.py --part serve            # the measurement (about 4 minutes on 2 idle cores)
    python bench/run.py --part serve --smoke    # a tiny job that checks the part end to end
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import record  # noqa: E402
from run import MARKER  # noqa: E402

CLIENTS = 8
# examples/bbc-news.yaml on 160 training articles for 1 epoch (10 steps) at max_length 256; the test split
# stays 10% of all 2,225 articles (223), whose texts the classification phases send.
RUN = dict(limit=160, max_length=256, epochs=1, batch_size=16, lr=1.0e-4, weight_decay=0.01, warmup_ratio=0.06,
           max_grad_norm=1.0, seed=42, val_fraction=0.1, test_fraction=0.1)
CLASSIFY = dict(requests=320, clients=CLIENTS, batch_sizes=[16, 1], order=[16, 1, 1, 16], warmup=16)
CHAT = dict(model="builtin:smollm2-135m-instruct", prompts=12, max_tokens=64, order=[1, 4, 4, 1], warmup=1,
            prompt_chars=[20, 300])
OVERLOAD = dict(queue_size=2, burst=16, max_tokens=64)
CAP_S = 150  # a phase stops taking requests after this many seconds
REQUEST_TIMEOUT_S = 180  # the server's own limit is 120 s, queueing included
START_TIMEOUT_S = 300  # a server must print its port and answer /health within this
SMOKE_RUN = dict(limit=32, max_length=64, epochs=1, batch_size=8, val_fraction=0.02, test_fraction=0.02)
SMOKE_CLASSIFY = dict(requests=24, warmup=4)
SMOKE_CHAT = dict(prompts=3, max_tokens=8)
SMOKE_OVERLOAD = dict(burst=8, max_tokens=8)


def job(smoke: bool, fast_bf16: bool) -> dict:
    """The part's settings, as stored with its figures: training in bf16 where the CPU has it natively
    (tunelab's `auto`, written out), else fp32; the server runs the saved weights as `tunelab serve` does."""
    run = {**RUN, **(SMOKE_RUN if smoke else {}), "precision": "bf16" if fast_bf16 else "fp32"}
    return {"run": run, "classify": {**CLASSIFY, **(SMOKE_CLASSIFY if smoke else {})},
            "chat": {**CHAT, **(SMOKE_CHAT if smoke else {})},
            "overload": {**OVERLOAD, **(SMOKE_OVERLOAD if smoke else {})}, "cap_s": CAP_S,
            "request_timeout_s": REQUEST_TIMEOUT_S}


def run(smoke: bool = False) -> dict:
    """The whole part; stored as bench/out/serve[-smoke]-<stamp>.json, returned. Fails (SystemExit) on any
    status other than 200 and 503, after storing what was measured."""
    import explain_bench
    import tradeoff

    machine = record.machine()
    j = job(smoke, machine["fast_bf16"])
    work = HERE / "out" / ("serve-smoke-work" if smoke else "serve-work")
    shutil.rmtree(work, ignore_errors=True)  # the part's own scratch folder: every run starts from nothing
    work.mkdir(parents=True)
    path = record.new_path("serve", smoke)
    rec = {"part": "serve", "smoke": smoke, "job": j, "started": record.utc_now(), "load_before": record.load(),
           "machine": machine, "cpu_flags": explain_bench.cpu_flags()["flags"], "complete": False}
    run_dir = work / "bbc-news"
    cfg = tradeoff.run_config({"teacher": j["run"]}, run_dir, {"name": "full"})
    rec["train"] = tradeoff.train_run("bbc-news", cfg, work)
    record.save(path, rec)
    texts, source = test_articles(cfg, j["classify"]["requests"] + j["classify"]["warmup"])
    rec["classify"] = classify_part(run_dir, texts, source, j["classify"], work)
    rec["classify"]["tokens"] = token_counts(cfg, texts[j["classify"]["warmup"]:])
    record.save(path, rec)
    check_statuses(rec, path)
    rec["chat"] = chat_part(chat_prompts(j["chat"]), j["chat"], work)
    record.save(path, rec)
    check_statuses(rec, path)
    rec["overload"] = overload_part(chat_prompts(j["chat"]), j["chat"], j["overload"], work)
    rec.update(finished=record.utc_now(), load_after=record.load())
    record.save(path, rec)
    check_statuses(rec, path)
    rec["complete"] = True
    record.save(path, rec)
    return rec


# ---------------------------------------------------------------------------------------------
# The requests


def test_articles(cfg: dict, n: int) -> tuple[list[str], str]:
    """n texts from the run's test split (repeated in order when n is larger), and where they come from."""
    from tunelab.config import config_from_dict
    from tunelab.tasks.classification import split_records

    c = config_from_dict(cfg)
    records, source = split_records(c, lambda _: None)["test"]
    texts = [r[c.data.text_field] for r in records]
    return [texts[i % len(texts)] for i in range(n)], f"{source}: {len(texts)} test articles"


def token_counts(cfg: dict, texts: list[str]) -> list[int]:
    """Each text's length in the run's tokens, [CLS]/[SEP] included, before the run cuts it to max_length."""
    from tunelab.models.load import load_tokenizer
    from tunelab.models.registry import resolve_model

    tok = load_tokenizer(resolve_model(cfg["model"]["name"]))
    return [len(tok(t, verbose=False)["input_ids"]) for t in texts]


def chat_prompts(chat: dict) -> list[str]:
    """The first `prompts` ShareGPT questions (first human turns) of prompt_chars characters, in file order."""
    from tunelab.data.sources import load_records

    low, high = chat["prompt_chars"]
    out = []
    for rec in load_records("builtin:sharegpt", lambda _: None):
        turn = rec["conversations"][0]
        if turn["from"] == "human" and low <= len(turn["value"].strip()) <= high:
            out.append(turn["value"].strip())
            if len(out) == chat["prompts"]:
                break
    return out


# ---------------------------------------------------------------------------------------------
# The server, a child process


class Server:
    """`tunelab serve TARGET --port 0 OPTIONS` in a child process; `with Server(...) as s:` gives s.url once
    /health answers and stops it with SIGTERM (kill after 30 s) when the block ends, however it ends."""

    def __init__(self, name: str, target: str, options: list[str], log_path: Path):
        self.name, self.log_path = name, log_path
        self.args = ["serve", str(target), "--port", "0", *options]
        self.proc: subprocess.Popen | None = None
        self.url, self.start_seconds, self.exit_code = "", 0.0, None

    def __enter__(self) -> "Server":
        print("$ tunelab " + " ".join(self.args), flush=True)
        t0 = time.perf_counter()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab", *self.args], stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=HERE.parent)
        try:
            self.url = self._wait_for_port(t0 + START_TIMEOUT_S)
            self._wait_for_health(t0 + START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = round(time.perf_counter() - t0, 1)
        print(f"  ready at {self.url} after {self.start_seconds:.0f} s", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _fail(self, why: str) -> SystemExit:
        return SystemExit(f"tunelab {' '.join(self.args)}: {why}; {self.log_path}:\n"
                          f"{self.log_path.read_text()[-3000:]}")

    def _wait_for_port(self, deadline: float) -> str:
        """The URL of the first line 'serving ... at http://127.0.0.1:PORT...'."""
        while time.perf_counter() < deadline:
            found = re.search(r"^serving .* at (http://127\.0\.0\.1:\d+)", self.log_path.read_text(), re.M)
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise self._fail(f"exited with code {self.proc.returncode} before serving")
            time.sleep(0.2)
        raise self._fail(f"printed no 'serving ... at URL' line within {START_TIMEOUT_S} s")

    def _wait_for_health(self, deadline: float) -> None:
        import httpx2

        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"exited with code {self.proc.returncode}")
            try:
                if httpx2.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx2.TransportError:  # listening, but uvicorn not accepting yet
                pass
            time.sleep(0.2)
        raise self._fail(f"GET /health did not answer 200 within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful stop), then SIGKILL if it is still running after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.exit_code = self.proc.returncode
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def facts(self) -> dict:
        return {"name": self.name, "command": "tunelab " + " ".join(self.args), "start_seconds": self.start_seconds,
                "exit_code": self.exit_code}


def metrics(url: str) -> dict[str, float]:
    """/metrics' samples as {'name{label="value",...}': value} (prometheus_client's own parser)."""
    import httpx2
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx2.get(url + "/metrics", timeout=30).text
    return {name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}": value
            for family in text_string_to_metric_families(text) for name, labels, value, *_ in family.samples}


def summed(samples: dict[str, float], name: str) -> float:
    """A sample summed over its labels (e.g. tunelab_batch_size_sum over every endpoint)."""
    return sum(v for k, v in samples.items() if k.split("{")[0] == name)


# ---------------------------------------------------------------------------------------------
# The load generator


def drive(bodies: list, clients: int, send, cap_s: float) -> dict:
    """`bodies` sent by `clients` threads, each taking the next one (in order) until none is left or cap_s has
    passed; `send(client, body) -> dict` (with "status" and "seconds") answers one. Returns every answer
    (in request order, "start" and "end" in seconds from the phase's start) and the phase's wall seconds."""
    import httpx2

    results: list[dict | None] = [None] * len(bodies)
    lock, nxt = threading.Lock(), [0]
    start_together = threading.Barrier(clients)
    t0 = time.perf_counter()

    def client_loop() -> None:
        with httpx2.Client(timeout=REQUEST_TIMEOUT_S) as client:
            start_together.wait()
            while True:
                with lock:
                    i = nxt[0]
                    if i >= len(bodies) or time.perf_counter() - t0 > cap_s:
                        return
                    nxt[0] += 1
                begin = time.perf_counter()
                try:
                    out = send(client, bodies[i])
                except Exception as e:  # noqa: BLE001 - a broken connection or answer is counted, and fails the part
                    out = {"status": f"error: {type(e).__name__}: {str(e)[:200]}",
                           "seconds": time.perf_counter() - begin}
                results[i] = {**out, "start": round(begin - t0, 4), "end": round(time.perf_counter() - t0, 4)}

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for r in results if r is not None]
    wall = max(r["end"] for r in done) - min(r["start"] for r in done) if done else 0.0
    return {"results": done, "sent": len(done), "planned": len(bodies), "capped": len(done) < len(bodies),
            "wall_seconds": round(wall, 3)}


def classify_one(url: str):
    """A sender of one POST /v1/classify with one article; the answer's label and its probability."""
    def send(client, text: str) -> dict:
        t0 = time.perf_counter()
        r = client.post(url + "/v1/classify", json={"input": text})
        out = {"status": r.status_code, "seconds": time.perf_counter() - t0}
        if r.status_code == 200:
            data = r.json().get("data") or [{}]
            if len(data) != 1 or data[0].get("index") != 0 or data[0].get("label") not in data[0].get("scores", {}):
                return {**out, "status": "bad body"}
            out.update(label=data[0]["label"], probability=data[0]["scores"][data[0]["label"]])
        else:
            out.update(refusal(r))
        return out
    return send


def refusal(r) -> dict:
    """What a non-200 answer said: its Retry-After and its error object's code."""
    try:
        code = r.json()["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        code = None
    return {"retry_after": r.headers.get("retry-after"), "code": code}


def chat_body(prompt: str, max_tokens: int, stream: bool) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0.0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def chat_stream_one(url: str, max_tokens: int):
    """A sender of one streaming chat completion, read as server-sent events `data: {json}` ... `data: [DONE]`:
    the time to the first text, the time of the last, completion_tokens from the usage chunk, the text."""
    def send(client, prompt: str) -> dict:
        t0 = time.perf_counter()
        first = last = None
        pieces, usage, finish, done = [], None, None, False
        with client.stream("POST", url + "/v1/chat/completions", json=chat_body(prompt, max_tokens, True)) as r:
            if r.status_code != 200:
                r.read()
                return {"status": r.status_code, "seconds": time.perf_counter() - t0, **refusal(r)}
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[len("data: "):])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    if choice.get("delta", {}).get("content"):
                        last = time.perf_counter()
                        first = first or last
                        pieces.append(choice["delta"]["content"])
                    finish = choice.get("finish_reason") or finish
        end = time.perf_counter()
        if not done or usage is None or first is None or finish is None:
            return {"status": "bad stream", "seconds": end - t0}
        tokens = usage["completion_tokens"]
        return {"status": 200, "seconds": end - t0, "ttft": first - t0, "tokens": tokens,
                "prompt_tokens": usage["prompt_tokens"], "finish": finish, "chunks": len(pieces),
                "tokens_per_s": (tokens - 1) / (last - first) if tokens > 1 and last > first else None,
                "text": "".join(pieces)}
    return send


def chat_plain_one(url: str, max_tokens: int):
    """A sender of one non-streaming chat completion (the overload burst)."""
    def send(client, prompt: str) -> dict:
        t0 = time.perf_counter()
        r = client.post(url + "/v1/chat/completions", json=chat_body(prompt, max_tokens, False))
        out = {"status": r.status_code, "seconds": time.perf_counter() - t0}
        if r.status_code == 200:
            out["tokens"] = r.json()["usage"]["completion_tokens"]
        else:
            out.update(refusal(r))
        return out
    return send


# ---------------------------------------------------------------------------------------------
# The three measurements


def classify_part(run_dir: Path, texts: list[str], source: str, c: dict, work: Path) -> dict:
    """Both servers up at once (an idle one costs nothing), the phases in c["order"]; labels compared."""
    warm, measured = texts[:c["warmup"]], texts[c["warmup"]:]
    phases = []
    with ExitStack() as stack:
        servers = {b: stack.enter_context(Server(f"classify --batch-size {b}", str(run_dir), ["--batch-size", str(b)],
                                                    work / f"classify-b{b}.log"))
                   for b in c["batch_sizes"]}
        for b, server in servers.items():
            drive(warm, c["clients"], classify_one(server.url), CAP_S)
        for b in c["order"]:
            phases.append(classify_phase(servers[b], b, measured, c["clients"]))
    return {"data": source, "servers": {str(b): s.facts() for b, s in servers.items()}, "phases": phases,
            "agreement": agreement(phases)}


def classify_phase(server: Server, batch_size: int, texts: list[str], clients: int) -> dict:
    before = metrics(server.url)
    load_before = record.load()
    phase = drive(texts, clients, classify_one(server.url), CAP_S)
    after = metrics(server.url)
    batches = summed(after, "tunelab_batch_size_count") - summed(before, "tunelab_batch_size_count")
    requests = summed(after, "tunelab_batch_size_sum") - summed(before, "tunelab_batch_size_sum")
    phase.update(batch_size=batch_size, clients=clients, load_before=load_before, load_after=record.load(),
                 batches=batches, batched_requests=requests, mean_batch=requests / batches if batches else None)
    print(f"classify --batch-size {batch_size}: {rate(phase):.1f} requests/s, mean batch "
          f"{phase['mean_batch'] or 0:.1f}, statuses {dict(statuses(phase))}", flush=True)
    return phase


def agreement(phases: list[dict]) -> dict:
    """Per article: do all phases give the same label (batching pads articles together: it must not change
    an answer), and the largest difference of that label's probability between phases."""
    answered = [[r.get("label") for r in p["results"]] for p in phases]
    probs = [[r.get("probability") for r in p["results"]] for p in phases]
    n = min(len(a) for a in answered)
    same = sum(len({a[i] for a in answered}) == 1 and answered[0][i] is not None for i in range(n))
    diffs = [max(p[i] for p in probs) - min(p[i] for p in probs) for i in range(n)
             if all(p[i] is not None for p in probs) and len({a[i] for a in answered}) == 1]
    return {"articles": n, "same_label": same, "max_probability_diff": max(diffs) if diffs else None}


def chat_part(prompts: list[str], c: dict, work: Path) -> dict:
    with Server("chat", c["model"], [], work / "chat.log") as server:
        warm = drive(prompts[:c["warmup"]], 1, chat_stream_one(server.url, c["max_tokens"]), CAP_S)
        phases = []
        for clients in c["order"]:
            load_before = record.load()
            phase = drive(prompts, clients, chat_stream_one(server.url, c["max_tokens"]), CAP_S)
            phase.update(clients=clients, load_before=load_before, load_after=record.load())
            phases.append(phase)
            ok = [r for r in phase["results"] if r["status"] == 200]
            tps = [r["tokens_per_s"] for r in ok if r["tokens_per_s"]]
            print(f"chat, {clients} client(s): TTFT p50 {pct([r['ttft'] for r in ok], 50):.2f} s, "
                  f"{statistics.median(tps) if tps else float('nan'):.1f} tokens/s per stream, statuses "
                  f"{dict(statuses(phase))}", flush=True)
        end_metrics = metrics(server.url)
    return {"server": server.facts(), "phases": phases, "prompts": prompts, "warmup": warm,
            "same_text": same_texts(phases),
            "server_ttft_count": summed(end_metrics, "tunelab_time_to_first_token_seconds_count"),
            "server_generated_tokens": summed(end_metrics, "tunelab_generated_tokens_total")}


def same_texts(phases: list[dict]) -> dict:
    """Greedy decoding: is each prompt's answer the same text in every phase (alone or queued)?"""
    texts = [[r.get("text") for r in p["results"]] for p in phases]
    n = min(len(t) for t in texts)
    return {"prompts": n, "same": sum(len({t[i] for t in texts}) == 1 and texts[0][i] is not None
                                      for i in range(n))}


def overload_part(prompts: list[str], chat: dict, o: dict, work: Path) -> dict:
    """A burst against `--queue-size` o["queue_size"]: all requests released at once by a barrier."""
    import httpx2

    burst = [prompts[i % len(prompts)] for i in range(o["burst"])]
    with Server(f"chat --queue-size {o['queue_size']}", chat["model"], ["--queue-size", str(o["queue_size"])],
                work / "overload.log") as server:
        drive(prompts[:1], 1, chat_plain_one(server.url, o["max_tokens"]), CAP_S)  # warm-up
        before = metrics(server.url)
        phase = drive(burst, o["burst"], chat_plain_one(server.url, o["max_tokens"]), CAP_S)
        after = metrics(server.url)
        health = httpx2.get(server.url + "/health", timeout=30).json()
    rejected = {k.split('reason="')[1].rstrip('"}'): v - before.get(k, 0.0) for k, v in after.items()
                if k.startswith("tunelab_rejected_total{") and v - before.get(k, 0.0)}
    phase.update(clients=o["burst"], max_tokens=o["max_tokens"], server=server.facts(), rejected=rejected,
                 health_after=health)
    print(f"overload, {o['burst']} at once, --queue-size {o['queue_size']}: statuses {dict(statuses(phase))}, "
          f"/metrics rejected {rejected}", flush=True)
    return phase


# ---------------------------------------------------------------------------------------------
# Checks and figures


def statuses(phase: dict) -> Counter:
    return Counter(str(r["status"]) for r in phase["results"])


def all_phases(rec: dict) -> list[tuple[str, dict]]:
    named = [(f"classify --batch-size {p['batch_size']}", p) for p in rec.get("classify", {}).get("phases", [])]
    named += [(f"chat, {p['clients']} client(s)", p) for p in rec.get("chat", {}).get("phases", [])]
    if "overload" in rec:
        named.append(("overload burst", rec["overload"]))
    return named


def check_statuses(rec: dict, path: Path) -> None:
    """Only 200 and 503 may answer; every 503 must carry Retry-After; the overload burst must have been
    refused in part and /metrics must count each refusal; no phase may hit its cap. Otherwise stop loudly."""
    problems = []
    for name, phase in all_phases(rec):
        other = {s: n for s, n in statuses(phase).items() if s not in ("200", "503")}
        if other:
            problems.append(f"{name}: statuses {other}")
        missing = sum(r["status"] == 503 and not (r.get("retry_after") or "").isdigit() for r in phase["results"])
        if missing:
            problems.append(f"{name}: {missing} answers 503 without a Retry-After in seconds")
        if phase["capped"]:
            problems.append(f"{name}: stopped by the {CAP_S} s cap after {phase['sent']} of {phase['planned']}")
    o = rec.get("overload")
    if o is not None:
        refused = statuses(o)["503"]
        if not refused or refused == o["planned"]:
            problems.append(f"overload burst: {refused} of {o['planned']} refused; expected some, not all")
        if o["rejected"].get("queue_full", 0) != refused:
            problems.append(f"overload burst: 503 answers {refused}, /metrics queue_full {o['rejected']}")
    if problems:
        rec["problems"] = problems
        record.save(path, rec)
        raise SystemExit("bench serve: " + "; ".join(problems) + f" (measurements in {path})")


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (linear between order statistics; with few values p99 is near the maximum)."""
    values = sorted(values)
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def rate(phase: dict) -> float:
    """Answers per second over the phase's wall time (first request sent to last answer)."""
    ok = sum(r["status"] == 200 for r in phase["results"])
    return ok / phase["wall_seconds"] if phase["wall_seconds"] else float("nan")


def status_text(phase: dict) -> str:
    return ", ".join(f"{n} x {s}" for s, n in sorted(statuses(phase).items()))


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


# ---------------------------------------------------------------------------------------------
# results.md


def classify_table(c: dict) -> list[str]:
    lines = ["| server | round | requests | requests/s | p50 latency (ms) | p99 latency (ms) | statuses | "
             "mean batch (/metrics) | load before / after |", "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    seen: Counter = Counter()
    for p in c["phases"]:
        seen[p["batch_size"]] += 1
        lat = [r["seconds"] for r in p["results"] if r["status"] == 200]
        batch = f"{p['mean_batch']:.2f}" if p["mean_batch"] is not None else "-"
        lines.append(f"| --batch-size {p['batch_size']} | {seen[p['batch_size']]} | {p['sent']} | {rate(p):.1f} | "
                     f"{ms(pct(lat, 50))} | {ms(pct(lat, 99))} | {status_text(p)} | {batch} | "
                     f"{p['load_before'][0]:.2f} / {p['load_after'][0]:.2f} |")
    return lines


def chat_table(c: dict) -> list[str]:
    lines = ["| clients | round | requests | time to first token p50 / p99 (s) | tokens/s per stream: median "
             "(min-max) | total latency p50 / p99 (s) | tokens/s, all streams | statuses |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    seen: Counter = Counter()
    for p in c["phases"]:
        seen[p["clients"]] += 1
        ok = [r for r in p["results"] if r["status"] == 200]
        ttft, total = [r["ttft"] for r in ok], [r["seconds"] for r in ok]
        tps = [r["tokens_per_s"] for r in ok if r["tokens_per_s"]]
        overall = sum(r["tokens"] for r in ok) / p["wall_seconds"] if p["wall_seconds"] else float("nan")
        spread = f"{statistics.median(tps):.1f} ({min(tps):.1f}-{max(tps):.1f})" if tps else "-"
        lines.append(f"| {p['clients']} | {seen[p['clients']]} | {p['sent']} | {pct(ttft, 50):.2f} / "
                     f"{pct(ttft, 99):.2f} | {spread} | {pct(total, 50):.2f} / {pct(total, 99):.2f} | "
                     f"{overall:.1f} | {status_text(p)} |")
    return lines


def overload_text(o: dict, q: int) -> str:
    ok = [r for r in o["results"] if r["status"] == 200]
    refused = [r for r in o["results"] if r["status"] == 503]
    ref = "none answered 503"
    if refused:
        retry = sorted({int(r["retry_after"]) for r in refused})
        ref = (f"{len(refused)} answered 503 (code {refused[0].get('code')}) in "
               f"{ms(pct([r['seconds'] for r in refused], 50))} ms median, "
               f"{ms(max(r['seconds'] for r in refused))} ms at most, Retry-After "
               f"{retry[0] if len(retry) == 1 else f'{retry[0]}-{retry[-1]}'} s")
    served = (f"{len(ok)} answered 200 in {pct([r['seconds'] for r in ok], 50):.2f} s median, "
              f"{max(r['seconds'] for r in ok):.2f} s at most" if ok else "none answered 200")
    other = {s: n for s, n in statuses(o).items() if s not in ("200", "503")}
    return (f"{o['planned']} non-streaming chat requests (max_tokens {o['max_tokens']}) released "
            f"together against `--queue-size {q}` (one worker): {served}; {ref}; "
            f"{'no other status' if not other else f'other statuses {other}'}. /metrics counted rejections "
            f"{o['rejected']}; /health afterwards: {o['health_after']['status']}, queue "
            f"{o['health_after']['queue']}.")


def reading(rec: dict) -> list[str]:
    c, chat = rec["classify"], rec["chat"]
    by = {b: [rate(p) for p in c["phases"] if p["batch_size"] == b] for b in rec["job"]["classify"]["batch_sizes"]}
    with_b, without = max(by), min(by)
    per_round = [a / b for a, b in zip(by[with_b], by[without])]
    a, tokens, limit = c["agreement"], c["tokens"], rec["job"]["run"]["max_length"]
    short = sum(n < limit for n in tokens)
    batches = [p["mean_batch"] for p in c["phases"] if p["batch_size"] == with_b and p["mean_batch"]]
    lines = [f"- Batching: --batch-size {with_b} answered {statistics.median(by[with_b]):.1f} requests/s against "
             f"{statistics.median(by[without]):.1f} without (median of the rounds; per round "
             f"{min(per_round):.2f}-{max(per_round):.2f}x), running {min(batches):.1f}-{max(batches):.1f} requests "
             f"per batch on average; {rec['job']['classify']['clients']} clients that each wait for their answer "
             f"never have more than {rec['job']['classify']['clients']} requests queued.",
             f"- Same answers: {a['same_label']} of {a['articles']} requests got the same label from every phase; "
             f"the largest difference of that label's probability between phases was "
             f"{a['max_probability_diff']:.2g} in the 6 decimals the API returns. {short} of the {len(tokens)} "
             f"requests were articles under {limit} tokens (median {statistics.median(tokens):.0f}), padded when "
             f"batched with longer ones; the others were cut to {limit}."
             if a["max_probability_diff"] is not None else
             f"- Same answers: {a['same_label']} of {a['articles']} requests got the same label from every phase."]
    alone = [r for p in chat["phases"] if p["clients"] == 1 for r in p["results"] if r["status"] == 200]
    crowd = [r for p in chat["phases"] if p["clients"] > 1 for r in p["results"] if r["status"] == 200]
    if alone and crowd:
        lines.append(f"- Chat with {max(p['clients'] for p in chat['phases'])} clients and one worker: the "
                     "requests wait for each other, so time to first token grows from "
                     f"{pct([r['ttft'] for r in alone], 50):.2f} s to {pct([r['ttft'] for r in crowd], 50):.2f} s "
                     "(median) while a stream, once it runs, keeps its speed; greedy answers were the same text "
                     f"in every phase for {chat['same_text']['same']} of {chat['same_text']['prompts']} prompts.")
    answered = [r for p in [chat["warmup"], *chat["phases"]] for r in p["results"] if r["status"] == 200]
    lines.append(f"- Cross-check: the chat server's /metrics counted {chat['server_generated_tokens']:.0f} generated "
                 f"tokens and {chat['server_ttft_count']:.0f} first tokens; the clients' usage chunks said "
                 f"{sum(r['tokens'] for r in answered)} tokens in {len(answered)} answers (warm-up included).")
    return lines


def markdown(rec: dict) -> list[str]:
    """results.md's section, from a stored measurement."""
    j, r, c, chat, o = rec["job"], rec["job"]["run"], rec["classify"], rec["chat"], rec["overload"]
    import explain_bench

    train = rec["train"]
    tokens = [p["prompt_tokens"] for ph in chat["phases"] for p in ph["results"] if p["status"] == 200]
    return [
        "## Serving: `tunelab serve` under load on 127.0.0.1", MARKER, "",
        f"Each server is a `tunelab serve` child process on a free loopback port, ready once GET /health answers, "
        f"stopped with SIGTERM; the load comes from the bench's own process on the same {rec['machine']['cores']} "
        f"cores: one thread per client, each with its own keep-alive `httpx2` connection, taking the next request "
        f"of a fixed list (at most {rec['job']['cap_s']} s per phase). A few warm-up requests per server are not "
        "counted. requests/s = answers over the phase's wall time; latency = request sent to answer read.", "",
        f"Classification: the run is `tunelab train` of builtin:minilm-l6 (full fine-tuning) on builtin:bbc-news "
        f"as examples/bbc-news.yaml but {r['limit']} training articles, max_length {r['max_length']}, "
        f"{r['epochs']} epoch(s) = {train['steps']} steps, {r['precision']} (test F1 macro "
        f"{train['test']['f1_macro']:.4f}: a short run, only its shape matters here). Each request is one "
        f"article of its test split ({c['data']}) at its real length, POST /v1/classify, "
        f"{j['classify']['clients']} clients; the same {j['classify']['requests']} requests to a server with "
        "server-side batching (`--batch-size 16`, the default) and to one without (`--batch-size 1`), phases in "
        "the order A B B A. Mean batch = requests run per batch, from the change of /metrics' "
        "tunelab_batch_size over the phase.", "",
        *classify_table(c), "",
        f"Chat: `tunelab serve {j['chat']['model']}` (defaults: one worker), {len(chat['prompts'])} ShareGPT "
        f"questions ({min(tokens)}-{max(tokens)} prompt tokens with the chat template) as streaming chat "
        f"completions (server-sent events, include_usage), temperature 0, max_tokens {j['chat']['max_tokens']}; "
        "the same prompts from 1 client and from 4 at once, in the order 1 4 4 1. Time to first token = request "
        "sent to the first text of the stream; tokens/s per stream = (completion_tokens - 1) over the time from "
        "the first text to the last; all streams = completion tokens of the phase over its wall time.", "",
        *chat_table(chat), "",
        f"Overload: {overload_text(o, j['overload']['queue_size'])}",
        "", *reading(rec), "",
        f"Measured {rec['started']} to {rec['finished']} (UTC), load {rec['load_before'][0]:.2f} before and "
        f"{rec['load_after'][0]:.2f} after (the bench's own threads included), on "
        f"{record.describe_machine(rec['machine'])}; CPU flags: {explain_bench.flags_text(rec['cpu_flags'])}. "
        f"Figures: `{rec['file']}`." + (" **Smoke run: tiny job, figures mean nothing.**" if rec.get("smoke") else ""),
        "", f"Wall time: training {train['seconds']:.0f} s; server start (command to /health answering): "
        + ", ".join(f"{s['name']} {s['start_seconds']:.0f} s" for s in servers_of(rec)) + ".", ""]


def servers_of(rec: dict) -> list[dict]:
    return [*rec["classify"]["servers"].values(), rec["chat"]["server"], rec["overload"]["server"]]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    rec = run(args.smoke)
    print("\n".join(markdown({**rec, "file": "bench/out/serve"})))


if __name__ == "__main__":
    main()
