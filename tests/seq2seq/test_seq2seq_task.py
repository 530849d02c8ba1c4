"""task: seq2seq on a tiny random T5 and copy/reverse pairs: config keys, metrics against sacrebleu, training
lowers the loss, predict adds `generated`, translate, and save -> reload gives the same outputs."""
from __future__ import annotations

import json

import pytest


def config(tiny_t5, train, tmp_path, **overrides):
    from tunelab.config import config_from_dict

    data = {"task": "seq2seq", "model": {"name": str(tiny_t5), "max_length": 16},
            "data": {"train": train, "val_fraction": 0.1, "test_fraction": 0.1},
            "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "log_every": 1,
                      "seed": 0, "device": "cpu", "eval_every": 15, "early_stopping": {"patience": None}},
            "generate": {"max_new_tokens": 8, "samples_in_eval": 6},
            "output_dir": str(tmp_path / "run")}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(data)


def test_metrics_equal_sacrebleu_on_known_strings():
    import sacrebleu

    from tunelab.evaluate.text_metrics import translation_metrics

    hyp = ["the cat sat on the mat", "a dog barked", ""]
    ref = ["the cat sat on a mat", "the dog barked loudly", "nothing"]
    m = translation_metrics(hyp, ref)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyp, [ref]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyp, [ref]).score)
    assert m["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert m["signatures"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert m["generated"] == 3
    assert translation_metrics(ref, ref)["bleu"] == pytest.approx(100.0)
    assert translation_metrics(ref, ref)["rouge_l"] == 1.0
    assert translation_metrics([], []) == {}


def test_config_keys_belong_to_seq2seq(tiny_t5, pairs_file, tmp_path):
    from tunelab.config import config_from_dict
    from tunelab.errors import ConfigError

    cfg = config(tiny_t5, {"source": "a.txt", "target": "b.txt"}, tmp_path, **{"generate.num_beams": 3})
    assert cfg.data.train == {"source": "a.txt", "target": "b.txt"} and cfg.generate.num_beams == 3
    with pytest.raises(ConfigError, match="data.source_field applies to seq2seq; task is classification"):
        config_from_dict({"data": {"source_field": "en"}})
    with pytest.raises(ConfigError, match="mapping of aligned files applies to seq2seq; task is classification"):
        config_from_dict({"data": {"train": {"source": "a", "target": "b"}}})
    with pytest.raises(ConfigError, match=r"got the keys src, target"):
        config_from_dict({"task": "seq2seq", "data": {"train": {"src": "a", "target": "b"}}})


def test_lora_on_the_scratch_model_is_one_error(tmp_path):
    from tunelab.config import config_from_dict
    from tunelab.tasks.seq2seq import check_config

    cfg = config_from_dict({"task": "seq2seq", "model": {"name": "scratch:transformer-seq2seq"},
                            "method": {"name": "lora"}})
    assert check_config(cfg) == ["method.name: lora wraps Hugging Face layers; scratch:transformer-seq2seq is "
                                 "a scratch model: use full or freeze"]


def test_training_lowers_the_loss_and_the_run_predicts_and_translates(tiny_t5, pairs_file, tmp_path, helpers):
    from tunelab.runs import load_run, predict_records
    from tunelab.tasks.seq2seq import generate_for

    cfg = config(tiny_t5, str(pairs_file), tmp_path)
    run_dir = helpers.train_quietly(cfg)
    train = helpers.read_metrics(run_dir, "train")
    assert train[-1]["loss"] < train[0]["loss"]
    evals = json.loads((run_dir / "eval.json").read_text())["test"]
    assert {"chrf", "bleu", "rouge_l", "loss"} <= set(evals) and evals["generated"] == 6
    assert "signatures" in evals and "Sample outputs (test)" in (run_dir / "report.html").read_text()

    rows = predict_records(run_dir, [{"source": "red cat"}, {"source": "sun moon star"}], "x.jsonl")
    assert [set(r) for r in rows] == [{"source", "generated"}] * 2
    again = generate_for(load_run(run_dir), ["red cat", "sun moon star"])  # save -> reload: same outputs
    assert again == [r["generated"] for r in rows]


def test_translate_from_text_and_stdin(tiny_t5, pairs_file, tmp_path, helpers, capsys, monkeypatch):
    import io

    from tunelab.cli import main
    from tunelab.runs import predict_records

    run_dir = helpers.train_quietly(config(tiny_t5, str(pairs_file), tmp_path))
    expected = [r["generated"] for r in predict_records(run_dir, [{"source": "red cat"}, {"source": "sun"}], "x")]
    assert any(expected)
    capsys.readouterr()
    assert main(["translate", str(run_dir), "--text", "red cat", "--text", "sun"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("red cat\nsun\n"))
    assert main(["translate", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == expected


def test_an_encoder_decoder_batch_counts_its_target_tokens_as_trained_tokens():
    """tokens/s of an encoder-decoder counts source and target tokens (the loop sums both masks)."""
    import torch

    import tunelab.train.loop as loop
    from tunelab.train.distributed import Single
    from tunelab.train.meter import MeanLoss

    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "labels": torch.tensor([[5, 6], [7, -100]]), "decoder_attention_mask": torch.tensor([[1, 1], [1, 0]])}
    w = torch.nn.Parameter(torch.ones(1))
    net = Single().wrap(torch.nn.Module(), lambda model, b: ((w * 2).sum(), 2))
    items, tokens, _ = loop._forward_backward(net, [batch], torch.device("cpu"), None, MeanLoss(), Single(), None)
    assert (items, tokens) == (2, 5 + 3)
