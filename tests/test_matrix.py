"""Every registered task x every method it allows, through the same checks (peft's test-matrix style):
trains 2 steps on a tiny model, every trainable parameter moves and no frozen one does, and the saved run
reloads (tunelab.runs.load_run) to a model with the same outputs.

A new task or method joins the matrix by registering itself; it needs a `CASES` entry here saying which
tiny model and data it trains on (see CONTRIBUTING.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "causal"))  # the tiny Llama of the causal-LM tests
sys.path.insert(0, str(Path(__file__).parent / "seq2seq"))  # the tiny T5 of the seq2seq tests
sys.path.insert(0, str(Path(__file__).parent / "extractive"))  # the tiny word-level BERT of the QA tests
sys.path.insert(0, str(Path(__file__).parent / "retrieval_task"))  # coded query -> passage pairs
sys.path.insert(0, str(Path(__file__).parent / "token_tagging"))  # synthetic NER sentences + word-level BERT

from causal_helpers import alpaca_records  # noqa: E402
from causal_tiny import write_tiny_model  # noqa: E402
from extractive_helpers import reading_records, write_tiny_bert  # noqa: E402
from retrieval_data import coded_pairs  # noqa: E402
from token_helpers import ner_records  # noqa: E402
from token_helpers import write_tiny_bert as write_tagger_bert  # noqa: E402
from seq2seq_tiny import reverse_pairs, write_tiny_t5  # noqa: E402
from tunelab.methods import METHODS  # noqa: E402
from tunelab.tasks import tasks  # noqa: E402

STEPS = 2


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("matrix-llama"))


@pytest.fixture(scope="module")
def cases(tiny_bert, tiny_llama, data_dir, tmp_path_factory, helpers):
    """task -> (config data without method and output_dir, a batch of input ids to compare outputs on)."""
    alpaca = helpers.write_jsonl(tmp_path_factory.mktemp("matrix-data") / "alpaca.jsonl", alpaca_records(24))
    pairs = helpers.write_jsonl(tmp_path_factory.mktemp("matrix-pairs") / "pairs.jsonl", reverse_pairs(24))
    t5 = write_tiny_t5(tmp_path_factory.mktemp("matrix-t5"))
    qa_bert = write_tiny_bert(tmp_path_factory.mktemp("matrix-qa-bert"))
    questions = helpers.write_jsonl(tmp_path_factory.mktemp("matrix-qa") / "qa.jsonl", reading_records(40))
    retrieval = helpers.write_jsonl(tmp_path_factory.mktemp("matrix-retrieval") / "pairs.jsonl", coded_pairs(24))
    ner_bert = write_tagger_bert(tmp_path_factory.mktemp("matrix-ner-bert"))
    sentences = helpers.write_jsonl(tmp_path_factory.mktemp("matrix-ner") / "ner.jsonl", ner_records(40))
    train = {"max_steps": STEPS, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0, "log_every": 1, "seed": 0,
             "device": "cpu", "eval_every": None, "early_stopping": {"patience": None}}
    data = {"val_fraction": 0.1, "test_fraction": 0.1}
    return {
        "classification": ({"task": "classification", "model": {"name": str(tiny_bert), "max_length": 16},
                            "data": {"train": str(data_dir / "train.jsonl"), **data}, "train": train},
                           [[2, 7, 8, 9, 3], [2, 10, 11, 3, 0]]),
        "causal_lm": ({"task": "causal_lm", "model": {"name": str(tiny_llama), "max_length": 64},
                       "data": {"train": str(alpaca), **data}, "train": train,
                       "generate": {"samples_in_eval": 0}},
                      [[2, 40, 41, 42, 43], [2, 50, 51, 52, 0]]),
        "pretrain": ({"task": "pretrain", "model": {"name": "scratch:gpt", "tokenizer": str(tiny_bert),
                                                    "max_length": 16, "layers": 2, "hidden_size": 16,
                                                    "heads": 2, "ffn_size": 32, "dropout": 0.0},
                      "data": {"train": str(data_dir / "train.jsonl"), **data}, "train": train},
                     [[2, 7, 8, 9, 3], [2, 10, 11, 3, 0]]),
        "seq2seq": ({"task": "seq2seq", "model": {"name": str(t5), "max_length": 16},
                     "data": {"train": str(pairs), **data}, "train": train,
                     "generate": {"samples_in_eval": 2, "max_new_tokens": 4}},
                    [[3, 4, 5, 1], [6, 7, 1, 0]]),
        "extractive_qa": ({"task": "extractive_qa", "model": {"name": str(qa_bert), "max_length": 24},
                           "data": {"train": str(questions), **data}, "train": train},
                          [[2, 10, 11, 3, 20, 21, 22, 3], [2, 12, 3, 30, 31, 3, 0, 0]]),
        "retrieval": ({"task": "retrieval", "model": {"name": str(tiny_bert), "max_length": 16},
                       "data": {"train": str(retrieval), **data}, "train": train},
                      [[2, 7, 8, 9, 3], [2, 10, 11, 3, 0]]),
        "token_classification": ({"task": "token_classification", "model": {"name": str(ner_bert), "max_length": 16},
                                  "data": {"train": str(sentences), **data}, "train": train},
                                 [[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]]),
    }


MATRIX = [(task, method) for task in tasks().names() for method in tasks().get(task).methods]


@pytest.fixture(scope="module")
def teachers(cases, tmp_path_factory, helpers):
    """teachers(task) -> a finished run of the task's case trained with method full (distill's teacher)."""
    from tunelab.config import config_from_dict

    runs: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in runs:
            out = tmp_path_factory.mktemp(f"teacher-{task}") / "run"
            runs[task] = helpers.train_quietly(config_from_dict({**cases[task][0], "method": {"name": "full"},
                                                                 "output_dir": str(out)}))
        return runs[task]

    return get


def method_section(method: str, task: str, teachers) -> dict:
    """The method: section of a matrix case (the options a method needs to run at all)."""
    extra = {"freeze": lambda: {"trainable_layers": 1}, "distill": lambda: {"teacher": str(teachers(task))}}
    return {"name": method, **extra.get(method, dict)()}


def test_the_matrix_covers_every_task_and_only_registered_methods():
    assert {task for task, _ in MATRIX} == set(tasks().names())
    assert {method for _, method in MATRIX} <= set(METHODS.names())
    assert len(MATRIX) == 25


def outputs(model, ids: list[list[int]]) -> torch.Tensor:
    batch = torch.tensor(ids)
    model.eval()
    extra = {"decoder_input_ids": batch} if getattr(model.config, "is_encoder_decoder", False) else {}
    with torch.no_grad():
        out = model(input_ids=batch, attention_mask=(batch != 0).long(), **extra)
    if getattr(out, "logits", None) is not None:
        return out.logits
    if getattr(out, "start_logits", None) is not None:  # a span model (extractive_qa): a start and an end logit per token
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.last_hidden_state  # an encoder (retrieval)


@pytest.mark.parametrize("task, method", MATRIX)
def test_task_x_method(task, method, cases, teachers, tmp_path, helpers):
    from tunelab.config import config_from_dict
    from tunelab.runs import load_run

    data, ids = cases[task]
    cfg = config_from_dict({**data, "method": method_section(method, task, teachers),
                            "output_dir": str(tmp_path / "run")})
    run_dir, seen = helpers.train_and_capture(cfg)
    assert len(helpers.read_metrics(run_dir, "train")) == STEPS

    model, before = seen["model"], seen["before"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and len(trainable) < len(before) or method in ("full", "distill")  # these train every weight
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (name in trainable), f"{name}: {'trainable' if name in trainable else 'frozen'}, " \
                                             f"{'moved' if moved else 'did not move'}"

    run = load_run(run_dir)
    assert run.task.name == task
    torch.testing.assert_close(outputs(run.model, ids), outputs(model, ids), rtol=1e-5, atol=1e-5)
