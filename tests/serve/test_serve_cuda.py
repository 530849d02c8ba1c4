"""`tunelab serve --device cuda` (skipped without a GPU; run on one with `pytest -m cuda tests/serve`): the
served run's model is moved to the GPU after loading, and each task's predict follows it there
(tunelab.models.device.model_device) with the predictions `tunelab predict` makes on the CPU.

No HTTP here: the endpoints hand their records to exactly this `predict` (tests/serve/test_task_api.py checks
that part on the CPU)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

QUIET = lambda *a, **k: None  # noqa: E731
QA_CONTEXT = "the old house near the river was big and a red fox was on the hill"


def same(gpu, cpu, where: str = "") -> None:
    """Equal structures: strings, labels and offsets exactly, floats to GPU rounding (fp32, no TF32)."""
    if isinstance(cpu, dict):
        assert gpu.keys() == cpu.keys(), where
        for key in cpu:
            same(gpu[key], cpu[key], f"{where}.{key}")
    elif isinstance(cpu, list):
        assert len(gpu) == len(cpu), where
        for i, (g, c) in enumerate(zip(gpu, cpu)):
            same(g, c, f"{where}[{i}]")
    elif isinstance(cpu, float):
        assert gpu == pytest.approx(cpu, rel=1e-3, abs=1e-4), where
    else:
        assert gpu == cpu, where


@pytest.mark.parametrize("fixture, texts", [
    ("cls_run_dir", ["goal match team today news", "computer software chip the a"]),
    ("ner_run_dir", None),
    ("qa_run_dir", ["which animal is there ?", "which colour is there ?"]),
    ("seq2seq_run_dir", ["red cat sun", "moon tree fish bird"]),
    ("retrieval_run_dir", ["bread cheese soup", "the match team goal win"]),
    ("llama_run_dir", ["Say hi", "Name a colour"]),
])
def test_a_run_served_on_the_gpu_predicts_what_tunelab_predict_gives_on_the_cpu(fixture, texts, request):
    from tunelab.models.device import model_device
    from tunelab.runs import predict_records, records_of_texts
    from tunelab.serve.model import load_served

    run_dir = request.getfixturevalue(fixture)
    if fixture == "ner_run_dir":
        from token_helpers import ner_records

        texts = [" ".join(r["tokens"]) for r in ner_records(3, seed=7)]
    served = load_served(str(run_dir), device="cuda")
    assert served.device == "cuda" and model_device(served.model).type == "cuda"
    run = served.run
    if fixture == "qa_run_dir":  # a question needs a context: the records `tunelab predict --input` reads
        records = [{"question": q, "context": QA_CONTEXT} for q in texts]
        cpu = predict_records(str(run_dir), records, "cpu", log=QUIET)
    else:
        records = records_of_texts(run, texts)
        cpu = predict_records(str(run_dir), None, "cpu", texts=texts, log=QUIET)
    gpu = run.task.predict(run, records, "gpu", QUIET)
    same(gpu, cpu)
    assert model_device(served.model).type == "cuda"  # predict left the model where serve put it


def test_the_http_api_on_the_gpu_streams_what_the_cpu_server_answers(llama_run_dir, cls_run_dir):
    # the whole path on CUDA: uvicorn, the scheduler's worker thread, textgen's token loop, the task endpoint
    from openai import OpenAI
    from serve_helpers import post, running

    from tunelab.serve.model import load_served

    messages = [{"role": "user", "content": "Say hi"}]
    answers = {}
    for device in ("cpu", "cuda"):
        with running(load_served(str(llama_run_dir), device=device)) as (url, state):
            assert state.served.device == device
            client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            stream = client.chat.completions.create(model=state.served.id, messages=messages, max_tokens=12,
                                                    temperature=0, stream=True,
                                                    stream_options={"include_usage": True})
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            answers[device] = (text, chunks[-1].usage.completion_tokens)
        with running(load_served(str(cls_run_dir), device=device)) as (url, _):
            answers[device + "-classify"] = post(url, "/v1/classify", {"input": ["goal match team today"]}).json()
    assert answers["cuda"] == answers["cpu"] and answers["cpu"][1] > 0
    gpu, cpu = answers["cuda-classify"]["data"][0], answers["cpu-classify"]["data"][0]
    assert gpu["label"] == cpu["label"]
    same(gpu["scores"], cpu["scores"])
