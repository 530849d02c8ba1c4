"""The task endpoints: /v1/classify, /v1/translate, /v1/entities, /v1/embeddings (OpenAI's shape) and
/v1/answer, one request shape per task (the shapes: README, section 'Serving').

The model work is the run's own task `predict`, the code behind `tunelab predict`: texts become records as
`tunelab predict --text` makes them (tunelab.runs.records_of_texts). Requests to the same endpoint are batched
across clients: the scheduler hands a worker up to `batch_size` waiting requests at once, their records are
concatenated, `predict` runs once, and its rows are split back per request in order. So a request served
alone equals the command's line for the same text; batched with others, its labels (and texts, entities)
are the same and its scores agree to about 1e-5, as its texts are padded to the other requests' lengths.
/v1/answer with a causal LM answers from retrieved passages as `tunelab ask --index` does
(tunelab.retrieval.rag), one question per job, and stops within a token when its client goes away or its
time limit passes.

All model and tokenizer work runs in the scheduler's worker threads (the usage tokens of /v1/embeddings are
counted there too); progress displays are off for the whole server (tunelab.serve.app), not per batch, as
that switch is process-wide.

Inputs are checked here rather than by pydantic types: `input` is a string or a list of 1..64 non-empty
strings, and a bad element is named as `input[2]` (a union type would name pydantic's branches instead).
"""
from __future__ import annotations

import base64
import logging
from typing import Any, Callable, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tunelab.serve.errors import ApiError
from tunelab.serve.limits import run_limited
from tunelab.serve.scheduler import TimeLimitExceeded

MAX_INPUTS = 64
SOURCE = "request"  # what a DataError of `predict` names as the file
log = logging.getLogger("tunelab.serve")


class TaskRequest(BaseModel):
    """/v1/classify, /v1/translate, /v1/entities: `input` is one text or a list of texts."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input: Any = Field(description="a string, or a list of 1 to 64 non-empty strings")


class EmbeddingsRequest(TaskRequest):
    """OpenAI's embeddings request (token-id inputs and `dimensions` are not served)."""

    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    """Accepted as OpenAI accepts it (an end-user id); not used."""


class AnswerRequest(BaseModel):
    """/v1/answer: a question, and the text to answer from unless the server retrieves passages (--index)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    question: str
    context: str | None = None


def input_texts(value: Any, param: str = "input") -> list[str]:
    """`value` as a list of 1..MAX_INPUTS non-empty strings, or a 400 naming the bad element."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ApiError(400, f"{param}: expected a string or a list of strings, got {type(value).__name__}", param)
    if not 1 <= len(items) <= MAX_INPUTS:
        raise ApiError(400, f"{param}: got {len(items)} texts; send 1 to {MAX_INPUTS} per request", param)
    for i, item in enumerate(items):
        where = param if isinstance(value, str) else f"{param}[{i}]"
        if not isinstance(item, str):
            raise ApiError(400, f"{where}: expected a string, got {type(item).__name__} (token ids are not "
                                "accepted; send the text)", where)
        if not item.strip():
            raise ApiError(400, f"{where}: the text is empty; send a text with words in it", where)
    return list(items)


def non_empty(text: str, param: str) -> str:
    """`text`, or a 400 naming `param` when it holds nothing but white space."""
    if not text.strip():
        raise ApiError(400, f"{param}: the text is empty; send a text with words in it", param)
    return text


def predict_rows(run, records: list[dict]) -> list[dict]:
    """The task's predict on `records` (progress displays are off for the whole server: tunelab.serve.app)."""
    return run.task.predict(run, records, SOURCE, log.info)


def batched_predict(run) -> Callable[[list[list[str]]], list[list[dict]]]:
    """The batch function of a task endpoint: each request's texts in, each request's rows out, one
    `predict` call over all of them."""
    from tunelab.runs import records_of_texts

    def run_batch(batch: list[list[str]]) -> list[list[dict]]:
        rows = predict_rows(run, records_of_texts(run, [text for texts in batch for text in texts]))
        out, at = [], 0
        for texts in batch:
            out.append(rows[at:at + len(texts)])
            at += len(texts)
        return out

    return run_batch


def batched_embeddings(run) -> Callable[[list[list[str]]], list[tuple[list[dict], int]]]:
    """`batched_predict` for /v1/embeddings: each request's rows and the tokens its texts took (its usage)."""
    predict = batched_predict(run)

    def run_batch(batch: list[list[str]]) -> list[tuple[list[dict], int]]:
        return [(rows, embedded_tokens(run, texts)) for rows, texts in zip(predict(batch), batch)]

    return run_batch


def router(state) -> APIRouter:
    """The task endpoints of `state.served`; each answers 404 where the served task lacks it."""
    served, api = state.served, APIRouter()

    def requires(endpoint: str):
        def check() -> None:  # a dependency: runs before the body is validated, so 404 beats 400
            state.require(endpoint)
        return [Depends(check)]

    async def predict_texts(endpoint: str, req: TaskRequest, request: Request,
                            batch_fn: Callable = batched_predict) -> Any:
        """The request's texts through `batch_fn(run)`, batched with other requests to `endpoint`."""
        state.check_model(req.model)
        return await run_limited(state, request, batch_fn(served.run), input_texts(req.input), batch_key=endpoint)

    def listing(data: list[dict]) -> dict:
        return {"object": "list", "model": served.id, "data": data}

    @api.post("/v1/classify", dependencies=requires("classify"))
    async def classify(req: TaskRequest, request: Request) -> dict:
        rows = await predict_texts("classify", req, request)
        return listing([{"index": i, "label": r["prediction"], "scores": r["scores"]} for i, r in enumerate(rows)])

    @api.post("/v1/translate", dependencies=requires("translate"))
    async def translate(req: TaskRequest, request: Request) -> dict:
        rows = await predict_texts("translate", req, request)
        return listing([{"index": i, "text": r["generated"]} for i, r in enumerate(rows)])

    @api.post("/v1/entities", dependencies=requires("entities"))
    async def entities(req: TaskRequest, request: Request) -> dict:
        rows = await predict_texts("entities", req, request)
        return listing([{"index": i, "entities": r["entities"]} for i, r in enumerate(rows)])

    @api.post("/v1/embeddings", dependencies=requires("embeddings"))
    async def embeddings(req: EmbeddingsRequest, request: Request) -> dict:
        rows, tokens = await predict_texts("embeddings", req, request, batched_embeddings)
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(r["embedding"], req.encoding_format)}
                for i, r in enumerate(rows)]
        return {"object": "list", "data": data, "model": served.id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @api.post("/v1/answer", dependencies=requires("answer"))
    async def answer(req: AnswerRequest, request: Request) -> dict:
        state.check_model(req.model)
        question = non_empty(req.question, "question")
        context = None if req.context is None else non_empty(req.context, "context")
        if "chat.completions" in served.endpoints:  # a causal LM: generated from retrieved passages
            if context is not None:
                raise ApiError(400, f"context: '{served.id}' is a causal LM that answers from the passages its "
                                    "index retrieves; leave out context", "context")
            found = await run_limited(state, request, generative_answer(state), question)
        else:
            if context is None and served.index is None:
                raise ApiError(400, "'context' is a required property: this server has no index to retrieve "
                                    "passages from (start it with --index INDEX to answer without one)", "context")
            found = await run_limited(state, request, extractive_answers(state), (question, context),
                                      batch_key="answer")
        return {"object": "answer", "model": served.id, **found}

    return api


# ---------------------------------------------------------------------------------------------
# Embeddings


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A float list, or (OpenAI's "base64") the base64 of its little-endian float32 bytes."""
    if encoding_format == "float":
        return vector
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embedded_tokens(run, texts: list[str]) -> int:
    """Tokens the encoder read for `texts` (special tokens included, cut at the run's max_length)."""
    ids = run.tokenizer(texts, truncation=True, max_length=run.meta["max_length"])["input_ids"]
    return sum(len(row) for row in ids)


# ---------------------------------------------------------------------------------------------
# Answers


def passage_dicts(passages) -> list[dict]:
    """Prompt passages (tunelab.retrieval.rag.Passage) as /v1/answer lists them."""
    return [{"id": p.id, "doc_id": p.doc_id, "score": p.score, "text": p.text} for p in passages]


def extractive_answers(state) -> Callable[[list[tuple[str, str | None]]], list[dict]]:
    """The batch function of /v1/answer on an extractive_qa run: (question, context or None) per request.

    A question without a context is asked of each of the top `k` passages the index retrieves for it, and
    the best-scoring span among them is the answer (start / end into that passage, `passage` its place in
    `passages`); when no passage holds an answer, the answer is "" with the best no-answer score.
    """
    run, index, k = state.served.run, state.served.index, state.settings.k
    d = run.cfg.data

    def run_batch(batch: list[tuple[str, str | None]]) -> list[dict]:
        open_questions = [q for q, context in batch if context is None]
        hits = iter(index.query(open_questions, k) if open_questions else [])
        asked = []  # per request: (the contexts it is asked over, their hits or None)
        for question, context in batch:
            found = next(hits) if context is None else None
            asked.append(([h.text for h in found] if found is not None else [context], found))
        records = [{d.question_field: question, d.context_field: c}
                   for (question, _), (contexts, _) in zip(batch, asked) for c in contexts]
        rows, at, out = predict_rows(run, records), 0, []
        for contexts, found in asked:
            mine = rows[at:at + len(contexts)]
            at += len(contexts)
            out.append(best_span(mine, found))
        return out

    return run_batch


def best_span(rows: list[dict], hits) -> dict:
    """The answer of one question: its only row (a given context), or the best over retrieved passages."""
    fields = ("answer", "score", "start", "end")
    if hits is None:
        return {k: rows[0][k] for k in fields}
    answered = [i for i, r in enumerate(rows) if r["answer"]]
    best = max(answered or range(len(rows)), key=lambda i: rows[i]["score"], default=None)
    if best is None:  # the index retrieved nothing
        found = {"answer": "", "score": None, "start": None, "end": None}
    else:
        found = {k: rows[best][k] for k in fields}
    from tunelab.retrieval.rag import passages_of_hits

    return {**found, "passage": best if answered else None, "passages": passage_dicts(passages_of_hits(hits))}


def generative_answer(state) -> Callable:
    """The job of /v1/answer on a causal LM with an index: `tunelab ask --index` for one question, ended
    within a token once the job is stopped (client gone, deadline)."""
    def run_one(question: str, job) -> dict:
        from transformers import StoppingCriteriaList

        from tunelab.retrieval.rag import answer_questions
        from tunelab.serve.textgen import UntilStopped

        stop = UntilStopped(job.stopped)
        found = answer_questions(generator(state.served), state.served.index, [question], state.settings.k,
                                 stopping_criteria=StoppingCriteriaList([stop]))[0]
        if stop.fired and not job.cancel.is_set():  # cut short by the deadline (a client gone reads nothing)
            raise TimeLimitExceeded(f"the answer's generation ran past the server's time limit of "
                                    f"{state.settings.timeout_s:g} s")
        return {"answer": found.text, "score": None, "start": None, "end": None,
                "passages": passage_dicts(found.passages)}

    return run_one


def generator(served):
    """The served causal LM as tunelab.retrieval.rag.load_generator makes one (without loading it again):
    a run's context is its model.max_length, a model reference's its positions. Kept in `served.extra`."""
    if "generator" not in served.extra:
        from tunelab.data.chat_template import require_chat_template
        from tunelab.errors import TunelabError
        from tunelab.retrieval.rag import Generator

        if served.run is not None:
            context = served.run.cfg.model.max_length
            context_from = f"the run's model.max_length {context}"
        else:
            context, context_from = served.context, f"the model's {served.context} positions"
        if context is None:
            raise TunelabError(f"answer: {served.id} states no context length, so a prompt cannot be fitted to it")
        require_chat_template(served.tokenizer, "rag")
        served.extra["generator"] = Generator(served.model, served.tokenizer, served.gen, context, context_from)
    return served.extra["generator"]
