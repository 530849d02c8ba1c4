"""task: seq2seq with each model family on the same pairs, one config key (model.name) apart:

- decoder-only (the tiny random Llama of tests/causal): the loss is on the target tokens only (every prompt
  position carries IGNORE_INDEX), training lowers it, predict / translate work, save -> reload generates the
  same; a scratch GPT (fresh or pretrained by tunelab) the same way, other scratch models one error;
- the warm-started encoder-decoder (a tiny random BERT) and scratch:transformer-seq2seq (a tokenizer trained
  by tunelab's `tokenizer train` on both sides of the pairs) through the whole task;
- the warning for a target language the tokenizer cannot spell, and the pinned first losses of a seeded run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "causal"))
from causal_tiny import write_tiny_model  # noqa: E402
from seq2seq_tiny import reverse_pairs  # noqa: E402

from tunelab.data.tokens import IGNORE_INDEX  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402

BERT_WORDS = ["bread", "cheese", "soup", "goal", "match", "team", "computer", "robot", "data", "web"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def bert_pairs_file(tmp_path_factory) -> Path:
    """Reverse pairs over words the tiny BERT's vocabulary holds."""
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(60):
        words = [rng.choice(BERT_WORDS) for _ in range(rng.randint(2, 4))]
        rows.append({"source": " ".join(words), "target": " ".join(reversed(words))})
    path = tmp_path_factory.mktemp("bert-pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair_tokenizer(pairs_file, tmp_path_factory) -> Path:
    """A small BPE tokenizer trained on both sides of the pairs (what the README tells users to do)."""
    from tunelab.tokenizer_train import train_tokenizer

    folder = tmp_path_factory.mktemp("pair-tokenizer")
    sides = folder / "both-sides.txt"
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    sides.write_text("".join(f"{r['source']}\n{r['target']}\n" for r in rows), encoding="utf-8")
    return train_tokenizer([str(sides)], 300, folder / "tokenizer")


def config(model: dict, train: Path, tmp_path: Path, **overrides):
    from tunelab.config import config_from_dict

    data = {"task": "seq2seq", "model": {"max_length": 64, **model},
            "data": {"train": str(train), "val_fraction": 0.1, "test_fraction": 0.1},
            "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "log_every": 1,
                      "seed": 0, "device": "cpu", "precision": "fp32", "eval_every": 15,
                      "early_stopping": {"patience": None}},
            "generate": {"max_new_tokens": 12, "samples_in_eval": 6},
            "output_dir": str(tmp_path / "run")}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(data)


def prepared_job(cfg):
    import torch

    from tunelab.tasks.seq2seq import Seq2SeqJob

    lines: list[str] = []
    job = Seq2SeqJob(cfg, torch.device("cpu"), lines.append)
    job.prepare()
    return job, lines


def trains_and_reloads(cfg, helpers) -> Path:
    """Train; the loss falls; predict adds `generated`; translate and a reloaded run give the same outputs."""
    from tunelab.runs import load_run, predict_records
    from tunelab.tasks.seq2seq import generate_for, translate

    run_dir = helpers.train_quietly(cfg)
    losses = [r["loss"] for r in helpers.read_metrics(run_dir, "train")]
    assert losses[-1] < losses[0]
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert {"chrf", "bleu", "rouge_l", "loss", "signatures"} <= set(test) and test["generated"] == 6
    sources = [r["source"] for r in test["samples"][:3]]
    rows = predict_records(run_dir, [{"source": s} for s in sources], "x.jsonl")
    assert [set(r) for r in rows] == [{"source", "generated"}] * 3
    generated = [r["generated"] for r in rows]
    assert generated == [s["generated"] for s in test["samples"][:3]]  # as the run itself generated them
    assert translate(run_dir, sources) == generated
    assert generate_for(load_run(run_dir), sources) == generated
    return run_dir


# ------------------------------------------------------------------------------------------ decoder-only

def test_decoder_only_trains_on_target_tokens_only(tiny_llama, pairs_file, tmp_path):
    from tunelab.tasks.seq2seq import prompt_of

    job, _ = prepared_job(config({"name": str(tiny_llama)}, pairs_file, tmp_path))
    assert job.family.name == "decoder"
    tok, data = job.tokenizer, job.data["train"]
    batch = next(iter(job.epoch_batches(0)))
    assert set(batch) == {"input_ids", "attention_mask", "targets"}
    for ex in data.examples:
        pair = data.pairs[ex.record]
        prompt = tok(prompt_of(pair["source"]))["input_ids"]
        answer = tok(pair["target"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ex.ids == prompt + answer
        # targets[t] is the token after t: no prompt token is a target, every answer token and EOS is
        assert ex.targets[:len(prompt) - 1] == [IGNORE_INDEX] * (len(prompt) - 1)
        assert ex.targets[len(prompt) - 1:] == answer + [IGNORE_INDEX]
    trained = (batch["targets"] != IGNORE_INDEX).sum(dim=1)
    assert job.loss(job.model, batch)[1] == int(trained.sum())


def test_decoder_only_trains_predicts_and_reloads(tiny_llama, pairs_file, tmp_path, helpers):
    run_dir = trains_and_reloads(config({"name": str(tiny_llama)}, pairs_file, tmp_path), helpers)
    assert json.loads((run_dir / "seq2seq.json").read_text()) == {"family": "decoder"}


def test_a_scratch_gpt_is_a_decoder_only_translator_too(pair_tokenizer, pairs_file, tmp_path, helpers):
    cfg = config({"name": "scratch:gpt", "tokenizer": str(pair_tokenizer), "layers": 1, "hidden_size": 32,
                  "heads": 4, "ffn_size": 64}, pairs_file, tmp_path)
    job, _ = prepared_job(cfg)
    batch = next(iter(job.epoch_batches(0)))
    assert job.family.name == "scratch-decoder"
    assert job.loss(job.model, batch)[1] == int((batch["targets"] != IGNORE_INDEX).sum())  # targets only
    run_dir = trains_and_reloads(cfg, helpers)
    assert json.loads((run_dir / "seq2seq.json").read_text()) == {"family": "scratch-decoder"}


def test_other_scratch_models_are_one_error(pairs_file, tmp_path):
    with pytest.raises(TunelabError, match=r"seq2seq trains scratch:transformer-seq2seq .* or scratch:gpt"):
        prepared_job(config({"name": "scratch:lstm"}, pairs_file, tmp_path))


# ------------------------------------------------------------------------------- encoder-decoder families

def test_warm_started_encoder_decoder_through_the_task(tiny_bert, bert_pairs_file, tmp_path, helpers):
    cfg = config({"name": str(tiny_bert), "architecture": "encoder-decoder"}, bert_pairs_file, tmp_path,
                 **{"train.lr": 1e-3})
    run_dir = trains_and_reloads(cfg, helpers)
    from transformers import AutoTokenizer, EncoderDecoderModel  # plain transformers loads the saved model

    EncoderDecoderModel.from_pretrained(str(run_dir / "model"))
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    samples = json.loads((run_dir / "eval.json").read_text())["test"]["samples"]
    for s in samples:  # no [CLS] / [SEP] / [PAD] written into the outputs
        assert not {"[CLS]", "[SEP]", "[PAD]"} & set(s["generated"].split())
        assert tokenizer.cls_token not in s["generated"]


def test_scratch_transformer_through_the_task(pair_tokenizer, pairs_file, tmp_path, helpers):
    cfg = config({"name": "scratch:transformer-seq2seq", "tokenizer": str(pair_tokenizer), "layers": 1,
                  "hidden_size": 32, "heads": 4, "ffn_size": 64}, pairs_file, tmp_path)
    trains_and_reloads(cfg, helpers)


def test_one_key_changes_the_family(tiny_llama, tiny_t5, pairs_file, tmp_path):
    """The same data section trains either family: only model.name differs."""
    decoder, _ = prepared_job(config({"name": str(tiny_llama)}, pairs_file, tmp_path))
    encdec, _ = prepared_job(config({"name": str(tiny_t5)}, pairs_file, tmp_path))
    assert (decoder.family.name, encdec.family.name) == ("decoder", "encoder-decoder")
    assert decoder.data["test"].pairs == encdec.data["test"].pairs


# ---------------------------------------------------------------------------------- unspellable targets

def test_a_target_language_the_tokenizer_cannot_spell_is_one_warning(tiny_bert, bert_pairs_file, tmp_path):
    from transformers import AutoTokenizer

    from tunelab.tasks.seq2seq import spelling_warning

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))  # uncased and accent-stripping, as MiniLM's
    assert spelling_warning(tok, ["Goal Team", "the  Robot data"] * 10, "x") is None  # case and spaces: fine
    accented = ["gôal team", "robôt data", "brëad"] * 4 + ["goal team"] * 8
    line = spelling_warning(tok, accented, "builtin:minilm-l6")
    assert line.startswith("warning: the tokenizer of builtin:minilm-l6 cannot write 12 of 20 sampled targets "
                           "back (e.g. 'brëad' comes back as 'bread')")
    assert "\n" not in line and "data.direction: to_english" in line

    rows = [{"source": "goal team", "target": "gôal téam"}] * 20
    path = tmp_path / "accented.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _, lines = prepared_job(config({"name": str(tiny_bert), "architecture": "encoder-decoder"}, path, tmp_path))
    assert len([l for l in lines if l.startswith("warning: the tokenizer of")]) == 1


# ------------------------------------------------------------------------------------------ pinned losses

def test_first_losses_of_a_seeded_run_are_pinned(tiny_t5, tiny_llama, pair_tokenizer, pairs_file, tmp_path,
                                                 helpers):
    """Exact first losses (fp32, one thread, seed 0) of each family on the same pairs."""
    import torch

    torch.set_num_threads(1)
    found = {}
    scratch = {"name": "scratch:transformer-seq2seq", "tokenizer": str(pair_tokenizer), "layers": 1,
               "hidden_size": 32, "heads": 4, "ffn_size": 64}
    for name, model in (("t5", {"name": str(tiny_t5)}), ("llama", {"name": str(tiny_llama)}),
                        ("scratch", scratch)):
        cfg = config(model, pairs_file, tmp_path / name, **{"train.max_steps": 3,
                                                                             "train.eval_every": None})
        run_dir = helpers.train_quietly(cfg)
        found[name] = [round(r["loss"], 4) for r in helpers.read_metrics(run_dir, "train")]
    assert found == PINNED


PINNED = {"t5": [3.6319, 3.1994, 3.0401], "llama": [4.5776, 4.4588, 4.3493],
          "scratch": [5.9847, 5.6004, 5.3801]}
