"""The task endpoints of `tunelab serve` on tiny runs: each answers exactly what `tunelab predict` (runs.
predict_records) gives for the same text, /v1/embeddings works with the openai client (base64 included),
/v1/answer answers from a context, from retrieved passages (extractive) and generatively (`tunelab ask
--index`), an endpoint the task lacks is 404, bad inputs are 400s naming the field, and concurrent requests are
batched into one predict call with the results of single requests. The model work stays in the worker threads
(the tokenizer included), progress displays stay off while workers overlap, and a generated answer stops when
its client goes away or its time limit passes."""
from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import idle, metric, post, raw_request, wait_for, with_predict

from tunelab.runs import predict_records
from tunelab.serve.model import load_served

QUIET = lambda *a, **k: None  # noqa: E731
CLS_TEXTS = ["goal match team today news", "computer software chip the a", "bread cheese soup very new"]


@pytest.fixture(scope="module")
def cls_served(cls_run_dir):
    return load_served(str(cls_run_dir))


def predicted(run_dir, texts: list[str]) -> list[dict]:
    """What `tunelab predict RUN --text ...` writes for `texts`."""
    return predict_records(str(run_dir), None, "--text", texts=texts, log=QUIET)


# ---------------------------------------------------------------------------------------------
# Each endpoint equals `tunelab predict`


def test_classify_equals_predict_and_keeps_the_input_order(cls_run_dir, cls_served, serve):
    expected = predicted(cls_run_dir, CLS_TEXTS)
    with serve(cls_served) as (url, _):
        one = post(url, "/v1/classify", {"input": CLS_TEXTS[0]})
        many = post(url, "/v1/classify", {"model": cls_served.id, "input": CLS_TEXTS})
    assert one.status_code == 200, one.text
    assert one.json() == {"object": "list", "model": cls_served.id, "data": [
        {"index": 0, "label": expected[0]["prediction"], "scores": expected[0]["scores"]}]}
    assert many.json()["data"] == [{"index": i, "label": e["prediction"], "scores": e["scores"]}
                                   for i, e in enumerate(expected)]
    assert sorted(expected[0]["scores"]) == ["food", "sport", "tech"]


def test_translate_equals_predict(seq2seq_run_dir, serve):
    texts = ["red cat sun", "moon tree fish bird"]
    expected = predicted(seq2seq_run_dir, texts)
    assert expected[0]["generated"] != expected[1]["generated"]  # else the order check below tests nothing
    with serve(seq2seq_run_dir) as (url, _):
        r = post(url, "/v1/translate", {"input": texts})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [{"index": i, "text": e["generated"]} for i, e in enumerate(expected)]


def test_entities_equal_predict_with_character_offsets(ner_run_dir, serve):
    from token_helpers import ner_records

    texts = [" ".join(r["tokens"]) for r in ner_records(4, seed=7)]
    expected = predicted(ner_run_dir, texts)
    with serve(ner_run_dir) as (url, _):
        r = post(url, "/v1/entities", {"input": texts})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data == [{"index": i, "entities": e["entities"]} for i, e in enumerate(expected)]
    found = [(text, e) for text, row in zip(texts, data) for e in row["entities"]]
    assert found, "the tiny NER run finds no entity: the offsets check below would test nothing"
    assert all(text[e["start"]:e["end"]] == e["text"] for text, e in found)


def test_embeddings_through_the_openai_client_base64_and_float(retrieval_run_dir, serve):
    import openai

    from tunelab.runs import load_run

    texts = ["bread cheese soup", "the match team goal win"]
    expected = np.asarray([row["embedding"] for row in predicted(retrieval_run_dir, texts)], dtype=np.float32)
    tokenizer = load_run(retrieval_run_dir).tokenizer
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    with serve(retrieval_run_dir) as (url, state):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        got = client.embeddings.create(model=state.served.id, input=texts)  # asks for base64, decodes it
        raw = post(url, "/v1/embeddings", {"input": texts, "encoding_format": "base64"}).json()
        floats = post(url, "/v1/embeddings", {"input": texts[0]}).json()
    assert [e.index for e in got.data] == [0, 1]
    assert np.array_equal(np.asarray([e.embedding for e in got.data], dtype=np.float32), expected)
    assert np.array_equal(np.frombuffer(base64.b64decode(raw["data"][1]["embedding"]), "<f4"), expected[1])
    assert floats["data"] == [{"object": "embedding", "index": 0, "embedding": expected[0].tolist()}]
    assert got.usage.prompt_tokens == got.usage.total_tokens == tokens
    assert floats["usage"] == {"prompt_tokens": len(tokenizer(texts[0])["input_ids"]),
                               "total_tokens": len(tokenizer(texts[0])["input_ids"])}


# ---------------------------------------------------------------------------------------------
# /v1/answer


QA_CONTEXT = "the old house near the river was big and a red fox was on the hill"
QA_DOCS = [{"id": "fox", "text": "a small red fox was near the old tree"},
           {"id": "owl", "text": "the white owl was on the hill by the town"},
           {"id": "road", "text": "the road to the river was new and big"}]


def write_index(docs: list[dict], encoder_ref: str, folder: Path) -> Path:
    from tunelab.retrieval.embed import load_encoder
    from tunelab.retrieval.index import build_index

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    build_index(folder / "docs.jsonl", folder / "index", load_encoder(encoder_ref), chunk_size=16, overlap=4,
                desc=None)
    return folder / "index"


@pytest.fixture(scope="module")
def qa_index(qa_run_dir, tmp_path_factory) -> Path:
    """An index of QA_DOCS (in the QA run's vocabulary) built with the QA run's own tiny BERT as encoder."""
    return write_index(QA_DOCS, str(qa_run_dir.parent / "bert"), tmp_path_factory.mktemp("qa-index"))


def test_answer_from_a_context_equals_tunelab_ask(qa_run_dir, serve):
    from tunelab.tasks.extractive_qa import ask

    questions = ["which animal is there ?", "which colour is there ?"]
    expected = ask(str(qa_run_dir), QA_CONTEXT, questions)
    with serve(qa_run_dir) as (url, state):
        answers = [post(url, "/v1/answer", {"question": q, "context": QA_CONTEXT}).json() for q in questions]
        missing = post(url, "/v1/answer", {"question": questions[0]})
    assert answers == [{"object": "answer", "model": state.served.id,
                        **{k: e[k] for k in ("answer", "score", "start", "end")}} for e in expected]
    assert any(a["answer"] for a in answers)
    assert all(QA_CONTEXT[a["start"]:a["end"]] == a["answer"] for a in answers if a["answer"])
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "context"


def test_answer_from_retrieved_passages_is_the_best_span_of_the_top_k(qa_run_dir, qa_index, serve):
    from tunelab.retrieval.index import load_index
    from tunelab.runs import load_run

    question = "which animal is there ?"
    hits = load_index(qa_index).query([question], 2)[0]
    run = load_run(qa_run_dir)
    rows = run.task.predict(run, [{"question": question, "context": h.text} for h in hits], "test", QUIET)
    served = load_served(str(qa_run_dir), index=str(qa_index))
    with serve(served, k=2) as (url, _):
        got = post(url, "/v1/answer", {"question": question}).json()
        given = post(url, "/v1/answer", {"question": question, "context": QA_CONTEXT}).json()
    assert got["passages"] == [{"id": h.passage_id, "doc_id": h.doc_id, "score": h.score, "text": h.text}
                               for h in hits]
    answered = [i for i, r in enumerate(rows) if r["answer"]]
    assert answered, "no passage gives an answer: the best-span choice below would test nothing"
    best = max(answered, key=lambda i: rows[i]["score"])
    assert got["passage"] == best
    assert {k: got[k] for k in ("answer", "score", "start", "end")} == \
        {k: rows[best][k] for k in ("answer", "score", "start", "end")}
    assert hits[best].text[got["start"]:got["end"]] == got["answer"]
    assert "passages" not in given and given["answer"] == QA_CONTEXT[given["start"]:given["end"]]


def test_a_causal_lm_with_an_index_answers_as_tunelab_ask_does(tmp_path, tiny_bert, serve):
    from causal_tiny import write_tiny_model

    from tunelab.retrieval.index import load_index
    from tunelab.retrieval.rag import answer_questions, load_generator

    model = str(write_tiny_model(tmp_path / "llama"))
    index = write_index([{"id": "sport", "text": "the team player will score a goal this match"},
                         {"id": "food", "text": "the soup and bread taste very new today"}], str(tiny_bert),
                        tmp_path / "docs")
    overrides = ["generate.max_new_tokens=6"]
    question = "which team will score a goal"
    expected = answer_questions(load_generator(model, overrides), load_index(index), [question], 2)[0]
    with serve(load_served(model, overrides, index=str(index)), k=2) as (url, _):
        got = post(url, "/v1/answer", {"question": question}).json()
        with_context = post(url, "/v1/answer", {"question": question, "context": "some text"})
    assert expected.text and got["answer"] == expected.text
    assert (got["score"], got["start"], got["end"]) == (None, None, None)
    assert got["passages"] == [{"id": p.id, "doc_id": p.doc_id, "score": p.score, "text": p.text}
                               for p in expected.passages]
    assert with_context.status_code == 400 and with_context.json()["error"]["param"] == "context"


# ---------------------------------------------------------------------------------------------
# What is not served, and bad input


def test_an_endpoint_the_task_lacks_is_404_naming_what_it_offers(cls_served, llama_run_dir, serve):
    with serve(cls_served) as (url, _):
        entities = post(url, "/v1/entities", {"input": "x", "bogus": 1})  # 404 before the body is checked
        chat = post(url, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        wrong_model = post(url, "/v1/classify", {"model": "gpt-4", "input": "goal"})
    assert entities.status_code == 404
    assert entities.json()["error"]["code"] == "unsupported_endpoint"
    assert "/v1/entities is not served here" in entities.json()["error"]["message"]
    assert "/v1/classify" in entities.json()["error"]["message"]
    assert chat.status_code == 404 and set(chat.json()["error"]) == {"message", "type", "param", "code"}
    assert wrong_model.status_code == 404 and wrong_model.json()["error"]["code"] == "model_not_found"
    with serve(llama_run_dir) as (url, _):  # a causal LM answers questions only with --index
        answer = post(url, "/v1/answer", {"question": "why?", "context": "because"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unsupported_endpoint"


@pytest.mark.parametrize("body, param, words", [
    ({"input": []}, "input", "got 0 texts; send 1 to 64"),
    ({"input": ["goal"] * 65}, "input", "got 65 texts; send 1 to 64"),
    ({"input": ["goal", "win", " "]}, "input[2]", "input[2]: the text is empty"),
    ({"input": ["goal", 7]}, "input[1]", "input[1]: expected a string, got int"),
    ({"input": ""}, "input", "input: the text is empty"),
    ({"input": {"text": "goal"}}, "input", "expected a string or a list of strings, got dict"),
    ({}, "input", "'input' is a required property"),
    ({"input": "goal", "temperature": 0.5}, "temperature", "Unrecognized request argument supplied: temperature"),
    ({"input": "goal", "model": 3}, "model", "model"),
])
def test_bad_inputs_are_400_naming_the_field(cls_served, serve, body, param, words):
    with serve(cls_served) as (url, _):
        r = post(url, "/v1/classify", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert words in error["message"]


def test_bad_embeddings_and_answer_fields_are_400(retrieval_run_dir, qa_run_dir, serve):
    with serve(retrieval_run_dir) as (url, _):
        fmt = post(url, "/v1/embeddings", {"input": "goal", "encoding_format": "hex"})
        ids = post(url, "/v1/embeddings", {"input": [[101, 102]]})
    assert fmt.status_code == 400 and fmt.json()["error"]["param"] == "encoding_format"
    assert ids.status_code == 400 and ids.json()["error"]["param"] == "input[0]"
    with serve(qa_run_dir) as (url, _):
        empty = post(url, "/v1/answer", {"question": "  ", "context": QA_CONTEXT})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "question"


# ---------------------------------------------------------------------------------------------
# Batching across clients


def blocking(served, gate: threading.Event, entered: threading.Event, marker: str = "block"):
    """A copy of `served` whose predict, given the text `marker`, waits for `gate` (after setting `entered`)."""
    real = served.run.task.predict

    def predict(run, records, source, log):
        if any(marker in rec.values() for rec in records):
            entered.set()
            assert gate.wait(60), "the test never opened the gate"
        return real(run, records, source, log)

    task = dataclasses.replace(served.run.task, predict=predict)
    return dataclasses.replace(served, run=dataclasses.replace(served.run, task=task))


def test_concurrent_requests_run_as_one_batch_with_the_results_of_single_requests(cls_served, serve, helpers):
    texts = [r["text"] for r in helpers.synthetic_records(2, seed=11)]  # 6 texts
    gate, entered = threading.Event(), threading.Event()
    with serve(blocking(cls_served, gate, entered), batch_size=8, workers=1) as (url, state):
        singles = [post(url, "/v1/classify", {"input": t}).json()["data"][0] for t in texts]
        before = [metric(state, f"tunelab_batch_size_{part}", endpoint="classify") for part in ("count", "sum")]
        with ThreadPoolExecutor(len(texts) + 1) as pool:
            first = pool.submit(post, url, "/v1/classify", {"input": "block"})
            assert entered.wait(30)  # the only worker is inside predict; what comes now waits in the queue
            rest = [pool.submit(post, url, "/v1/classify", {"input": t}) for t in texts]
            wait_for(lambda: state.scheduler.queued == len(texts), "all requests are queued")
            gate.set()
            batched = [f.result().json()["data"][0] for f in rest]
            assert first.result().status_code == 200
        after = [metric(state, f"tunelab_batch_size_{part}", endpoint="classify") for part in ("count", "sum")]
    for single, together in zip(singles, batched):  # padded to the others' lengths: the same up to ~1e-5
        assert together["label"] == single["label"]
        assert together["scores"] == pytest.approx(single["scores"], abs=1e-5)
    runs, requests = after[0] - before[0], after[1] - before[1]
    assert before[0] == len(texts) and (runs, requests) == (2, 1 + len(texts))  # the blocker, then the six


def test_one_bad_request_in_a_batch_fails_alone(cls_served, serve, helpers):
    """A DataError of predict (here: a record the task cannot read) fails its own request with 400; the batch
    is re-run one request at a time, so the others still get their answers."""
    from tunelab.errors import DataError

    gate, entered = threading.Event(), threading.Event()
    served = blocking(cls_served, gate, entered)
    real = served.run.task.predict

    def predict(run, records, source, log):
        if any(rec.get("text") == "poison" for rec in records):
            raise DataError(source, "record 1: this text is poison")
        return real(run, records, source, log)

    served.run.task = dataclasses.replace(served.run.task, predict=predict)
    with serve(served, batch_size=8) as (url, state):
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(post, url, "/v1/classify", {"input": "block"})
            assert entered.wait(30)
            rest = [pool.submit(post, url, "/v1/classify", {"input": t}) for t in ("goal win", "poison", "chip")]
            wait_for(lambda: state.scheduler.queued == 3, "all requests are queued")
            gate.set()
            answers = [f.result() for f in rest]
            first.result()
    assert [a.status_code for a in answers] == [200, 400, 200]
    assert answers[1].json()["error"]["message"] == "request: record 1: this text is poison"
    assert re.fullmatch(r"\w+", answers[0].json()["data"][0]["label"])


# ---------------------------------------------------------------------------------------------
# Model work stays in the worker threads and stops when it should


class ThreadNoting:
    """A tokenizer that notes the thread of every use (a call or an attribute) and forwards it."""

    def __init__(self, tokenizer, threads: set):
        self._tokenizer, self._threads = tokenizer, threads

    def __call__(self, *args, **kwargs):
        self._threads.add(threading.current_thread().name)
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        self._threads.add(threading.current_thread().name)
        return getattr(self._tokenizer, name)


def test_embeddings_use_the_tokenizer_only_in_worker_threads(retrieval_run_dir, serve):
    """Counting the usage tokens on the event loop would share the tokenizer with a worker using it."""
    served, threads = load_served(str(retrieval_run_dir)), set()
    noted = ThreadNoting(served.run.tokenizer, threads)
    served = dataclasses.replace(served, tokenizer=noted, run=dataclasses.replace(served.run, tokenizer=noted))
    texts = ["bread cheese soup", "the match team goal win"]
    tokens = sum(len(served.run.tokenizer._tokenizer(t)["input_ids"]) for t in texts)
    with serve(served) as (url, _):
        r = post(url, "/v1/embeddings", {"input": texts})
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert threads and all(name.startswith("tunelab-serve-") for name in threads), threads


def test_progress_displays_stay_off_while_two_workers_predict(cls_served, serve):
    """The switch is process-wide: one worker ending its batch must not turn displays on under another."""
    from tunelab.train import logging as tl_logging

    gates = {"first": threading.Event(), "second": threading.Event()}
    entered = {name: threading.Event() for name in gates}
    shown_in_second = []

    def predict(real, run, records, source, log):
        name = records[0]["text"]
        if name in gates:
            entered[name].set()
            assert gates[name].wait(60), "the test never released the worker"
            if name == "second":
                shown_in_second.append(tl_logging._enabled)
        return real(run, records, source, log)

    with serve(with_predict(cls_served, predict), workers=2, batch_size=1) as (url, _):
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, url, "/v1/classify", {"input": "first"})
            assert entered["first"].wait(60)
            second = pool.submit(post, url, "/v1/classify", {"input": "second"})
            assert entered["second"].wait(60)
            gates["first"].set()
            assert first.result().status_code == 200  # the first batch is over, the second still inside
            gates["second"].set()
            assert second.result().status_code == 200
    assert shown_in_second == [False]


@pytest.fixture(scope="module")
def rag_loop(tmp_path_factory, tiny_bert):
    """A causal LM that never stops by itself (a scripted loop, 200k new tokens allowed) with a tiny index:
    /v1/answer generates until the job is stopped."""
    from scripted import write_scripted

    root = tmp_path_factory.mktemp("rag-loop")
    model = write_scripted(root / "loop", "Tra la", loop=True, context=400_000)
    index = write_index([{"id": "sport", "text": "the team player will score a goal this match"}], str(tiny_bert),
                        root / "docs")
    return load_served(str(model), ["generate.max_new_tokens=200000"], index=str(index))


def test_a_generated_answer_stops_when_its_client_goes_away(rag_loop, serve):
    with serve(rag_loop, k=1) as (url, state):
        sock = raw_request(url, "/v1/answer", {"question": "which team will score"})
        wait_for(lambda: state.scheduler.running == 1, "the answer is being generated")
        sock.close()
        wait_for(lambda: idle(state), "the generation stops (200k tokens would take minutes)")
        gone = metric(state, "tunelab_rejected_total", reason="disconnected")
    assert gone == 1


def test_a_generated_answer_past_the_time_limit_is_504_and_stops(rag_loop, serve):
    """The one timing assumption: the idle worker takes the request within its 1 s limit."""
    with serve(rag_loop, k=1, timeout_s=1.0) as (url, state):
        r = post(url, "/v1/answer", {"question": "which team will score"})
        wait_for(lambda: idle(state), "the generation stops (200k tokens would take minutes)")
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
