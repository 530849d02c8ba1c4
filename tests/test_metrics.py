"""Classification metrics and metrics that can be missing: macro averages over the classes present,
warnings about tiny or absent classes, early stopping on a metric that is undefined (ROC-AUC)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tunelab.config import config_from_dict
from tunelab.evaluate.metrics import classification_metrics


def one_hot(pred: list[int], classes: int) -> np.ndarray:
    return np.eye(classes)[pred]  # (N, C) "probabilities" whose argmax is `pred`


def test_macro_f1_averages_over_the_classes_present():
    from sklearn.metrics import f1_score

    # class 'd' is in neither the labels nor the predictions: F1 of 'a' is 4/7, of 'b' and 'c' 0
    y_true, y_pred = [0, 1, 2, 0, 1], [0, 0, 0, 0, 0]
    m = classification_metrics(y_true, one_hot(y_pred, 4), ["a", "b", "c", "d"])
    assert m["f1_macro"] == pytest.approx(4 / 21)  # 0.190, not 4/28 = 0.143 with 'd' counted as 0
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["precision_macro"] == pytest.approx(0.4 / 3) and m["recall_macro"] == pytest.approx(1 / 3)
    assert m["f1_weighted"] == pytest.approx(2 / 5 * 4 / 7)
    assert list(m["per_class"]) == ["a", "b", "c", "d"] and m["per_class"]["d"]["support"] == 0
    assert m["roc_auc_ovr"] is None  # undefined with a class absent


def test_a_predicted_class_absent_from_the_labels_still_counts():
    # 'c' is predicted but never true: it is present (its F1 is 0) and stays in the macro average
    m = classification_metrics([0, 1], one_hot([0, 2], 3), ["a", "b", "c"])
    assert m["f1_macro"] == pytest.approx(1 / 3)


@pytest.fixture
def skewed(helpers, tmp_path):
    """Training data with 3 examples of 'tech'; a validation file without 'sport'."""
    train = helpers.write_jsonl(tmp_path / "train.jsonl",
                                helpers.synthetic_records(0, seed=0, counts={"food": 12, "sport": 12, "tech": 3}))
    valid = [r for r in helpers.synthetic_records(4, seed=1) if r["label"] != "sport"]
    return train, helpers.write_jsonl(tmp_path / "valid.jsonl", valid)


def test_tiny_and_absent_classes_are_warned_about_at_training_time(tiny_bert, skewed, tmp_path, helpers):
    from tunelab.tasks.classification import ClassificationJob

    train, valid = skewed
    cfg = helpers.tiny_config(tiny_bert, train, tmp_path / "run", {"data.validation": str(valid),
                                                                   "data.test_fraction": 0.0})
    logs: list[str] = []
    ClassificationJob(cfg, torch.device("cpu"), logs.append).prepare()
    warnings = [line for line in logs if line.startswith("warning")]
    assert warnings == [
        "warning: classes with fewer than 5 training examples: 'tech' (3); their scores will be noisy: add "
        "examples or merge them into other classes",
        "warning: no validation examples of 'sport': ROC-AUC is undefined on validation and macro averages "
        "there cover only the classes present"]


def test_early_stopping_on_roc_auc_without_a_class_in_validation_keeps_the_last_weights(
        tiny_bert, skewed, tmp_path, helpers, capsys):
    train, valid = skewed
    cfg = helpers.tiny_config(tiny_bert, train, tmp_path / "run", {
        "data.validation": str(valid), "train.eval_every": 1,
        "train.early_stopping": {"metric": "roc_auc_ovr", "patience": 1}})
    run = helpers.train_quietly(cfg)  # used to raise TypeError: sign * None
    out = capsys.readouterr().out
    assert out.count("validation roc_auc_ovr is undefined") == 3
    assert "validation roc_auc_ovr was undefined at all 3 evaluations" in out
    summary = json.loads((run / "eval.json").read_text())
    assert summary["best_step"] is None and summary["steps"] == 3 and not summary["stopped_early"]


class _Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_evaluations_without_the_metric_are_skipped_not_counted(capsys):
    """Best checkpoint among the evaluations that have the metric; skipped ones do not use up patience."""
    from tunelab.train.logging import RunLogger
    from tunelab.train.loop import train_loop

    cfg = config_from_dict({"task": "classification", "data": {"train": "x.jsonl"},
                            "train": {"max_steps": 5, "eval_every": 1, "lr": 1.0, "optimizer": "sgd",
                                      "momentum": 0.0, "weight_decay": 0.0, "max_grad_norm": None,
                                      "warmup_steps": 0, "scheduler": "constant",
                                      "early_stopping": {"metric": "roc_auc_ovr", "patience": 2}}}).train
    scores = iter([0.6, None, None, 0.9, 0.5])  # steps 1..5

    def loss_fn(model, batch):
        return -model.w.sum(), 1  # w grows by lr each step: w == step

    def evaluate(model):
        return {"roc_auc_ovr": next(scores), "loss": 1.0}

    model = _Counter()
    result = train_loop(model, epoch_batches=lambda e: ({"attention_mask": torch.ones(1, 1)} for _ in range(5)),
                        micro_batches_per_epoch=5, loss_fn=loss_fn, evaluate=evaluate, cfg=cfg,
                        device=torch.device("cpu"), logger=RunLogger(None, 5, show_progress=False))
    assert result.best_step == 4 and result.evals_without_metric == 2 and result.steps == 5
    assert float(model.w.detach()) == pytest.approx(4.0)  # the best checkpoint's weights
    assert capsys.readouterr().out.count("is undefined") == 2
