"""task: retrieval on the tiny BERT and coded pairs (query and passage share no word): recall@1 goes up with
contrastive training (pinned), eval.json holds base and BM25, save -> reload embeds identically, LoRA and
freeze train what they should, data errors name file / record / field, batches are the same per epoch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from retrieval_data import coded_pairs

STEPS = 6


def config(model, train, out, **overrides):
    from tunelab.config import config_from_dict

    data = {"task": "retrieval", "model": {"name": str(model), "max_length": 16},
            "data": {"train": str(train), "val_fraction": 0.15, "test_fraction": 0.15},
            "retrieval": {"temperature": 0.1},
            "train": {"max_steps": STEPS, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0, "log_every": 1,
                      "seed": 0, "device": "cpu", "precision": "fp32", "early_stopping": {"patience": None}},
            "output_dir": str(out)}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(data)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, helpers):
    return helpers.write_jsonl(tmp_path_factory.mktemp("retrieval") / "pairs.jsonl", coded_pairs(160))


@pytest.fixture(scope="module")
def trained(tiny_bert, pairs_file, tmp_path_factory, helpers):
    """(RUN_DIR, the spy dict: the trained model and its weights before) of a 6-step full fine-tune."""
    cfg = config(tiny_bert, pairs_file, tmp_path_factory.mktemp("retrieval-run") / "run")
    return helpers.train_and_capture(cfg)


def test_recall_at_1_goes_up_with_contrastive_training_and_eval_json_has_base_and_bm25(trained):
    run_dir, _ = trained
    result = json.loads((run_dir / "eval.json").read_text())
    test, base, bm25 = result["test"], result["base"], result["bm25"]
    keys = ["recall@1", "recall@5", "recall@10", "mrr@10"]
    assert [round(test[k], 4) for k in keys] == [0.4583, 0.875, 1.0, 0.6143]
    assert [round(base[k], 4) for k in keys] == [0.0, 0.25, 0.4167, 0.0994]
    assert [bm25[k] for k in keys] == [0.0, 0.0, 0.0, 0.0]  # no word in common: BM25 ties everything
    assert test["n"] == base["n"] == bm25["n"] == 24 and test["passages"] == 24
    assert test["recall@1"] > base["recall@1"] and test["mrr@10"] > base["mrr@10"]
    assert len(result["examples"]) == 5 and {"query", "positive", "top_base", "top_tuned", "tuned_correct"} \
        <= set(result["examples"][0])
    page = (run_dir / "report.html").read_text()
    assert "BM25, untuned and fine-tuned" in page and "Example test queries" in page


def test_tokens_per_second_count_queries_and_passages(trained, tiny_bert, pairs_file, tmp_path):
    from tunelab.tasks.retrieval import RetrievalJob

    run_dir, _ = trained
    job = RetrievalJob(config(tiny_bert, pairs_file, tmp_path / "x"), torch.device("cpu"), lambda _: None)
    job.prepare()
    batches = list(job.epoch_batches(0))[:STEPS]
    expected = sum(int(b["query_attention_mask"].sum() + b["passage_attention_mask"].sum()) for b in batches)
    assert json.loads((run_dir / "eval.json").read_text())["train_tokens"] == expected
    again = list(job.epoch_batches(0))[:STEPS]  # an epoch's batches are the same every time (resume)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(batches, again) for k in a)
    other = next(iter(job.epoch_batches(1)))
    assert not torch.equal(other["query_group"], batches[0]["query_group"])


def test_the_saved_run_embeds_like_the_trained_model_and_plain_transformers_loads_it(trained):
    from transformers import AutoModel, AutoTokenizer

    from tunelab.retrieval.embed import embed_texts
    from tunelab.runs import load_run

    run_dir, seen = trained
    texts = ["goal team win", "chip code robot", "the a cook"]
    run = load_run(run_dir)
    assert run.meta == {"pooling": "mean", "max_length": 16} and not run.model.training
    in_memory = embed_texts(seen["model"], run.tokenizer, texts, max_length=16, desc=None)
    np.testing.assert_allclose(embed_texts(run.model, run.tokenizer, texts, max_length=16, desc=None), in_memory,
                               rtol=0, atol=1e-6)
    plain = AutoModel.from_pretrained(str(run_dir / "model"))
    tok = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    np.testing.assert_allclose(embed_texts(plain, tok, texts, max_length=16, desc=None), in_memory, atol=1e-6)
    assert json.loads((run_dir / "model" / "retrieval.json").read_text())["pooling"] == "mean"


def test_full_training_moves_everything_but_the_unused_pooler(trained):
    _, seen = trained
    for name, p in seen["model"].named_parameters():
        moved = not torch.equal(p.detach(), seen["before"][name])
        assert moved == (not name.startswith("pooler.")) == p.requires_grad, name


@pytest.mark.parametrize("method, extra, trains", [
    ("lora", {"train.lr": 2e-2}, lambda n: "lora_" in n),
    ("freeze", {"method.trainable_layers": 1}, lambda n: n.startswith("encoder.layer.1.")),
])
def test_lora_and_freeze_train_their_parameters_and_reload(method, extra, trains, tiny_bert, pairs_file, tmp_path,
                                                           helpers):
    from tunelab.retrieval.embed import embed_texts
    from tunelab.runs import load_run

    cfg = config(tiny_bert, pairs_file, tmp_path / "run", **{"method.name": method, **extra})
    run_dir, seen = helpers.train_and_capture(cfg)
    model = seen["model"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(trains(n) for n in trainable)
    for name, p in model.named_parameters():
        assert (not torch.equal(p.detach(), seen["before"][name])) == (name in trainable), name
    texts = ["goal team win", "chip code robot"]
    run = load_run(run_dir)
    np.testing.assert_allclose(embed_texts(run.model, run.tokenizer, texts, max_length=16, desc=None),
                               embed_texts(model, run.tokenizer, texts, max_length=16, desc=None), atol=1e-6)
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["test"]["mrr@10"] > result["base"]["mrr@10"]


def test_hard_negatives_train_and_duplicated_passages_count_once(tiny_bert, tmp_path, helpers):
    from tunelab.tasks.retrieval import load_splits

    records = coded_pairs(40)
    for i, r in enumerate(records):
        r["negative"] = records[(i + 1) % len(records)]["positive"]
    records += [dict(records[0], query="soup rice the")]  # a second query for passage 0
    path = helpers.write_jsonl(tmp_path / "neg.jsonl", records)
    cfg = config(tiny_bert, path, tmp_path / "run", **{"data.negative_field": "negative", "train.max_steps": 2,
                                                       "data.val_fraction": 0.0, "data.test_fraction": 0.25})
    run_dir = helpers.train_quietly(cfg)
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    split = load_splits(cfg.data, 0, lambda _: None)["test"]
    assert split.positives.count(records[0]["positive"]) == 2  # records sharing a passage stay in one split
    # 11 queries against 18 passages: 10 positives (one of them twice) and the 8 negatives that are no positive
    assert len(set(split.positives)) == 10 and len(set(split.positives + split.negatives)) == 18
    assert (test["n"], test["passages"]) == (11, 18)


@pytest.mark.parametrize("records, overrides, message", [
    ([{"query": "a", "positive": "b"}, {"question": "c", "positive": "d"}], {},
     r"pairs.jsonl:2: record 2: field 'query' is missing; every record needs it: fix the record or set "
     r"data.query_field to the field holding that text \(fields here: question, positive\)"),
    ([{"query": "a", "positive": " "}], {}, r"pairs.jsonl:1: record 1: field 'positive' is empty"),
    ([{"query": "a", "positive": ["b"]}], {}, r"record 1: field 'positive' is not a text \(\['b'\]\)"),
    ([{"query": "a", "positive": "b"}], {"data.negative_field": "hard"},
     r"record 1: field 'hard' is missing; .* set data.negative_field"),
])
def test_missing_or_empty_fields_are_one_data_error(records, overrides, message, tiny_bert, tmp_path, helpers):
    from tunelab.errors import DataError

    path = helpers.write_jsonl(tmp_path / "pairs.jsonl", records)
    with pytest.raises(DataError, match=message):
        helpers.train_quietly(config(tiny_bert, path, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_retrieval_keys_belong_to_retrieval_and_scratch_models_are_refused():
    from tunelab.config import config_from_dict
    from tunelab.errors import ConfigError
    from tunelab.tasks.retrieval import check_config

    with pytest.raises(ConfigError, match="data.query_field applies to retrieval; task is classification"):
        config_from_dict({"data": {"query_field": "q"}})
    with pytest.raises(ConfigError, match="retrieval.temperature applies to retrieval; task is classification"):
        config_from_dict({"retrieval": {"temperature": 0.1}})
    cfg = config_from_dict({"task": "retrieval", "model": {"name": "scratch:transformer"}})
    assert check_config(cfg) == ["model.name: 'scratch:transformer': retrieval fine-tunes a pretrained Hugging Face "
                                 "encoder (transformers AutoModel); use builtin:minilm-l6 or a model folder"]


def test_builtin_bbc_headlines_pairs_headlines_with_their_articles():
    from tunelab.data.sources import load_records

    said = []
    records = load_records("builtin:bbc-headlines", said.append)
    assert len(records) == 2127 and said == ["builtin:bbc-headlines: skipped 98 repeated articles (same headline "
                                             "and body)"]
    first = records[0]
    assert first["query"] == "Ad sales boost Time Warner profit"
    assert first["positive"].startswith("Quarterly profits at US media giant TimeWarner jumped 76%")
    assert len({r["positive"] for r in records}) == 2127 - 35  # bodies under two headlines: one passage
