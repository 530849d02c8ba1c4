"""Classification metrics (scikit-learn underneath) as one plain, JSON-ready dict."""
from __future__ import annotations

import numpy as np


def classification_metrics(y_true: list[int], probs: np.ndarray, labels: list[str]) -> dict:
    """accuracy, precision/recall/F1 (macro and weighted), per-class, ROC-AUC one-vs-rest, confusion matrix.

    `probs` is (N, C) class probabilities; predictions are its argmax. Macro and weighted averages run over
    the classes present in y_true or the predictions (scikit-learn's default when `labels` is not forced):
    a class with no example and no prediction has no F1 to average, and counting it as 0 would drag macro
    F1 down (1/7 = 0.143 instead of 4/21 = 0.190 for 3 of 4 classes present). `per_class` lists every
    label, absent ones with support 0.
    """
    from sklearn.metrics import (accuracy_score, confusion_matrix, precision_recall_fscore_support,
                                 roc_auc_score)

    y_true_a = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    ids = list(range(len(labels)))
    present = sorted(set(y_true_a.tolist()) | set(y_pred.tolist()))
    out: dict = {"accuracy": float(accuracy_score(y_true_a, y_pred)), "n": int(len(y_true_a))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true_a, y_pred, labels=present, average=avg,
                                                     zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    p, r, f, s = precision_recall_fscore_support(y_true_a, y_pred, labels=ids, zero_division=0)
    out["per_class"] = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                              "support": int(s[i])} for i, lab in enumerate(labels)}
    out["roc_auc_ovr"] = _roc_auc(y_true_a, probs, ids, roc_auc_score)
    out["confusion_matrix"] = confusion_matrix(y_true_a, y_pred, labels=ids).tolist()
    out["labels"] = list(labels)
    return out


def _roc_auc(y_true: np.ndarray, probs: np.ndarray, ids: list[int], roc_auc_score) -> float | None:
    """Macro one-vs-rest ROC-AUC; None when some class is absent from y_true (it is undefined then)."""
    if len(set(y_true.tolist())) < len(ids) or len(ids) < 2:
        return None
    if len(ids) == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=ids))


def roc_curves(y_true: list[int], probs: np.ndarray, labels: list[str]) -> dict[str, tuple[list, list, float]]:
    """Per class (one-vs-rest): (false positive rates, true positive rates, AUC), for the report."""
    from sklearn.metrics import auc, roc_curve

    y = np.asarray(y_true)
    curves = {}
    for i, lab in enumerate(labels):
        positives = (y == i)
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, i])
        curves[lab] = (fpr.tolist(), tpr.tolist(), float(auc(fpr, tpr)))
    return curves
