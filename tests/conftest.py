"""Shared fixtures: a tiny random BERT saved like a pretrained one, small labelled data sets, configs.

Everything here is built offline in temporary folders with fixed seeds, so a test can pin exact numbers.
Tiny finished runs of several tasks (cls_run_dir, qa_run_dir, ner_run_dir, llama_run_dir) are trained once per
session for the tests that use a run (explain, serve).

Test modules reach the helper functions through the `helpers` fixture rather than `import conftest`:
other test folders have their own conftest.py, and the module name `conftest` is not unique.
"""
from __future__ import annotations

import csv
import json
import os
import random
import sys
import types
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from tunelab.config import RunConfig, config_from_dict

# The test models are tiny: one thread is faster than two, and with two a busy second core (another process)
# makes every op wait on the OpenMP barrier (100x slower). Pinned numbers were taken with one thread.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _fp32_on_any_cpu():
    """`train.precision: auto` picks bf16 on CPUs with native bf16; pinned numbers are fp32 everywhere.

    Session scope, so that module-scoped fixtures which train are covered too.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tunelab.train.precision.cpu_has_fast_bf16", lambda: False)
        yield

# Three classes, each with its own keywords; every text also has shared filler words. Every word is one
# token of the tiny vocabulary, so every text has the same token length (WORDS_PER_TEXT + [CLS] + [SEP]).
KEYWORDS = {
    "food": ["bread", "cheese", "soup", "apple", "cook", "taste", "rice", "salad"],
    "sport": ["goal", "match", "team", "player", "score", "coach", "league", "win"],
    "tech": ["computer", "software", "chip", "code", "robot", "data", "phone", "web"],
}
FILLER = ["the", "a", "today", "news", "report", "about", "some", "new", "very", "this"]
LABELS = sorted(KEYWORDS)
WORDS_PER_TEXT = 6
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def synthetic_records(per_class: int, seed: int = 0, counts: dict[str, int] | None = None) -> list[dict]:
    """Labelled records: 3 keywords of the class + 3 filler words, shuffled. `counts` overrides per_class."""
    rng = random.Random(seed)
    records = []
    for label in LABELS:
        for _ in range((counts or {}).get(label, per_class)):
            words = rng.sample(KEYWORDS[label], 3) + rng.sample(FILLER, WORDS_PER_TEXT - 3)
            rng.shuffle(words)
            records.append({"text": " ".join(words), "label": label})
    rng.shuffle(records)
    return records


def keyword_records(n: int, seed: int, keyword: str, filler: list[str], labels: tuple[str, str]) -> list[dict]:
    """Six words of `filler`; every other record has `keyword` in place of one of them: labels[0], else
    labels[1]. A task whose one cue is a single word, for explanation tests."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(filler, 6)
        if i % 2 == 0:
            words[rng.randrange(6)] = keyword
        out.append({"text": " ".join(words), "label": labels[i % 2]})
    return out


# ---------------------------------------------------------------------------------------------
# Writers for every source format tunelab reads


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict]) -> Path:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_label_folder(path: Path, records: list[dict]) -> Path:
    for i, r in enumerate(records):
        sub = path / r["label"]
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}.txt").write_text(r["text"], encoding="utf-8")
    return path


WRITERS = {"jsonl": write_jsonl, "json": write_json, "csv": write_csv, "tsv": write_csv,
           "parquet": write_parquet, "folder": write_label_folder}


def write_records(folder: Path, fmt: str, records: list[dict], name: str = "data") -> Path:
    """Write `records` as `fmt` (a key of WRITERS) under `folder`; returns the file or folder path."""
    target = folder / (name if fmt == "folder" else f"{name}.{fmt}")
    return WRITERS[fmt](target, records)


# ---------------------------------------------------------------------------------------------
# The tiny model


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer random BERT (hidden 32) + WordPiece tokenizer, saved like a pretrained checkpoint.

    Saved as a bare `BertModel` (as MiniLM is), so loading it for classification adds a new head.
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for ws in KEYWORDS.values() for w in ws} | set(FILLER) | {"music", "guitar"})
    tokens = SPECIAL + words
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    # transformers 5 ignores a `vocab_file=` argument (every word would be [UNK]): pass the vocab itself.
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    assert tokenizer.unk_token_id not in tokenizer("goal computer bread")["input_ids"]
    config = BertConfig(vocab_size=len(SPECIAL) + len(words), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------
# Data sets


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """train.jsonl (3 x 30 records), valid.jsonl / test.jsonl (3 x 4 each) and exact-8-record train8.jsonl."""
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", synthetic_records(30, seed=0))
    write_jsonl(folder / "valid.jsonl", synthetic_records(4, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_records(4, seed=2))
    write_jsonl(folder / "train8.jsonl", synthetic_records(3, seed=3)[:8])
    return folder


def set_dotted(data: dict, key: str, value) -> None:
    """data['a']['b'] = value for key 'a.b', creating the sections on the way."""
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def tiny_config(model_dir: Path, train: Path, output_dir: Path, overrides: dict | None = None) -> RunConfig:
    """A RunConfig for a few fast steps of the tiny model; `overrides` maps 'a.b' keys to values."""
    data = {
        "task": "classification",
        "model": {"name": str(model_dir), "max_length": 16},
        "data": {"train": str(train), "val_fraction": 0.15, "test_fraction": 0.15},
        "method": {"name": "full"},
        "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1, "warmup_steps": 0,
                  "seed": 0, "device": "cpu", "early_stopping": {"metric": "f1_macro", "patience": None}},
        "output_dir": str(output_dir),
    }
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data)


@pytest.fixture
def make_config(tiny_bert, data_dir, tmp_path):
    """make_config({'train.lr': 1e-4, ...}) -> RunConfig on the tiny BERT and data_dir/train.jsonl."""
    def make(overrides: dict | None = None) -> RunConfig:
        return tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "run", overrides)

    return make


def quiet(*_args, **_kwargs) -> None:
    """A `log` callback that drops messages."""


def train_quietly(cfg: RunConfig, log=None, **kwargs) -> Path:
    from tunelab.run import train

    return train(cfg, show_progress=False, log=log or quiet, **kwargs)


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    """Records of RUN_DIR/metrics.jsonl, optionally only those of one kind ('train' or 'eval')."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r for r in records if kind is None or r["kind"] == kind]


def spy_on_training(monkeypatch) -> dict:
    """Wrap the training loop to keep the model it trained and a copy of its weights before training.

    Returns a dict that, after `train(...)`, holds 'model' and 'before' (parameter name -> tensor).
    """
    import tunelab.train.loop as loop

    seen: dict = {}
    real = loop.train_loop

    def spy(model, **kwargs):
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["model"] = model
        return real(model, **kwargs)

    monkeypatch.setattr(loop, "train_loop", spy)
    return seen


def train_and_capture(cfg: RunConfig, **kwargs) -> tuple[Path, dict]:
    """Train quietly; returns (RUN_DIR, the spy dict of `spy_on_training`). Usable in any fixture scope."""
    with pytest.MonkeyPatch.context() as mp:
        seen = spy_on_training(mp)
        run_dir = train_quietly(cfg, **kwargs)
    return run_dir, seen


@pytest.fixture
def capture_trained_model(monkeypatch) -> dict:
    """See `spy_on_training`."""
    return spy_on_training(monkeypatch)


@pytest.fixture(scope="session")
def helpers() -> types.SimpleNamespace:
    """The helper functions and constants of this file, for test modules."""
    return types.SimpleNamespace(
        KEYWORDS=KEYWORDS, LABELS=LABELS, FILLER=FILLER, synthetic_records=synthetic_records,
        keyword_records=keyword_records,
        write_records=write_records, write_jsonl=write_jsonl, tiny_config=tiny_config,
        train_quietly=train_quietly, read_metrics=read_metrics, quiet=quiet,
        spy_on_training=spy_on_training, train_and_capture=train_and_capture)


# ---------------------------------------------------------------------------------------------
# Tiny finished runs, trained once per session and shared by the tests that use a run (explain, serve)

TESTS = Path(__file__).resolve().parent
for _sub in ("extractive", "token_tagging", "causal"):
    if str(TESTS / _sub) not in sys.path:
        sys.path.insert(0, str(TESTS / _sub))


@pytest.fixture(scope="session")
def cls_run_dir(tmp_path_factory, tiny_bert, data_dir) -> Path:
    """A tiny classification run (30 steps of the tiny BERT on the keyword data: sport / tech / food)."""
    out = tmp_path_factory.mktemp("cls") / "run"
    return train_quietly(tiny_config(tiny_bert, data_dir / "train.jsonl", out,
                                     {"train.max_steps": 30, "train.precision": "fp32"}))


@pytest.fixture(scope="session")
def qa_run_dir(tmp_path_factory, helpers) -> Path:
    """A tiny QA run (150 steps, model.max_length 32) on short contexts."""
    from extractive_helpers import qa_config, reading_records, write_jsonl, write_tiny_bert

    root = tmp_path_factory.mktemp("qa")
    data = write_jsonl(root / "qa.jsonl", reading_records(300, words=12))
    cfg = qa_config(write_tiny_bert(root / "bert"), data, root / "run",
                    **{"train.max_steps": 150, "model.max_length": 32})
    return helpers.train_quietly(cfg)


@pytest.fixture(scope="session")
def ner_run_dir(tmp_path_factory, helpers) -> Path:
    """A tiny NER run (100 steps) that finds PER / LOC names."""
    from token_helpers import ner_config, ner_records, write_jsonl, write_tiny_bert

    root = tmp_path_factory.mktemp("ner")
    data = write_jsonl(root / "ner.jsonl", ner_records(300))
    return helpers.train_quietly(ner_config(write_tiny_bert(root / "bert"), data, root / "run",
                                            **{"train.max_steps": 100}))


@pytest.fixture(scope="session")
def llama_run_dir(tmp_path_factory, helpers) -> Path:
    """A causal_lm run of the tiny Llama (2 steps on alpaca records: prompts go through its chat template)."""
    from causal_helpers import alpaca_records, write_jsonl
    from causal_tiny import write_tiny_model

    from tunelab.config import config_from_dict

    base = tmp_path_factory.mktemp("llama")
    cfg = {"task": "causal_lm", "model": {"name": str(write_tiny_model(base / "model")), "max_length": 64},
           "data": {"train": str(write_jsonl(base / "alpaca.jsonl", alpaca_records(16)))},
           "method": {"name": "full"}, "generate": {"samples_in_eval": 0}, "output_dir": str(base / "run"),
           "train": {"max_steps": 2, "batch_size": 4, "device": "cpu", "precision": "fp32",
                     "early_stopping": {"metric": "loss"}}}
    return helpers.train_quietly(config_from_dict(cfg))
