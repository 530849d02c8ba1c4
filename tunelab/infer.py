"""Use a finished run: load its model, evaluate it on labelled data, predict labels for new text."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.config import load_config
from tunelab.errors import TunelabError


def load_run(run_dir: str | Path):
    """(config, model, tokenizer, labels) of a finished classification run, model in eval mode."""
    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if not (run_dir / "config.yaml").is_file() or not model_dir.is_dir():
        raise TunelabError(f"{run_dir} is not a finished tunelab run (needs config.yaml and model/); "
                           "pass the output_dir of `tunelab train`")
    cfg = load_config(run_dir / "config.yaml")
    labels = json.loads((model_dir / "labels.json").read_text()) if (model_dir / "labels.json").exists() else None
    if (model_dir / "scratch_config.json").exists():
        from tunelab.models.scratch import load_scratch

        model, tokenizer = load_scratch(model_dir)
    elif (model_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForSequenceClassification
        from transformers import AutoTokenizer

        model = AutoPeftModelForSequenceClassification.from_pretrained(str(model_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model.eval()
    return cfg, model, tokenizer, labels


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def evaluate_run(run_dir: str | Path, data: str | None = None, log=print) -> tuple[dict, Path]:
    """Metrics of a run's model on labelled `data` (default: the run's own test split).

    Written to RUN_DIR/eval-<data name>.json (the run's own eval.json is left as it is).
    """
    import numpy as np

    from tunelab.data.sources import load_records
    from tunelab.evaluate.metrics import classification_metrics
    from tunelab.io import atomic_write_json
    from tunelab.tasks.classification import make_examples, predict_proba, split_records

    cfg, model, tokenizer, labels = load_run(run_dir)
    if data is None:
        records, source = split_records(cfg, lambda _: None)["test"]
        name = "test"
    else:
        records, source, name = load_records(data), data, Path(data).stem
    ex = make_examples(tokenizer, records, text_field=cfg.data.text_field, label_field=cfg.data.label_field,
                       label2id={lab: i for i, lab in enumerate(labels)}, max_length=cfg.model.max_length,
                       source=source)
    probs = predict_proba(model, ex, 32, _pad_id(tokenizer), torch.device("cpu")).numpy()
    metrics = classification_metrics(ex.labels, probs, labels)
    metrics["loss"] = float(-np.log(np.clip(probs[np.arange(len(ex)), ex.labels], 1e-12, None)).mean())
    out = Path(run_dir) / f"eval-{name}.json"
    atomic_write_json(out, metrics)
    return metrics, out


def predict_records(run_dir: str | Path, records: list[dict], source: str) -> list[dict]:
    """Each record plus `prediction` (a label) and `scores` (label -> probability)."""
    from tunelab.tasks.classification import make_examples, predict_proba

    cfg, model, tokenizer, labels = load_run(run_dir)
    ex = make_examples(tokenizer, records, text_field=cfg.data.text_field, label_field=None, label2id=None,
                       max_length=cfg.model.max_length, source=source)
    probs = predict_proba(model, ex, 32, _pad_id(tokenizer), torch.device("cpu"))
    out = []
    for rec, p in zip(records, probs.tolist()):
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        clean["prediction"] = labels[max(range(len(p)), key=p.__getitem__)]
        clean["scores"] = {lab: round(v, 6) for lab, v in zip(labels, p)}
        out.append(clean)
    return out
