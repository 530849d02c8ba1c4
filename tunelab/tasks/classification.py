"""Text classification: records -> token ids + label ids, the sequence-classification model, loss, metrics.

A record is any dict with a text field and (for training/evaluation) a label field, named by
`data.text_field` / `data.label_field`. The label set comes from the training split, sorted, and is saved
with the model as `id2label`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.data.batching import length_grouped_batches, pad_batch, training_batches
from tunelab.data.tokens import pad_id_of
from tunelab.errors import DataError
from tunelab.evaluate.metrics import classification_metrics, roc_curves


@dataclass
class Examples:
    """One tokenised split. `labels` is empty for unlabelled data (prediction)."""
    ids: list[list[int]]
    labels: list[int]
    records: list[dict]
    source: str
    truncated: int = 0
    real_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.real_tokens = sum(len(x) for x in self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def where(record: dict, source: str) -> tuple[str, int | None]:
    """File and line a record came from, for error messages."""
    return record.get("_file", source), record.get("_line")


def texts_of(records: list[dict], text_field: str, source: str) -> list[str]:
    texts = []
    for i, r in enumerate(records):
        value = r.get(text_field)
        if not isinstance(value, str) or not value.strip():
            path, line = where(r, source)
            what = "missing" if text_field not in r else f"not a non-empty string ({value!r:.40})"
            raise DataError(path, f"record {i + 1}: text field '{text_field}' is {what}; set data.text_field "
                                  f"to the field holding the text (fields here: {', '.join(k for k in r if not k.startswith('_'))})",
                            line)
        texts.append(value)
    return texts


def label_kind(value) -> str:
    """The JSON type of a label as a user would name it: boolean | integer | number | string | list | ...

    A string holding an integer ("3") is an "integer string": it is the same label as the integer 3.
    """
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "integer string" if value.strip().lstrip("-").isdigit() else "string"
    return {list: "list", dict: "object"}.get(type(value), type(value).__name__)


# Label kinds that name the same classes when mixed; any other mix is an error (1 and "one", or true and 1,
# would silently become separate classes).
COMPATIBLE_KINDS = ({"integer", "integer string"}, {"string", "integer string"}, {"boolean"})


def _label_problem(value, label_field: str) -> str | None:
    """Why `value` cannot be a class label, or None."""
    kind = label_kind(value)
    if value is None or (kind == "string" and not value.strip()):
        return f"label field '{label_field}' is missing or empty; set data.label_field to the field holding the label"
    if kind == "number":
        return (f"label {value!r} is not a whole number; classification needs class labels (tunelab has no "
                "regression task yet): use integer or string class names, e.g. bin the values")
    if kind not in ("boolean", "integer", "integer string", "string"):
        return (f"label field '{label_field}' holds {_a(kind)} ({value!r:.40}); a label is one string or integer; "
                "set data.label_field to the field holding the label")
    return None


def raw_labels(records: list[dict], label_field: str, source: str) -> list[str]:
    """Labels as strings: 3, 3.0 and "3" are one label; labels of mixed JSON types are an error."""
    out, first = [], {}  # first: kind -> (record number, record) where that kind first occurred
    for i, r in enumerate(records):
        value = r.get(label_field)
        problem = _label_problem(value, label_field)
        if problem:
            raise DataError(*_at(r, source, f"record {i + 1}: {problem}"))
        kind = label_kind(value)
        first.setdefault(kind, (i, r))
        if not any(set(first) <= group for group in COMPATIBLE_KINDS):
            raise DataError(*_at(r, source, _mixed_types(first, value, kind, i, label_field, source)))
        out.append(str(int(value)) if isinstance(value, float) else str(value))
    return out


def _at(record: dict, source: str, message: str) -> tuple[str, str, int | None]:
    path, line = where(record, source)
    return path, message, line


def _mixed_types(first: dict, value, kind: str, i: int, label_field: str, source: str) -> str:
    """The message for record i, whose label kind cannot share a label set with an earlier one."""
    other = next(k for k in first if not any({k, kind} <= group for group in COMPATIBLE_KINDS))
    j, rec = first[other]
    path, line = where(rec, source)
    place = f"{path}:{line}" if line is not None else path
    return (f"record {i + 1}: label {value!r} is {_a(kind)}, but record {j + 1} ({place}) has {_a(other)} label "
            f"({rec.get(label_field)!r}); labels of mixed JSON types would become separate classes; write every "
            f"label in '{label_field}' the same way (all strings, or all integers)")


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def label_set(labels: list[str]) -> list[str]:
    """Sorted label names; numerically when every label is an integer."""
    uniq = set(labels)
    if all(s.lstrip("-").isdigit() for s in uniq):
        return sorted(uniq, key=int)
    return sorted(uniq)


def label_ids(records: list[dict], labels: list[str], label2id: dict[str, int], source: str) -> list[int]:
    ids = []
    for r, lab in zip(records, labels):
        if lab not in label2id:
            path, line = where(r, source)
            raise DataError(path, f"label {lab!r} does not occur in the training data (known: "
                                  f"{', '.join(label2id)}); fix the label or add training examples for it", line)
        ids.append(label2id[lab])
    return ids


def encode(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids (with special tokens), truncated to max_length; returns (ids, how many were truncated).

    One tokenizer pass: overflowing chunks are requested only to learn which texts were cut.
    """
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_overflowing_tokens=True)
    ids: list[list[int]] = []
    seen = -1
    for row, sample in zip(enc["input_ids"], enc["overflow_to_sample_mapping"]):
        if sample != seen:  # the first chunk of each text is the truncated text itself
            ids.append(row)
            seen = sample
    chunks = enc["overflow_to_sample_mapping"]
    truncated = len({s for s, nxt in zip(chunks, chunks[1:]) if s == nxt})
    return ids, truncated


def make_examples(tokenizer, records: list[dict], *, text_field: str, label_field: str | None,
                  label2id: dict[str, int] | None, max_length: int, source: str) -> Examples:
    texts = texts_of(records, text_field, source)
    labels: list[int] = []
    if label_field is not None and label2id is not None:
        labels = label_ids(records, raw_labels(records, label_field, source), label2id, source)
    ids, truncated = encode(tokenizer, texts, max_length)
    return Examples(ids, labels, records, source, truncated)


def batches(ex: Examples, batch_size: int, pad_id: int, seed: int = 0, shuffle: bool = True,
            grouping: str = "auto"):
    """Yield (indices, tensors) of dynamically padded batches.

    shuffle: a training epoch's batches (`grouping` = train.group_by_length); without: sorted by length.
    """
    lengths = [len(x) for x in ex.ids]
    plan = (training_batches(lengths, batch_size, seed, grouping) if shuffle
            else length_grouped_batches(lengths, batch_size, seed, shuffle=False))
    for idx in plan:
        extra = {"labels": [ex.labels[i] for i in idx]} if ex.labels else None
        yield idx, pad_batch([ex.ids[i] for i in idx], pad_id, extra)


def loss_sum(model, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch and the number of examples (the loop normalises)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, C)
    loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum", label_smoothing=label_smoothing)
    return loss, batch["labels"].numel()


@torch.no_grad()
def predict_proba(model, ex: Examples, batch_size: int, pad_id: int, device: torch.device) -> torch.Tensor:
    """Class probabilities (N, C) in the original order of `ex`."""
    from tunelab.train.logging import progress

    model.eval()
    out: list[torch.Tensor | None] = [None] * len(ex)
    n_batches = math.ceil(len(ex) / batch_size)
    for idx, batch in progress(batches(ex, batch_size, pad_id, shuffle=False), n_batches, "classify", "batches"):
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float()
        for i, p in zip(idx, torch.softmax(logits, -1).cpu()):
            out[i] = p
    return torch.stack(out)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The classification job: what `tunelab train` runs for `task: classification`

METRICS = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc_ovr", "loss")


def split_records(cfg, log) -> dict[str, tuple[list[dict], str]]:
    """train/validation/test records: given files, or stratified seeded splits carved out of train."""
    from tunelab.data.sources import load_records
    from tunelab.data.splits import split_indices, subset_indices

    d, seed = cfg.data, cfg.train.seed
    records = load_records(d.train, log)
    keys = raw_labels(records, d.label_field, d.train)
    given = {"test": d.test, "validation": d.validation}
    parts = split_indices(len(records), d.val_fraction, d.test_fraction, seed, keys=keys,
                          hold_out=[name for name, ref in given.items() if not ref])
    splits: dict[str, tuple[list[dict], str]] = {}
    for name, ref in given.items():  # a given file, or the records carved out of train
        if ref:
            splits[name] = (load_records(ref, log), ref)
        elif name in parts:
            splits[name] = ([records[i] for i in parts[name]], f"{d.train} ({name} split)")
    train = parts["train"]
    if d.limit is not None and d.limit < len(train):
        train = [train[i] for i in subset_indices(len(train), d.limit, seed, [keys[i] for i in train])]
        log(f"data.limit: using {len(train)} training records")
    splits["train"] = ([records[i] for i in train], d.train)
    return splits


def data_view(cfg):
    """Task.data_view: a record's one text is data.text_field, its label data.label_field (as raw_labels reads
    it: 3, 3.0 and "3" are one label)."""
    from tunelab.data.prepare import DataView, rewrite_fields

    text_field, label_field = cfg.data.text_field, cfg.data.label_field

    def label(record: dict) -> str | None:
        value = record.get(label_field)
        return None if value is None else str(int(value)) if isinstance(value, float) else str(value)

    def rewrite(record: dict, fn) -> dict:  # the text is all input: augmentation edits what redaction does
        return rewrite_fields(record, (text_field,), fn)

    return DataView(texts=lambda r: [r[text_field]] if isinstance(r.get(text_field), str) else [], label=label,
                    rewrite=rewrite, augment=rewrite)


def check_config(cfg) -> list[str]:
    """Problems beyond the schema: data.redact_pii / data.augment where the texts cannot be rewritten."""
    from tunelab.data.prepare import rewrite_problems

    return rewrite_problems(cfg, data_view(cfg))


TINY_CLASS = 5  # fewer training examples than this: the class's metrics rest on a handful of guesses


def small_class_warnings(examples: dict[str, Examples], labels: list[str], minimum: int = TINY_CLASS
                         ) -> list[str]:
    """Warnings about classes with fewer than `minimum` training examples or none in validation / test.

    Such classes make per-class scores noise, leave ROC-AUC undefined (None) on a split without them, and
    drop out of that split's macro averages (which run over the classes present).
    """
    lines = []
    counts = np.bincount(examples["train"].labels, minlength=len(labels))
    tiny = [f"{labels[i]!r} ({n})" for i, n in enumerate(counts) if n < minimum]
    if tiny:
        lines.append(f"warning: classes with fewer than {minimum} training examples: {', '.join(tiny)}; their "
                     "scores will be noisy: add examples or merge them into other classes")
    for name in ("validation", "test"):
        ex = examples.get(name)
        if ex is not None and len(ex) > 0:
            absent = [repr(labels[i]) for i in sorted(set(range(len(labels))) - set(ex.labels))]
            if absent:
                lines.append(f"warning: no {name} examples of {', '.join(absent)}: ROC-AUC is undefined on "
                             f"{name} and macro averages there cover only the classes present")
    return lines


class ClassificationJob:
    default_metric = "f1_macro"
    metric_names = METRICS

    def __init__(self, cfg, device: torch.device, log):
        self.cfg, self.device, self.log = cfg, device, log
        self.eval_batch_size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size

    def prepare(self) -> None:
        from tunelab.data.prepare import prepare_splits
        from tunelab.methods import apply_method, options_of
        from tunelab.methods.common import count_parameters
        from tunelab.models.build import load_classifier_and_tokenizer
        from tunelab.models.load import check_max_length
        from tunelab.models.speedups import cls_only_last_layer

        cfg = self.cfg
        splits = prepare_splits(split_records(cfg, self.log), data_view(cfg), cfg, self.log)
        self.data_summary = splits.summary
        train_records, _ = splits["train"]
        self.labels = label_set(raw_labels(train_records, cfg.data.label_field, cfg.data.train))
        if len(self.labels) < 2:
            raise DataError(cfg.data.train, f"only one label ({self.labels[0]!r}) in the training data; "
                                            "classification needs at least two")
        label2id = {lab: i for i, lab in enumerate(self.labels)}
        model, self.tokenizer, head = load_classifier_and_tokenizer(cfg.model, self.labels)
        check_max_length(cfg.model.max_length, model, cfg.model.name)
        self.pad_id = pad_id_of(self.tokenizer)
        self.examples = {
            name: make_examples(self.tokenizer, recs, text_field=cfg.data.text_field,
                                label_field=cfg.data.label_field, label2id=label2id,
                                max_length=cfg.model.max_length, source=src)
            for name, (recs, src) in splits.items()}
        for name, ex in self.examples.items():
            note = f", {ex.truncated} truncated to {cfg.model.max_length} tokens" if ex.truncated else ""
            self.log(f"{name}: {len(ex)} examples, {ex.real_tokens} tokens{note}")
        for line in small_class_warnings(self.examples, self.labels):
            self.log(line)
        m = cfg.method
        self.model = apply_method(m.name, model, head, task_type="SEQ_CLS", **options_of(m)).to(self.device)
        if cls_only_last_layer(self.model):
            self.log("speed-up: the last encoder layer computes only the [CLS] position (all the head reads)")
        trainable, total = count_parameters(self.model)
        self.log(f"method {m.name}: {trainable:,} trainable of {total:,} parameters "
                 f"({100 * trainable / total:.2f}%)")

    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.examples["train"]) / self.cfg.train.batch_size)

    def epoch_batches(self, epoch: int):
        for _, batch in batches(self.examples["train"], self.cfg.train.batch_size, self.pad_id,
                                seed=self.cfg.train.seed + epoch, grouping=self.cfg.train.group_by_length):
            yield batch

    def loss(self, model, batch):
        return loss_sum(model, batch, self.cfg.train.label_smoothing)

    def _metrics(self, model, ex: Examples) -> tuple[dict, np.ndarray]:
        probs = predict_proba(model, ex, self.eval_batch_size, self.pad_id, self.device)
        y = torch.tensor(ex.labels)
        metrics = classification_metrics(ex.labels, probs.numpy(), self.labels)
        metrics["loss"] = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), y))
        return metrics, probs.numpy()

    def validate(self, model) -> dict | None:
        ex = self.examples.get("validation")
        if ex is None or len(ex) == 0:
            return None
        return self._metrics(model, ex)[0]

    def test(self) -> dict:
        ex = self.examples.get("test")
        if ex is None or len(ex) == 0:
            return {}
        metrics, self._test_probs = self._metrics(self.model, ex)
        return metrics

    def save(self, model_dir: Path, run_dir: Path) -> None:
        from tunelab.models.build import save_model

        save_model(self.model, self.tokenizer, model_dir, run_dir, self.cfg, self.labels)

    def finish(self, run_dir: Path) -> dict:
        """After testing: with `method.merge`, write RUN_DIR/merged and check it against the adapter."""
        from tunelab.models.build import is_peft, write_merged

        if not (self.cfg.method.merge and is_peft(self.model)):
            return {}
        ex = self.examples.get("test") or self.examples["train"]
        _, batch = next(batches(ex, 8, self.pad_id, shuffle=False))
        sample = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}
        diff = write_merged(self.model, self.tokenizer, run_dir / "merged", sample)
        # run_dir is still the staging folder here: name the place the run will have
        self.log(f"merged model written to {Path(self.cfg.output_dir) / 'merged'}; "
                 f"max |logit difference| vs adapter: {diff:.2e}")
        return {"merge_max_abs_logit_diff": diff}

    def report_sections(self, test_metrics: dict) -> list[tuple[str, str]]:
        from tunelab.evaluate.report import confusion_figure, roc_figure

        if not test_metrics:
            return [("Explained test examples", "<p>no test split: no test predictions to explain</p>")]
        ex = self.examples["test"]
        return [("Confusion matrix (test)", confusion_figure(test_metrics["confusion_matrix"], self.labels)),
                ("ROC curves, one-vs-rest (test)", roc_figure(roc_curves(ex.labels, self._test_probs,
                                                                          self.labels))),
                ("Explained test examples", explained_examples(self, ex, self._test_probs))]

    def summary(self, m: dict) -> str:
        if not m:
            return "no test split (data.test_fraction is 0 and no data.test file)"
        auc = f"{m['roc_auc_ovr']:.4f}" if m.get("roc_auc_ovr") is not None else "n/a"
        return (f"test: accuracy {m['accuracy']:.4f}  f1_macro {m['f1_macro']:.4f}  "
                f"f1_weighted {m['f1_weighted']:.4f}  roc_auc {auc}  (n={m['n']})")


# ---------------------------------------------------------------------------------------------
# A finished classification run: load it, evaluate it, predict with it


def load_model(run_dir: Path, cfg) -> tuple:
    """(model in eval mode, tokenizer, {"labels": [...]}) of a classification run's RUN_DIR/model."""
    import json

    from transformers import AutoModelForSequenceClassification

    from tunelab.runs import load_model_dir

    model_dir = Path(run_dir) / "model"
    labels = json.loads((model_dir / "labels.json").read_text()) if (model_dir / "labels.json").exists() else None
    model, tokenizer = load_model_dir(model_dir, AutoModelForSequenceClassification)
    return model, tokenizer, {"labels": labels}


def own_test_split(run) -> tuple[list[dict], str]:
    """(records, source) of a finished run's own test split as its training tested on it (redacted with
    data.redact_pii), or one clear error when it has none."""
    from tunelab.errors import TunelabError

    from tunelab.data.prepare import held_out_as_trained

    splits = split_records(run.cfg, lambda _: None)
    if "test" not in splits:
        raise TunelabError(f"{run.dir} has no test split (data.test_fraction is 0 and no data.test file); "
                           "pass --data FILE with labelled records to evaluate on")
    records, source = splits["test"]
    return held_out_as_trained(records, data_view(run.cfg), run.cfg), source


def probabilities(run, records: list[dict] | None, source: str, log) -> list[np.ndarray]:
    """Task.probabilities: the class probabilities (labels,) of each record's text, in the order of
    run.meta["labels"] (records None: the run's own test split)."""
    from tunelab.models.device import model_device

    if records is None:
        records, source = own_test_split(run)
    cfg = run.cfg
    ex = make_examples(run.tokenizer, records, text_field=cfg.data.text_field, label_field=None, label2id=None,
                       max_length=cfg.model.max_length, source=source)
    return list(predict_proba(run.model, ex, 32, pad_id_of(run.tokenizer), model_device(run.model)).numpy())


def evaluate(run, records: list[dict] | None, source: str, log) -> dict:
    """Metrics of a run's model on labelled `records` (None: the run's own test split), from the probabilities
    of tunelab.runs.run_probabilities (an ensemble's are its members' weighted mean)."""
    from tunelab.runs import run_probabilities

    cfg, labels = run.cfg, run.meta["labels"]
    if records is None:
        records, source = own_test_split(run)
    texts_of(records, cfg.data.text_field, source)  # a missing text is named before a missing label
    y = label_ids(records, raw_labels(records, cfg.data.label_field, source),
                  {lab: i for i, lab in enumerate(labels)}, source)
    probs = np.stack(run_probabilities(run, records, source, log))  # (N, C)
    metrics = classification_metrics(y, probs, labels)
    metrics["loss"] = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return metrics


def predict(run, records: list[dict], source: str, log) -> list[dict]:
    """Each record plus `prediction` (a label) and `scores` (label -> probability)."""
    from tunelab.runs import run_probabilities

    labels = run.meta["labels"]
    out = []
    for rec, p in zip(records, np.stack(run_probabilities(run, records, source, log)).tolist()):
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        clean["prediction"] = labels[max(range(len(p)), key=p.__getitem__)]
        clean["scores"] = {lab: round(v, 6) for lab, v in zip(labels, p)}
        out.append(clean)
    return out


def metrics_line(m: dict) -> str:
    """One line of evaluation metrics (`tunelab eval`)."""
    auc = m.get("roc_auc_ovr")
    return (f"accuracy {m['accuracy']:.4f}  f1_macro {m['f1_macro']:.4f}  f1_weighted {m['f1_weighted']:.4f}  "
            f"roc_auc {auc if auc is None else round(auc, 4)}  loss {m['loss']:.4f}  (n={m['n']})")


def check_records(records: list[dict], source: str, data_cfg) -> None:
    """`tunelab validate`: the first records have the text and the label field, and training can read their
    values (a non-empty text, a label that is not a list or a fraction, labels of one JSON type)."""
    from tunelab.check import require_fields

    require_fields(records, source, [data_cfg.text_field], "data.text_field")
    require_fields(records, source, [data_cfg.label_field], "data.label_field")
    texts_of(records, data_cfg.text_field, source)
    raw_labels(records, data_cfg.label_field, source)


REPORT_EXAMPLES = 1  # report.html explains the most confident right and the most confident wrong test prediction
REPORT_IG_STEPS = 16  # ~2-3 s per 128-token MiniLM text on 2 cores; the same top words as 50 steps on BBC texts


def explained_examples(job, ex: Examples, probs: np.ndarray) -> str:
    """report.html's "Explained test examples": the most confident right and wrong test predictions, each
    explained (integrated gradients toward the predicted label) and shaded as `tunelab explain` shades words."""
    import copy
    import html
    import time

    from tunelab.errors import TunelabError
    from tunelab.explain.attribute import explain_text
    from tunelab.explain.render import examples_html
    from tunelab.runs import Run
    from tunelab.tasks import TASKS

    predicted, confidence, truth = probs.argmax(1), probs.max(1), np.asarray(ex.labels)
    order = np.argsort(-confidence, kind="stable")
    picked = [(kind, [i for i in order if (predicted[i] == truth[i]) == right][:REPORT_EXAMPLES])
              for kind, right in (("right", True), ("wrong", False))]
    model = job.model if job.device.type == "cpu" else copy.deepcopy(job.model).cpu()  # captum runs on CPU here
    run = Run(Path(job.cfg.output_dir), job.cfg, TASKS.get("classification"), model, job.tokenizer,
              {"labels": job.labels})
    started, shown = time.perf_counter(), []
    try:
        for kind, indices in picked:
            for i in indices:
                expl = explain_text(run, ex.records[i][job.cfg.data.text_field], "ig", steps=REPORT_IG_STEPS)
                shown.append((f"{kind}: true {job.labels[truth[i]]}, predicted {job.labels[predicted[i]]} "
                              f"({confidence[i]:.3f})", expl))
    except TunelabError as e:  # a model explain cannot take (e.g. a slow tokenizer) must not fail the run
        return f"<p>not explained: {html.escape(str(e))}</p>"
    except Exception as e:  # nor may a failure inside captum or torch, after the whole training
        job.log(f"report: the test examples could not be explained ({type(e).__name__}: {e})")
        return f"<p>not explained: {html.escape(type(e).__name__)}: {html.escape(str(e))}</p>"
    seconds = time.perf_counter() - started
    job.log(f"report: {len(shown)} test examples explained in {seconds:.1f} s")
    missing = [f"no {kind} test predictions" for kind, indices in picked if not indices]
    return examples_html(shown, missing, seconds)


def _register() -> None:
    from tunelab.models.scratch import CLASSIFIER_KINDS
    from tunelab.tasks import TASKS
    from tunelab.tasks.base import Task

    TASKS.register("classification", Task(
        name="classification", summary="a label per text (sequence classification)",
        job=ClassificationJob, metrics=METRICS, methods=("full", "head", "freeze", "lora", "distill"),
        load=load_model, evaluate=evaluate, predict=predict, metrics_line=metrics_line,
        probabilities=probabilities,
        settings=("data.text_field", "data.label_field"),
        refused_settings={"generate.": "generate.* applies to causal_lm runs; {run} is a classification run"},
        text_records=lambda texts, run: [{run.cfg.data.text_field: t} for t in texts],
        check_records=check_records, check_config=check_config, splits=split_records, data_view=data_view,
        scratch_kinds=CLASSIFIER_KINDS, api=("classify",)),
        options=("data.label_field",))


_register()
