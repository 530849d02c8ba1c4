"""Entity-level metrics for token tagging (NER): seqeval in strict IOB2 mode, token accuracy and a type confusion.

seqeval does the entity scores (the CoNLL convention everyone compares with). Strict mode is used: an entity
is a B-X followed by I-X words, and an I- that begins an entity is not one (the lenient conlleval default
would count `I-PER I-PER` as a PER). Callers convert every scheme to IOB2 first (tunelab.data.tagging.to_iob2,
which also repairs such I- tags into B-), so strict mode scores exactly the entities training saw.

The type confusion is the project's own: gold entities against predicted entities with the same word span,
so it shows which types are mistaken for which; a gold entity no prediction covers exactly counts in its
"none" column (missed), a predicted entity on no gold span in the "none" row (spurious).
"""
from __future__ import annotations

import warnings
from typing import Sequence

NONE = "none"


def _entities(seqs: Sequence[Sequence[str]]) -> list[list[tuple[int, int, str]]]:
    """Strict IOB2 entities per sentence as (first word, last word + 1, type)."""
    from seqeval.scheme import IOB2, Entities

    return [[(e.start, e.end, e.tag) for e in sent] for sent in Entities([list(s) for s in seqs], IOB2).entities]


def type_confusion(gold_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
    """{"labels": [types..., "none"], "matrix": rows gold type, columns predicted type} over entity spans."""
    gold, pred = _entities(gold_seqs), _entities(pred_seqs)
    labels = sorted({e[2] for sent in gold + pred for e in sent}) + [NONE]
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g_sent, p_sent in zip(gold, pred):
        predicted = {(s, e): t for s, e, t in p_sent}
        gold_spans = {(s, e) for s, e, _ in g_sent}
        for s, e, t in g_sent:
            matrix[index[t]][index[predicted.get((s, e), NONE)]] += 1
        for s, e, t in p_sent:
            if (s, e) not in gold_spans:
                matrix[index[NONE]][index[t]] += 1
    return {"labels": labels, "matrix": matrix}


def ner_metrics(gold_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
    """Entity precision/recall/F1 (micro, seqeval strict IOB2), per-type scores, token accuracy over words,
    sentence and gold-entity counts and the type confusion. Both arguments: one IOB2 tag list per sentence."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(gold_seqs) != len(pred_seqs):
        raise ValueError(f"{len(gold_seqs)} gold sentences but {len(pred_seqs)} predicted")
    for i, (g, p) in enumerate(zip(gold_seqs, pred_seqs)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
    gold, pred = [list(s) for s in gold_seqs], [list(s) for s in pred_seqs]
    with warnings.catch_warnings():  # numpy warns on the empty macro average when there are no entities
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    per_type = {kind: {"precision": float(r["precision"]), "recall": float(r["recall"]),
                       "f1": float(r["f1-score"]), "support": int(r["support"])}
                for kind, r in sorted(report.items()) if not kind.endswith(" avg")}
    words = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    return {"entity_precision": float(micro["precision"]), "entity_recall": float(micro["recall"]),
            "entity_f1": float(micro["f1-score"]), "token_accuracy": right / words if words else 0.0,
            "per_type": per_type, "n": len(gold), "entities": int(micro["support"]),
            "type_confusion": type_confusion(gold, pred)}
