"""The token_classification task end to end on tiny models: a synthetic NER task learned to high entity F1,
save -> reload (and plain transformers) with identical outputs, predict entities for text and words, the unseen
tag error, long sentences in windows, constrained decoding on a run, scratch taggers, LoRA, and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from token_helpers import as_text_record, ner_config, ner_records, write_jsonl, write_tiny_bert  # noqa: E402


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("ner-bert"))


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ner-data") / "ner.jsonl", ner_records(400))


@pytest.fixture(scope="module")
def learned(bert, ner_data, tmp_path_factory, helpers):
    """(RUN_DIR, the trained model) of 150 steps on the synthetic task."""
    cfg = ner_config(bert, ner_data, tmp_path_factory.mktemp("ner-run") / "run",
                     **{"train.max_steps": 150, "train.lr": 5e-3, "model.dropout": 0.0})
    lines: list[str] = []
    run_dir, seen = helpers.train_and_capture(cfg, log=lines.append)
    return run_dir, seen["model"], lines


def test_a_tiny_bert_learns_the_synthetic_ner_task(learned, helpers):
    run_dir, _, lines = learned
    assert "tag scheme: iob2 (detected)" in lines
    assert "labels: 5 IOB2 tags (O, B-LOC, B-PER, I-LOC, I-PER)" in lines
    first = [round(r["loss"], 4) for r in helpers.read_metrics(run_dir, "train")[:3]]
    assert first == [1.6168, 1.3679, 1.3737]
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert (test["n"], test["entities"]) == (60, 144)
    assert test["entity_f1"] == pytest.approx(1.0, abs=1e-4) and test["token_accuracy"] > 0.98
    assert set(test["per_type"]) == {"LOC", "PER"} and test["type_confusion"]["labels"] == ["LOC", "PER", "none"]
    assert json.loads((run_dir / "tagging.json").read_text()) == {
        "scheme": "iob2", "how": "detected", "labels": ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]}
    report = (run_dir / "report.html").read_text()
    for part in ("Entities by type (test)", "Entity type confusion (test)", "Sample sentences (test)",
                 "strict mode", "<mark>"):
        assert part in report


def test_reloaded_run_and_plain_transformers_give_the_same_outputs(learned):
    from transformers import AutoModelForTokenClassification

    from tunelab.runs import evaluate_run, load_run

    run_dir, model, _ = learned
    run = load_run(run_dir)
    plain = AutoModelForTokenClassification.from_pretrained(str(run_dir / "model")).eval()
    assert plain.config.id2label == {0: "O", 1: "B-LOC", 2: "B-PER", 3: "I-LOC", 4: "I-PER"}
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]])
    mask = (ids != 0).long()
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(run.model(input_ids=ids, attention_mask=mask).logits, want)
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits, want)
    metrics, _ = evaluate_run(run_dir, log=lambda _: None)
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert metrics.pop("loss") == pytest.approx(test.pop("loss")) and metrics == test


def test_predict_gives_entities_with_offsets_for_text_and_indices_for_words(learned):
    from tunelab.runs import predict_records

    run_dir, _, _ = learned
    text = "yesterday anna smith flew to  oslo with omar"
    rows = predict_records(run_dir, [{"text": text}], "t", log=lambda _: None)
    assert [(e["text"], e["label"], text[e["start"]:e["end"]]) for e in rows[0]["entities"]] == [
        ("anna smith", "PER", "anna smith"), ("oslo", "LOC", "oslo"), ("omar", "PER", "omar")]
    assert all(0.5 < e["score"] <= 1 for e in rows[0]["entities"]) and "tags" not in rows[0]
    words = ["the", "mayor", "of", "lima", "met", "sara", "khan"]
    (row,) = predict_records(run_dir, [{"tokens": words, "id": 7}], "t", log=lambda _: None)
    assert row["id"] == 7 and row["tags"] == ["O", "O", "O", "B-LOC", "O", "B-PER", "I-PER"]
    assert [(e["label"], e["start"], e["end"], e["text"]) for e in row["entities"]] == [
        ("LOC", 3, 4, "lima"), ("PER", 5, 7, "sara khan")]


def test_text_records_with_entities_train_like_word_records(bert, tmp_path, helpers):
    records = ner_records(60)
    words = write_jsonl(tmp_path / "words.jsonl", records)
    text = write_jsonl(tmp_path / "text.jsonl", [as_text_record(r) for r in records])
    losses = []
    for data in (words, text):
        run_dir = helpers.train_quietly(ner_config(bert, data, tmp_path / data.stem, **{"train.max_steps": 2}))
        losses.append([r["loss"] for r in helpers.read_metrics(run_dir, "train")])
    assert losses[0] == losses[1]


def test_a_tag_unseen_in_training_is_a_one_line_data_error(bert, ner_data, tmp_path, helpers):
    from tunelab.errors import DataError

    valid = ner_records(5, seed=9)
    valid[3]["tags"][0] = "B-ORG"
    path = write_jsonl(tmp_path / "valid.jsonl", valid)
    cfg = ner_config(bert, ner_data, tmp_path / "run", **{"data.validation": str(path)})
    with pytest.raises(DataError) as e:
        helpers.train_quietly(cfg)
    message = str(e.value)
    assert "valid.jsonl:4" in message and "record 4" in message and "'B-ORG'" in message
    assert "known: O, B-LOC, B-PER, I-LOC, I-PER" in message and "\n" not in message


def test_bioes_data_is_detected_converted_and_stated(bert, tmp_path, helpers):
    from tunelab.data.tagging import spans_of

    def bioes(tags):
        out = list(tags)
        for kind, i, j in spans_of(tags):
            out[i:j] = [f"S-{kind}"] if j - i == 1 else [f"B-{kind}"] + [f"I-{kind}"] * (j - i - 2) + [f"E-{kind}"]
        return out

    records = [{"tokens": r["tokens"], "tags": bioes(r["tags"])} for r in ner_records(60)]
    lines: list[str] = []
    run_dir = helpers.train_quietly(ner_config(bert, write_jsonl(tmp_path / "b.jsonl", records), tmp_path / "run",
                                               **{"train.max_steps": 1}), log=lines.append)
    assert "tag scheme: bioes (detected)" in lines
    assert json.loads((run_dir / "tagging.json").read_text())["labels"] == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]


def test_long_sentences_are_windowed_and_no_entity_is_lost(learned, bert, tmp_path):
    """Ten sentences joined into one of 78 words through a run whose rows hold 32 tokens: the windows, merged
    word by word, tag every word, and the entities all along the sentence are found."""
    from tunelab.evaluate.ner_metrics import ner_metrics
    from tunelab.runs import predict_records

    run_dir, _, _ = learned
    parts = ner_records(10, seed=5)
    joined = {"tokens": [w for p in parts for w in p["tokens"]]}
    gold = [t for p in parts for t in p["tags"]]
    for stride, recall in ((0, 22 / 23), (3, 22 / 23), (12, 22 / 23)):
        (row,) = predict_records(run_dir, [joined], "t", overrides=[f"data.doc_stride={stride}"], log=lambda _: None)
        assert len(row["tags"]) == len(joined["tokens"]) == 78  # 80 tokens with [CLS] / [SEP]: 3+ windows
        m = ner_metrics([gold], [row["tags"]])
        # truncated to one 32-token row, at most the 8 entities of its first 30 words could be found
        assert m["entities"] == 23 and m["entity_recall"] == pytest.approx(recall)


def test_constrained_decoding_never_predicts_an_invalid_sequence(learned):
    from tunelab.runs import predict_records

    run_dir, _, _ = learned
    records = [{"tokens": r["tokens"]} for r in ner_records(40, seed=11)]
    rows = predict_records(run_dir, records, "t", overrides=["predict.constrained=true"], log=lambda _: None)
    for row in rows:
        for before, tag in zip(["O"] + row["tags"], row["tags"]):
            assert not tag.startswith("I-") or before[2:] == tag[2:]


@pytest.mark.parametrize("kind, first", [("transformer", [1.835, 1.7106]), ("lstm", [1.6679, 1.6682]),
                                         ("gru", [1.5437, 1.5685])])
def test_scratch_taggers_train_save_and_reload(kind, first, bert, ner_data, tmp_path, helpers):
    from tunelab.models.scratch import RNNTagger, TransformerTagger
    from tunelab.runs import load_run, predict_records

    cfg = ner_config(f"scratch:{kind}", ner_data, tmp_path / "run",
                     **{"model.tokenizer": str(bert), "model.hidden_size": 32, "model.heads": 2,
                        "model.layers": 1, "train.max_steps": 2})
    run_dir, seen = helpers.train_and_capture(cfg)
    assert [round(r["loss"], 4) for r in helpers.read_metrics(run_dir, "train")] == first
    model = seen["model"].eval()
    assert isinstance(model, TransformerTagger if kind == "transformer" else RNNTagger)
    run = load_run(run_dir)
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(run.model(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits)
        # padding changes no real token's logits
        alone = model(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
        torch.testing.assert_close(alone, model(input_ids=ids, attention_mask=mask).logits[1:, :4])
    rows = predict_records(run_dir, [{"tokens": ["anna", "lives", "in", "oslo"]}], "t", log=lambda _: None)
    assert len(rows[0]["tags"]) == 4


def test_lora_trains_adapters_and_the_head_and_reloads(bert, ner_data, tmp_path, helpers):
    from tunelab.runs import load_run

    cfg = ner_config(bert, ner_data, tmp_path / "run", **{"method.name": "lora", "train.max_steps": 3})
    run_dir, seen = helpers.train_and_capture(cfg)
    model, before = seen["model"], seen["before"]
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n or "classifier" in n for n in moved)
    assert any("classifier" in n for n in moved) and any("lora_B" in n for n in moved)
    assert (run_dir / "model" / "adapter_config.json").is_file()
    run = load_run(run_dir)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(run.model(input_ids=ids).logits, model(input_ids=ids).logits)


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_train_predict_and_eval(learned, bert, ner_data, tmp_path, capsys, monkeypatch):
    from tunelab.cli import main

    run_dir, _, _ = learned
    assert main(["predict", str(run_dir), "--text", "omar lives in cairo"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == "omar lives in cairo"
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in row["entities"]] == [
        ("omar", "PER", 0, 4), ("cairo", "LOC", 14, 19)]
    gold = write_jsonl(tmp_path / "gold.jsonl", ner_records(20, seed=4))
    assert main(["eval", str(run_dir), "--data", str(gold)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("entity_f1 ") and "(n=20 sentences)" in out
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"words": ["a"]}])
    assert main(["predict", str(run_dir), "--input", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "record 1 has neither 'tokens'" in err and "\n" not in err


def test_eval_and_predict_read_conll_files_like_training(learned, tmp_path, capsys):
    from tunelab.cli import main

    run_dir, _, _ = learned
    conll = tmp_path / "dev.conll"
    conll.write_text("-DOCSTART- O\n\nomar B-PER\nlives O\nin O\ncairo B-LOC\n", encoding="utf-8")
    assert main(["eval", str(run_dir), "--data", str(conll)]) == 0
    assert capsys.readouterr().out.startswith("entity_f1 1.0000")
    words = tmp_path / "words.txt"
    words.write_text("omar O\nlives O\nin O\ncairo O\n", encoding="utf-8")  # tags are ignored by predict
    assert main(["predict", str(run_dir), "--input", str(words)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["tokens"] == ["omar", "lives", "in", "cairo"]
    assert [(e["label"], e["start"], e["end"]) for e in row["entities"]] == [("PER", 0, 1), ("LOC", 3, 4)]


def test_cli_train_refuses_lora_on_scratch_and_a_wide_stride(bert, ner_data, tmp_path, capsys, monkeypatch):
    from tunelab.cli import main

    config = tmp_path / "ner.yaml"
    config.write_text(f"task: token_classification\nmodel: {{name: 'scratch:lstm', max_length: 16}}\n"
                      f"data: {{train: '{ner_data}', doc_stride: 8}}\nmethod: {{name: lora}}\n"
                      f"output_dir: '{tmp_path / 'run'}'\ntrain: {{precision: fp32}}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "method.name: lora wraps Hugging Face layers" in err
    assert "data.doc_stride: got 8" in err


def test_minilm_on_builtin_ner_synthetic_example(tmp_path, helpers):
    """The shipped example's model and data, two steps: MiniLM gets an 11-tag head and saves it with id2label."""
    from transformers import AutoConfig

    from tunelab.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "examples" / "ner-synthetic.yaml",
                      ["train.max_steps=2", "train.eval_every=null", "data.limit=32", "train.precision=fp32",
                       f"output_dir={tmp_path / 'run'}"])
    lines: list[str] = []
    run_dir = helpers.train_quietly(cfg, log=lines.append)
    assert "tag scheme: iob2 (detected)" in lines
    config = AutoConfig.from_pretrained(str(run_dir / "model"))
    assert config.architectures == ["BertForTokenClassification"] and len(config.id2label) == 11
    assert config.id2label[0] == "O" and config.label2id["I-PER"] == 10
    assert "method full: 22,569,611 trainable" in " ".join(lines)
