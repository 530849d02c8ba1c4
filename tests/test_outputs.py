"""What a run leaves in RUN_DIR, and using it afterwards: plain transformers / peft reloads with identical
logits, merged LoRA, --overwrite, `tunelab eval` and `tunelab predict`."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunelab.cli import main
from tunelab.config import load_config

TEXTS = ["the goal team win match score", "bread soup", "code chip data robot the a"]  # unequal lengths: padding


@pytest.fixture(scope="module")
def full_run(tiny_bert, data_dir, tmp_path_factory, helpers):
    """(RUN_DIR, spy dict, config) of a 3-step full fine-tune of the tiny BERT."""
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp("full") / "run")
    run_dir, seen = helpers.train_and_capture(cfg)
    return run_dir, seen, cfg


@pytest.fixture(scope="module")
def lora_run(tiny_bert, data_dir, tmp_path_factory, helpers):
    """(RUN_DIR, spy dict) of a 3-step LoRA run with method.merge=true."""
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp("lora") / "run",
                              {"method.name": "lora", "method.merge": True, "train.lr": 1e-2})
    lines: list[str] = []
    run_dir, seen = helpers.train_and_capture(cfg, log=lines.append)
    seen["log"] = lines
    return run_dir, seen


@torch.no_grad()
def logits(model, folder) -> torch.Tensor:
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(str(folder))(TEXTS, padding=True, return_tensors="pt")
    model.eval()
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ---------------------------------------------------------------------------------------------
# RUN_DIR contents


def test_run_dir_holds_every_output(full_run):
    run_dir = full_run[0]
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "report.html", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json", "model/labels.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_config_yaml_reloads_to_the_run_config(full_run):
    run_dir, _, cfg = full_run
    assert load_config(run_dir / "config.yaml") == cfg


def test_eval_json_has_every_classification_metric(full_run):
    test = json.loads((full_run[0] / "eval.json").read_text())["test"]
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
                "recall_weighted", "f1_weighted", "roc_auc_ovr"):
        assert isinstance(test[key], float) and 0.0 <= test[key] <= 1.0, key
    assert test["loss"] > 0.0
    assert set(test["per_class"]) == {"food", "sport", "tech"}
    assert all(set(m) == {"precision", "recall", "f1", "support"} for m in test["per_class"].values())
    matrix = test["confusion_matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert sum(map(sum, matrix)) == test["n"] == 12
    assert test["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(3)) / test["n"])


def test_metrics_jsonl_logs_every_step_and_the_evaluation(full_run, helpers):
    records = helpers.read_metrics(full_run[0])
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("train", 3), ("eval", 3)]
    assert all({"loss", "lr", "tokens_per_s"} <= set(r) for r in records if r["kind"] == "train")


def test_report_is_self_contained_with_inline_figures(full_run):
    page = (full_run[0] / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3  # curves, confusion matrix, ROC
    assert "http://" not in page and "https://" not in page


def test_tensorboard_has_the_training_loss(full_run, helpers):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(full_run[0] / "tensorboard"))
    events.Reload()
    logged = [e.value for e in events.Scalars("train/loss")]
    assert logged == pytest.approx([r["loss"] for r in helpers.read_metrics(full_run[0], "train")])
    assert "eval/f1_macro" in events.Tags()["scalars"]


# ---------------------------------------------------------------------------------------------
# Reloading the saved model with plain transformers / peft


def test_saved_model_reloads_with_transformers_and_identical_logits(full_run):
    from transformers import AutoModelForSequenceClassification

    from tunelab.models.speedups import undo_cls_only

    run_dir, seen, _ = full_run
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "model"))
    undo_cls_only(seen["model"])  # the same computation path as the reloaded model, so equality is exact
    assert torch.equal(logits(reloaded, run_dir / "model"), logits(seen["model"], run_dir / "model"))
    assert reloaded.config.id2label == {0: "food", 1: "sport", 2: "tech"}
    assert reloaded.config.label2id == {"food": 0, "sport": 1, "tech": 2}


def test_lora_adapter_reloads_with_peft_alone(lora_run):
    from peft import AutoPeftModelForSequenceClassification

    run_dir, seen = lora_run
    reloaded = AutoPeftModelForSequenceClassification.from_pretrained(str(run_dir / "model"))
    expected = logits(seen["model"], run_dir / "model")
    torch.testing.assert_close(logits(reloaded, run_dir / "model"), expected, atol=1e-6, rtol=0)
    adapter = load_file(str(run_dir / "model" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert len(lora_b) == 4 and all(v.abs().max() > 0 for v in lora_b)  # trained (B starts at zero)


def test_merged_lora_model_matches_the_adapter(lora_run):
    from transformers import AutoModelForSequenceClassification

    run_dir, seen = lora_run
    merged = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "merged"))
    assert not any("lora" in k for k in load_file(str(run_dir / "merged" / "model.safetensors")))
    torch.testing.assert_close(logits(merged, run_dir / "merged"), logits(seen["model"], run_dir / "model"),
                               atol=1e-5, rtol=0)
    summary = json.loads((run_dir / "eval.json").read_text())
    assert 0.0 <= summary["merge_max_abs_logit_diff"] <= 1e-5
    # the log names the merged folder where the run ends up, not the staging folder it was written in
    said = [line for line in seen["log"] if line.startswith("merged model written to")]
    assert len(said) == 1 and said[0].startswith(f"merged model written to {run_dir / 'merged'};"), said


def test_no_merged_model_unless_merge_is_set(full_run):
    assert not (full_run[0] / "merged").exists()
    assert "merge_max_abs_logit_diff" not in json.loads((full_run[0] / "eval.json").read_text())


# ---------------------------------------------------------------------------------------------
# --overwrite


def test_existing_run_dir_is_kept_without_overwrite_and_replaced_with_it(tmp_path, make_config, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "eval.json").write_text("old run")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(make_config({"output_dir": str(run_dir)}).to_dict()))
    shutil.copy(config, run_dir / "config.yaml")  # what makes it a run --overwrite may replace

    assert main(["train", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "eval.json"]
    assert (run_dir / "eval.json").read_text() == "old run"

    assert main(["train", str(config), "--no-progress", "--overwrite"]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["steps"] == 3


# ---------------------------------------------------------------------------------------------
# tunelab eval / predict


def test_eval_cli_reproduces_the_test_metrics(full_run, capsys):
    run_dir = full_run[0]
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "f1_macro" in out and "eval-test.json" in out
    again = json.loads((run_dir / "eval-test.json").read_text())
    test = json.loads((run_dir / "eval.json").read_text())["test"]
    assert again["confusion_matrix"] == test["confusion_matrix"]
    assert again["loss"] == pytest.approx(test["loss"], abs=1e-5)


def test_eval_cli_on_a_data_file(full_run, data_dir, capsys):
    run_dir = full_run[0]
    assert main(["eval", str(run_dir), "--data", str(data_dir / "valid.jsonl")]) == 0
    assert "(n=12)" in capsys.readouterr().out
    metrics = json.loads((run_dir / "eval-valid.json").read_text())
    assert metrics["n"] == 12 and set(metrics["per_class"]) == {"food", "sport", "tech"}


def test_eval_cli_without_a_test_split_exits_2(full_run, tmp_path, capsys):
    run_dir = shutil.copytree(full_run[0], tmp_path / "run")
    config = run_dir / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["data"]["test_fraction"] = 0.0
    config.write_text(yaml.safe_dump(data))
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no test split" in err and "--data" in err


def test_eval_cli_on_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "is not a finished tunelab run" in capsys.readouterr().err


def test_predict_file_keeps_fields_and_adds_prediction_and_scores(full_run, tmp_path, capsys):
    run_dir = full_run[0]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t, "note": "x"}) + "\n" for i, t in enumerate(TEXTS)))
    target = tmp_path / "out.jsonl"
    assert main(["predict", str(run_dir), "--input", str(source), "--output", str(target)]) == 0
    assert "3 predictions written" in capsys.readouterr().out
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(r["id"], r["text"], r["note"]) for r in rows] == [(i, t, "x") for i, t in enumerate(TEXTS)]
    expected = torch.softmax(logits(full_run[1]["model"], run_dir / "model"), -1)
    for row, probs in zip(rows, expected):
        assert set(row["scores"]) == {"food", "sport", "tech"}
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == max(row["scores"], key=row["scores"].get)
        assert [row["scores"][lab] for lab in ("food", "sport", "tech")] == pytest.approx(probs.tolist(), abs=1e-6)


def test_predict_text_prints_one_json_line_per_text(full_run, capsys):
    assert main(["predict", str(full_run[0]), "--text", TEXTS[0], "--text", TEXTS[1]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS[:2]
    assert all(r["prediction"] in ("food", "sport", "tech") for r in rows)


def test_predict_without_input_or_text_exits_2(full_run, capsys):
    assert main(["predict", str(full_run[0])]) == 2
    assert "give either --text" in capsys.readouterr().err
