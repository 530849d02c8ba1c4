"""Extractive question answering: the answer is a span of the context, found by a start and an end logit per
token (a span head on any encoder: Hugging Face's AutoModelForQuestionAnswering, or the scratch Transformer's
TransformerQA).

Data (tunelab.data.squad): SQuAD-style JSON (v1.1, v2.0 with unanswerable questions) or flat records with
question / context / answers {text, answer_start}; offsets are checked. Splits carved out of data.train
split the distinct contexts, so all questions about one context are in one split.

Windows. A long context does not fit one row, so each question becomes rows ("windows")
    [CLS] question [SEP] context tokens w .. w+n [SEP]        (token_type_ids 0 ... 0 1 ... 1 for BERT)
of at most model.max_length tokens, consecutive windows sharing data.doc_stride context tokens (null: a
quarter of max_length). The rows are built here from the question and the context tokenised apart, each with
the tokenizer's offset mapping (character offsets into the ORIGINAL context, whatever the tokenizer's
normalisation did: MiniLM lower-cases and strips accents), so any tokenizer works, including a scratch one
with no pair template (its BOS / EOS stand in for [CLS] / [SEP]). Training labels are the answer's first and
last token in the window, or position 0 ([CLS]) when the window does not hold the whole answer or the
question has none (the SQuAD v2 recipe).

Answering. Per window the best span is searched among the qa.n_best highest start and end logits of the
context tokens (start <= end, at most qa.max_answer_length tokens), scored start + end logit; the best over
the windows wins. The no-answer score is the [CLS] start + end logit, the lowest over the windows. "No
answer" when no_answer_score - best_span_score > threshold: the threshold that scores best on validation,
chosen after training with the best weights and saved with the run (RUN_DIR/qa.json), unless
qa.no_answer_threshold is set. Trained on data without unanswerable questions, the run never answers "no
answer". Metrics are per question: exact match and F1 (tunelab.evaluate.qa_metrics), split into
has-answer / no-answer.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunelab.errors import DataError, TunelabError

METRICS = ("f1", "exact_match", "has_answer_f1", "has_answer_exact_match", "no_answer_f1", "loss")
QA_FILE = "qa.json"  # RUN_DIR/qa.json: the no-answer threshold and how it was chosen
REPORT_SAMPLES = 12
NEVER = None  # the threshold of a run that never answers "no answer"


# ---------------------------------------------------------------------------------------------
# Windows: question + context rows with the context tokens' character offsets


@dataclass
class Window:
    """One row: [CLS] question [SEP] context[first token .. first + n) [SEP], and its training labels."""

    question: int
    """Index of the question (in its split) this window belongs to."""
    ids: list[int]
    types: list[int]
    context_start: int
    """Row position of the first context token."""
    offsets: list[tuple[int, int]]
    """(start, end) character offsets in the original context of each context token of the row."""
    start: int = 0
    end: int = 0
    """Training labels: row positions of the answer's first / last token; 0 / 0 = no answer here."""


@dataclass
class QASplit:
    """The windows of one split's questions."""

    records: list[dict]
    source: str
    windows: list[Window] = field(default_factory=list)
    by_question: list[list[int]] = field(default_factory=list)
    questions_cut: int = 0
    uncovered: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, max_length: int) -> str:
        unanswerable = sum(1 for r in self.records if r["answers"] is not None and not r["answers"])
        tokens = sum(len(w.ids) for w in self.windows)
        notes = [f"{self.questions_cut} questions cut to {max_length // 2} tokens"] if self.questions_cut else []
        if self.uncovered:
            notes.append(f"{self.uncovered} answers that no token covers (trained as no answer)")
        return (f"{len(self)} questions ({unanswerable} unanswerable), {len(self.windows)} windows, {tokens} tokens"
                + (f"; {'; '.join(notes)}" if notes else ""))


def special_ids(tokenizer) -> tuple[int, int]:
    """(the id that opens a row, the id that ends a part): [CLS] / [SEP], or BOS / EOS for tokenizers without
    them (a byte-level BPE from `tunelab tokenizer train`)."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls is None or sep is None:
        raise TunelabError("extractive_qa: the tokenizer has neither [CLS]/[SEP] nor BOS/EOS tokens to frame the "
                           "question and the context; use a tokenizer made by `tunelab tokenizer train` or a "
                           "BERT-style model's")
    return cls, sep


def tokenize_texts(tokenizer, texts: list[str], offsets: bool) -> tuple[list[list[int]], list]:
    """Token ids without special tokens (and character offsets) of distinct texts, tokenised once each."""
    from transformers.utils import logging as hf_logging

    if not getattr(tokenizer, "is_fast", False):
        raise TunelabError("extractive_qa needs a fast tokenizer (a tokenizer.json) for its offset mapping; this "
                           "model's tokenizer is a slow one")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # long contexts are meant to exceed model_max_length: they are windowed
    try:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)
    finally:
        hf_logging.set_verbosity(verbosity)
    return enc["input_ids"], enc["offset_mapping"] if offsets else []


def answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """(first, last) context token covering characters [start, end), or None when no token does."""
    first = next((i for i, (_, e) in enumerate(offsets) if e > start), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end), None)
    if first is None or last is None or first > last:
        return None
    return first, last


def build_windows(records: list[dict], source: str, tokenizer, max_length: int, stride: int | None,
                  use_types: bool) -> QASplit:
    """The windows of every question of `records` (QARecords); see the module docstring."""
    cls, sep = special_ids(tokenizer)
    stride = max_length // 4 if stride is None else stride
    if not records:  # an empty carved split (a file with one or two articles): no windows, no tokenizer call
        return QASplit(records, source)
    contexts = list(dict.fromkeys(r["context"] for r in records))
    ctx_ids, ctx_offsets = tokenize_texts(tokenizer, contexts, offsets=True)
    ctx_index = {c: i for i, c in enumerate(contexts)}
    q_ids, _ = tokenize_texts(tokenizer, [r["question"] for r in records], offsets=False)
    split = QASplit(records, source)
    for qi, rec in enumerate(records):
        question = q_ids[qi][: max_length // 2]
        split.questions_cut += len(question) < len(q_ids[qi])
        c = ctx_index[rec["context"]]
        span = None
        if rec["answers"]:  # the first gold answer is the training label
            start = rec["starts"][0]
            span = answer_tokens(ctx_offsets[c], start, start + len(rec["answers"][0]))
            split.uncovered += span is None
        rows = question_windows(qi, question, ctx_ids[c], ctx_offsets[c], span, max_length, stride, cls, sep,
                                use_types)
        split.by_question.append(list(range(len(split.windows), len(split.windows) + len(rows))))
        split.windows += rows
    return split


def question_windows(qi: int, question: list[int], ids: list[int], offsets: list, span: tuple[int, int] | None,
                     max_length: int, stride: int, cls: int, sep: int, use_types: bool) -> list[Window]:
    """The windows of one question over its context's tokens `ids` / `offsets` (answer tokens `span`)."""
    budget = max_length - len(question) - 3  # context tokens per window: 3 = [CLS] [SEP] ... [SEP]
    if budget < 1:
        raise TunelabError(f"model.max_length: {max_length} leaves no room for the context after a "
                           f"{len(question)}-token question; raise model.max_length")
    # consecutive windows share `stride` context tokens, but advance by at least a quarter of a window: a long
    # question leaves a small budget, and an overlap close to it would make a window per context token
    step = max(1, budget - stride, budget // 4)
    head = [cls, *question, sep]
    out, first = [], 0
    while True:
        n = min(budget, len(ids) - first)
        row = Window(qi, head + ids[first:first + n] + [sep],
                     [0] * len(head) + [1] * (n + 1) if use_types else [], len(head),
                     [tuple(o) for o in offsets[first:first + n]])
        if span is not None and first <= span[0] and span[1] < first + n:
            row.start, row.end = len(head) + span[0] - first, len(head) + span[1] - first
        out.append(row)
        if first + n >= len(ids):
            return out
        first += step


def window_batch(windows: list[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (B, T), token_type_ids (B, T) when the model reads them, and the labels
    start_positions / end_positions (B,)."""
    from tunelab.data.batching import pad_batch

    extra: dict[str, list] = {"start_positions": [w.start for w in windows],
                              "end_positions": [w.end for w in windows]}
    if windows[0].types:
        extra["token_type_ids"] = [w.types for w in windows]
    return pad_batch([w.ids for w in windows], pad_id, extra)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(CE(start) + CE(end)) / 2 summed over the windows of the batch, and the number of windows."""
    from tunelab.models.scratch import span_loss

    out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    loss = span_loss(out.start_logits, out.end_logits, batch["attention_mask"].bool(), batch["start_positions"],
                     batch["end_positions"])
    return loss, batch["input_ids"].size(0)


@torch.no_grad()
def window_logits(model, split: QASplit, batch_size: int, pad_id: int, device) -> tuple[list, float]:
    """(start, end) logits (numpy, one pair per window, cut to the window's length) and the mean loss."""
    from tunelab.data.batching import length_grouped_batches
    from tunelab.models.scratch import span_loss
    from tunelab.train.logging import progress

    model.eval()
    logits: list = [None] * len(split.windows)
    total = 0.0
    plan = length_grouped_batches([len(w.ids) for w in split.windows], batch_size, 0, shuffle=False)
    for idx in progress(plan, len(plan), "answer", "batches"):
        batch = {k: v.to(device) for k, v in window_batch([split.windows[i] for i in idx], pad_id).items()}
        out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
        total += float(span_loss(out.start_logits, out.end_logits, batch["attention_mask"].bool(),
                                 batch["start_positions"], batch["end_positions"]))
        starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            n = len(split.windows[i].ids)
            logits[i] = (starts[row, :n], ends[row, :n])
    return logits, total / max(1, len(split.windows))


# ---------------------------------------------------------------------------------------------
# From logits to answers


def best_span(start: np.ndarray, end: np.ndarray, context_start: int, n_context: int, n_best: int,
              max_answer_length: int) -> tuple[float, int, int] | None:
    """(score, first, last) context-token indices of the best span of one window, or None.

    Candidates: the n_best highest start and end logits among the context tokens; a span needs
    first <= last and last - first + 1 <= max_answer_length; its score is start[first] + end[last].
    Of equal scores the first in rank order wins (higher start logit, then higher end logit; stable sorts).
    """
    s = start[context_start:context_start + n_context]
    e = end[context_start:context_start + n_context]
    top_s = np.argsort(-s, kind="stable")[:n_best]  # (K,)
    top_e = np.argsort(-e, kind="stable")[:n_best]
    scores = s[top_s][:, None] + e[top_e][None, :]  # (K, K)
    length = top_e[None, :] - top_s[:, None] + 1
    scores = np.where((length >= 1) & (length <= max_answer_length), scores, -np.inf)
    if not np.isfinite(scores).any():
        return None
    i, j = divmod(int(np.argmax(scores)), scores.shape[1])
    return float(scores[i, j]), int(top_s[i]), int(top_e[j])


@dataclass
class Answer:
    """A question's best span over its windows and its no-answer score."""

    text: str
    start: int | None
    end: int | None
    span_score: float
    null_score: float

    @property
    def margin(self) -> float:
        """no-answer score - best span score: "no answer" when this is above the threshold."""
        return self.null_score - self.span_score


def answer_of(context: str, windows: list[Window], logits: list, n_best: int, max_answer_length: int) -> Answer:
    """The best span over a question's windows (character offsets into `context`) and the no-answer score."""
    best, null = None, math.inf
    for w, (start, end) in zip(windows, logits):
        null = min(null, float(start[0] + end[0]))
        start, end = _skip_blank_tokens(context, w, start, end)
        found = best_span(start, end, w.context_start, len(w.offsets), n_best, max_answer_length)
        if found and (best is None or found[0] > best[0]):
            best = (found[0], w.offsets[found[1]][0], w.offsets[found[2]][1])
    if best is None:
        return Answer("", None, None, -math.inf, null)
    score, a, b = best
    text = context[a:b]
    a += len(text) - len(text.lstrip())  # byte-level BPE tokens carry their leading space
    b -= len(text) - len(text.rstrip())
    return Answer(context[a:b], a, b, score, null)


def _skip_blank_tokens(context: str, w: Window, start: np.ndarray, end: np.ndarray) -> tuple:
    """Start and end logits with the window's white-space-only tokens (a byte-level BPE's newline or run of
    spaces) ruled out as a span's first or last token, so no span is white space alone (it would strip to an
    empty answer that bypasses the no-answer threshold)."""
    blank = [i for i, (a, b) in enumerate(w.offsets) if not context[a:b].strip()]
    if not blank:
        return start, end
    start, end = start.copy(), end.copy()
    rows = np.asarray(blank) + w.context_start
    start[rows], end[rows] = -np.inf, -np.inf
    return start, end


def decide(answer: Answer, threshold: float | None) -> dict:
    """The prediction: the span, or "no answer" when answer.margin > threshold (threshold None: never)."""
    if threshold is not None and answer.margin > threshold or answer.start is None:
        return {"answer": "", "score": round(answer.null_score, 4), "start": None, "end": None}
    return {"answer": answer.text, "score": round(answer.span_score, 4), "start": answer.start, "end": answer.end}


def split_answers(model, split: QASplit, cfg, batch_size: int, pad_id: int, device) -> tuple[list[Answer], float]:
    """Every question's Answer and the mean window loss."""
    logits, loss = window_logits(model, split, batch_size, pad_id, device)
    answers = [answer_of(rec["context"], [split.windows[i] for i in idx], [logits[i] for i in idx],
                         cfg.qa.n_best, cfg.qa.max_answer_length)
               for rec, idx in zip(split.records, split.by_question)]
    return answers, loss


def choose_threshold(answers: list[Answer], records: list[dict]) -> tuple[float, float]:
    """The no-answer threshold that maximises F1 on these questions, and that F1."""
    from tunelab.evaluate.qa_metrics import choose_no_answer_threshold, f1_score

    margins = [a.margin if a.start is not None else math.inf for a in answers]
    span_f1 = [f1_score(a.text, r["answers"]) for a, r in zip(answers, records)]
    finite = [m for m in margins if math.isfinite(m)] or [0.0]
    margins = [m if math.isfinite(m) else max(finite) + 1.0 for m in margins]
    return choose_no_answer_threshold(margins, span_f1, [bool(r["answers"]) for r in records])


def scores(answers: list[Answer], records: list[dict], threshold: float | None, loss: float) -> tuple[dict, list]:
    """(qa_metrics + loss + the threshold used, the predictions)."""
    from tunelab.evaluate.qa_metrics import qa_metrics

    predictions = [decide(a, threshold) for a in answers]
    metrics = qa_metrics([p["answer"] for p in predictions], [r["answers"] for r in records])
    metrics["loss"] = loss
    metrics["no_answer_threshold"] = threshold
    return metrics, predictions


# ---------------------------------------------------------------------------------------------
# Data for a run


def read_questions(ref, d, log) -> list[dict]:
    """QARecords of one data reference with the run's data.* settings."""
    from tunelab.data.squad import load_qa_records

    return load_qa_records(str(ref), question_field=d.question_field, context_field=d.context_field,
                           answers_field=d.answers_field, fix_offsets=d.fix_offsets, log=log)


def split_questions(cfg, log) -> dict[str, tuple[list[dict], str]]:
    """train / validation / test questions: given files, or seeded splits of data.train's distinct contexts."""
    from tunelab.data.splits import held_out, subset_indices
    from tunelab.data.squad import split_by_context

    d, seed = cfg.data, cfg.train.seed
    records = read_questions(d.train, d, log)
    _require_answers(records, "training", d.answers_field)
    parts = split_by_context(records, d.val_fraction, d.test_fraction, seed, held_out(d))
    splits = {name: ([records[i] for i in idx], d.train if name == "train" else f"{d.train} ({name} split)")
              for name, idx in parts.items()}
    for name, ref in (("validation", d.validation), ("test", d.test)):
        if ref:
            splits[name] = (_require_answers(read_questions(ref, d, log), name, d.answers_field), ref)
    train = splits["train"][0]
    if d.limit is not None and d.limit < len(train):
        splits["train"] = ([train[i] for i in subset_indices(len(train), d.limit, seed)], d.train)
        log(f"data.limit: using {d.limit} training questions")
    return splits


def data_view(cfg):
    """Task.data_view: a question's texts are the question and its context; duplicates and leaks compare
    questions about one context (SQuAD-style data asks many questions of each context, which is no leak), a
    rewrite (redaction) maps the answers' offsets through it, and augmentation leaves the answers as they are."""
    from tunelab.data.prepare import DataView

    return DataView(texts=lambda r: [r["question"], r["context"]], rewrite=rewrite_question,
                    augment=augment_question, duplicate_key=lambda r: (r["context"], r["question"]))


def rewrite_question(record: dict, fn) -> dict:
    """A copy of a QARecord with fn (PII redaction) applied to its question and to its context piece by piece
    between answer boundaries (tunelab.data.prepare.rewrite_segments), so every answer is still the context's
    text at its start. An answer that cuts into PII found in the whole context (the domain of an e-mail
    address, the last digits of a phone number) is widened over it first, so the finding is redacted whole and
    the answer holds its placeholder; an answer that was PII becomes its placeholder, and an answer is never
    rewritten to nothing."""
    from tunelab.data.pii import find_pii
    from tunelab.data.prepare import widened

    spans = widened(_answer_spans(record), [(f.start, f.end) for f in find_pii(record["context"])])
    return _rewritten(record, spans, fn, answers_too=True)


def augment_question(record: dict, fn) -> dict:
    """A copy of a QARecord with fn (an augmentation edit) applied to its question and to the context around
    its answers: the answers are the labels, so each keeps its exact text, and its start follows the edits
    before it."""
    return _rewritten(record, _answer_spans(record), fn, answers_too=False)


def _answer_spans(record: dict) -> list[tuple[int, int]]:
    """(start, end) of each gold answer in the context."""
    return [(start, start + len(text)) for text, start in zip(record["answers"] or [], record["starts"] or [])]


def _rewritten(record: dict, spans: list[tuple[int, int]], fn, answers_too: bool) -> dict:
    """The question through fn, the context through fn piece by piece between the ends of `spans`
    (the answers' pieces too, or left as they are), and the answers read again at their moved offsets."""
    from tunelab.data.prepare import rewrite_segments

    cuts = sorted({c for span in spans for c in span})
    inside = frozenset(c for c in cuts if any(a <= c < b for a, b in spans))
    context, moved = rewrite_segments(record["context"], cuts, fn, keep=inside,
                                      fixed=frozenset() if answers_too else inside)
    out = {**record, "question": fn(record["question"]), "context": context}
    if record["answers"] is not None:
        out["starts"] = [moved[a] for a, _ in spans]
        out["answers"] = [context[moved[a]:moved[b]] for a, b in spans]
    return out


def _require_answers(records: list[dict], split: str, answers_field: str) -> list[dict]:
    """`records`, or a DataError for the first question without gold answers (training and scoring need them)."""
    unlabelled = next((r for r in records if r["answers"] is None), None)
    if unlabelled is not None:
        raise DataError(unlabelled["_file"], f"{unlabelled['_where']}: no '{answers_field}' field; {split} "
                                             "needs gold answers (empty lists for a question with none): set "
                                             "data.answers_field", unlabelled["_line"])
    return records


def uses_token_types(model) -> bool:
    """True for a Hugging Face model with segment embeddings (BERT: type_vocab_size 2)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    return not isinstance(config, dict) and (getattr(config, "type_vocab_size", 0) or 0) >= 2


# ---------------------------------------------------------------------------------------------
# The job: what `tunelab train` runs for `task: extractive_qa`


class ExtractiveQAJob:
    default_metric = "f1"
    metric_names = METRICS

    def __init__(self, cfg, device: torch.device, log):
        self.cfg, self.device, self.log = cfg, device, log
        self.eval_batch_size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        self.threshold: float | None = NEVER
        self.threshold_note = ""
        self._settled = False
        self.samples: list[dict] = []

    def prepare(self) -> None:
        from tunelab.data.prepare import prepare_splits
        from tunelab.data.tokens import pad_id_of
        from tunelab.methods import apply_method, options_of
        from tunelab.methods.common import count_parameters
        from tunelab.models.build import load_qa_model_and_tokenizer
        from tunelab.models.load import check_max_length
        from tunelab.models.scratch import span_head_names

        cfg = self.cfg
        splits = prepare_splits(split_questions(cfg, self.log), data_view(cfg), cfg, self.log)
        self.data_summary = splits.summary
        model, self.tokenizer, head = load_qa_model_and_tokenizer(cfg.model)
        check_max_length(cfg.model.max_length, model, cfg.model.name)
        self.pad_id = pad_id_of(self.tokenizer)
        self.use_types = uses_token_types(model)
        self.data = {name: build_windows(recs, src, self.tokenizer, cfg.model.max_length, cfg.data.doc_stride,
                                         self.use_types) for name, (recs, src) in splits.items()}
        for name, split in self.data.items():
            self.log(f"{name}: {split.describe(cfg.model.max_length)}")
        self.trains_no_answer = any(not r["answers"] for r in self.data["train"].records)
        if not self.trains_no_answer:
            self.log("the training data has no unanswerable questions: this run always answers with a span "
                     "(never \"no answer\")")
        m = cfg.method
        self.model = apply_method(m.name, model, head or span_head_names(model), task_type="QUESTION_ANS",
                                  **options_of(m)).to(self.device)
        trainable, total = count_parameters(self.model)
        self.log(f"method {m.name}: {trainable:,} trainable of {total:,} parameters "
                 f"({100 * trainable / total:.2f}%)")

    # -- training ---------------------------------------------------------------------------

    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.data["train"].windows) / self.cfg.train.batch_size)

    def epoch_batches(self, epoch: int):
        """The same window batches in the same order for an epoch every time (seeded by train.seed + epoch)."""
        from tunelab.data.batching import training_batches

        windows = self.data["train"].windows
        for idx in training_batches([len(w.ids) for w in windows], self.cfg.train.batch_size,
                                    self.cfg.train.seed + epoch, self.cfg.train.group_by_length):
            yield window_batch([windows[i] for i in idx], self.pad_id)

    def loss(self, model, batch):
        return loss_sum(model, batch)

    def train_tensors(self) -> dict[str, torch.Tensor]:
        """Every training window as one padded batch (input_ids, attention_mask, [token_type_ids,]
        start_positions, end_positions): the same rows another trainer can be fed (bench)."""
        return window_batch(self.data["train"].windows, self.pad_id)

    # -- evaluation -------------------------------------------------------------------------

    def _answers(self, model, name: str) -> tuple[list[Answer], float] | None:
        split = self.data.get(name)
        if split is None or len(split) == 0:
            return None
        return split_answers(model, split, self.cfg, self.eval_batch_size, self.pad_id, self.device)

    def _threshold_for(self, answers: list[Answer], records: list[dict]) -> float | None:
        """qa.no_answer_threshold when set; never for a run without unanswerable training questions; else
        the best threshold on these questions."""
        if self.cfg.qa.no_answer_threshold is not None:
            return self.cfg.qa.no_answer_threshold
        if not self.trains_no_answer:
            return NEVER
        return choose_threshold(answers, records)[0]

    def validate(self, model) -> dict | None:
        """Validation metrics at the threshold that is best on validation (what the run will keep)."""
        found = self._answers(model, "validation")
        if found is None:
            return None
        answers, loss = found
        records = self.data["validation"].records
        return scores(answers, records, self._threshold_for(answers, records), loss)[0]

    def settle_threshold(self) -> None:
        """Choose the no-answer threshold once, with the trained (best) weights, and say how."""
        if self._settled:
            return
        self._settled = True
        if self.cfg.qa.no_answer_threshold is not None:
            self.threshold, self.threshold_note = self.cfg.qa.no_answer_threshold, "qa.no_answer_threshold"
        elif not self.trains_no_answer:
            self.threshold, self.threshold_note = NEVER, "never: no unanswerable training questions"
        elif (found := self._answers(self.model, "validation")) is None:
            self.threshold, self.threshold_note = 0.0, "0.0: no validation split to choose it on"
        else:
            self.threshold, f1 = choose_threshold(found[0], self.data["validation"].records)
            self.threshold_note = f"chosen on validation (F1 {f1:.4f} there)"
        shown = "none" if self.threshold is None else f"{self.threshold:.4f}"
        self.log(f"no-answer threshold: {shown} ({self.threshold_note})")

    def test(self) -> dict:
        self.settle_threshold()
        found = self._answers(self.model, "test")
        if found is None:
            return {}
        split = self.data["test"]
        answers, loss = found
        metrics, predictions = scores(answers, split.records, self.threshold, loss)
        self.samples = [{"question": r["question"], "gold": r["answers"], "predicted": p["answer"]}
                        for r, p in zip(split.records, predictions)][:REPORT_SAMPLES]
        return metrics

    def save(self, model_dir: Path, run_dir: Path) -> None:
        from tunelab.io import atomic_write_json
        from tunelab.models.build import save_model

        self.settle_threshold()
        save_model(self.model, self.tokenizer, model_dir, run_dir, self.cfg, None)
        atomic_write_json(run_dir / QA_FILE, {"no_answer_threshold": self.threshold, "how": self.threshold_note,
                                              "token_type_ids": self.use_types})

    def finish(self, run_dir: Path) -> dict:
        return {}

    def report_sections(self, test_metrics: dict) -> list[tuple[str, str]]:
        if not test_metrics:
            return []
        return [("Has answer / no answer (test)", split_table(test_metrics)),
                ("Sample questions (test)", samples_table(self.samples))]

    def summary(self, m: dict) -> str:
        if not m:
            return "no test split (data.test_fraction is 0 and no data.test file)"
        return "test: " + metrics_line(m)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def metrics_line(m: dict) -> str:
    """One line: EM / F1 over all questions and split into has-answer / no-answer."""
    line = f"exact_match {_num(m['exact_match'])}  f1 {_num(m['f1'])}"
    line += f"  has_answer em/f1 {_num(m['has_answer_exact_match'])}/{_num(m['has_answer_f1'])} (n={m['has_answer_n']})"
    if m.get("no_answer_n"):
        line += f"  no_answer em/f1 {_num(m['no_answer_exact_match'])}/{_num(m['no_answer_f1'])} (n={m['no_answer_n']})"
    if "loss" in m:
        line += f"  loss {m['loss']:.4f}"
    return line + f"  (n={m['n']})"


def split_table(m: dict) -> str:
    """HTML table: EM and F1 for all questions, those with an answer and those without."""
    rows = "".join(f"<tr><td>{name}</td><td>{m[f'{p}n']}</td><td>{_num(m[f'{p}exact_match'])}</td>"
                   f"<td>{_num(m[f'{p}f1'])}</td></tr>"
                   for name, p in (("all", ""), ("has answer", "has_answer_"), ("no answer", "no_answer_")))
    t = m.get("no_answer_threshold")
    note = f"<p>no-answer threshold: {'none (never answers no answer)' if t is None else f'{t:.4f}'}</p>"
    return f"{note}<table><tr><th></th><th>questions</th><th>exact match</th><th>F1</th></tr>{rows}</table>"


def samples_table(samples: list[dict], clip: int = 300) -> str:
    """HTML table of questions, gold answers and predictions (escaped)."""
    def cell(text: str) -> str:
        text = text if len(text) <= clip else text[:clip] + " ..."
        return f"<td style='white-space:pre-wrap;vertical-align:top'>{html.escape(text)}</td>"

    rows = "".join(f"<tr>{cell(s['question'])}{cell(' | '.join(s['gold']) or '(no answer)')}"
                   f"{cell(s['predicted'] or '(no answer)')}</tr>" for s in samples)
    return f"<table><tr><th>question</th><th>gold</th><th>predicted</th></tr>{rows}</table>"


# ---------------------------------------------------------------------------------------------
# A finished extractive QA run: load, evaluate, predict, ask


def load_model(run_dir: Path, cfg) -> tuple:
    """(span model in eval mode, tokenizer, RUN_DIR/qa.json) of an extractive QA run."""
    import json

    from transformers import AutoModelForQuestionAnswering

    from tunelab.runs import load_model_dir

    model_dir = Path(run_dir) / "model"
    model, tokenizer = load_model_dir(model_dir, AutoModelForQuestionAnswering)
    path = Path(run_dir) / QA_FILE
    if not path.is_file():
        raise TunelabError(f"{run_dir}: {QA_FILE} is missing; `tunelab train` writes it for an extractive_qa run "
                           "(train the run again)")
    return model, tokenizer, json.loads(path.read_text())


def run_threshold(run) -> float | None:
    """The threshold a finished run uses: qa.no_answer_threshold when given, else the one saved with it."""
    given = run.cfg.qa.no_answer_threshold
    return given if given is not None else run.meta["no_answer_threshold"]


def _run_answers(run, records: list[dict], source: str) -> tuple[list[Answer], float]:
    from tunelab.data.tokens import pad_id_of
    from tunelab.models.device import model_device

    split = build_windows(records, source, run.tokenizer, run.cfg.model.max_length, run.cfg.data.doc_stride,
                          run.meta.get("token_type_ids", uses_token_types(run.model)))
    return split_answers(run.model, split, run.cfg, 32, pad_id_of(run.tokenizer), model_device(run.model))


def evaluate(run, records: list[dict] | None, source: str, log) -> dict:
    """EM / F1 of a run on labelled questions (`records` flat; None: the run's own test split)."""
    from tunelab.data.prepare import held_out_as_trained
    from tunelab.data.squad import check_offsets, flat_records

    d = run.cfg.data
    if records is None:
        splits = split_questions(run.cfg, lambda _: None)
        if "test" not in splits or not splits["test"][0]:
            raise TunelabError(f"{run.dir} has no test split (data.test_fraction is 0 and no data.test file); "
                               "pass --data FILE with questions, contexts and answers")
        questions = held_out_as_trained(splits["test"][0], data_view(run.cfg), run.cfg)
    else:
        questions = flat_records(records, source, d.question_field, d.context_field, d.answers_field)
        missing = next((q for q in questions if q["answers"] is None), None)
        if missing is not None:
            raise DataError(missing["_file"], f"{missing['_where']}: no '{d.answers_field}' field to score "
                                              "against; set data.answers_field", missing["_line"])
        check_offsets(questions, d.fix_offsets)
    answers, loss = _run_answers(run, questions, source)
    return scores(answers, questions, run_threshold(run), loss)[0]


def predict(run, records: list[dict], source: str, log) -> list[dict]:
    """Each record plus answer, score, start and end (character offsets into its context; "" / null / null
    for no answer). `score` is the best span's start + end logit, or the no-answer score."""
    from tunelab.data.squad import flat_records

    d = run.cfg.data
    questions = flat_records(records, source, d.question_field, d.context_field, None)
    answers, _ = _run_answers(run, questions, source)
    out = []
    for rec, answer in zip(records, answers):
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        clean.update(decide(answer, run_threshold(run)))
        out.append(clean)
    return out


def ask(run_dir: str | Path, context: str, questions: list[str], overrides: list[str] | None = None
        ) -> list[dict]:
    """`tunelab ask RUN_DIR --context FILE --question ...`: each question's answer from `context`:
    {question, answer, score, start, end} (start / end: character offsets into the context, null with no
    answer)."""
    from tunelab.runs import load_run

    if not context.strip():
        raise TunelabError("ask: the context is empty; give a file with the text to answer from")
    run = load_run(run_dir, overrides)
    d = run.cfg.data
    records = [{d.question_field: q, d.context_field: context} for q in questions]
    return [{"question": q, **{k: row[k] for k in ("answer", "score", "start", "end")}}
            for q, row in zip(questions, predict(run, records, "--question", lambda _: None))]


def text_records(texts: list[str], run) -> list[dict]:
    """`predict --text` has no context to answer from: refused in one line."""
    raise TunelabError(f"predict --text: an extractive_qa run answers from a context; give --input FILE with "
                       f"'{run.cfg.data.question_field}' and '{run.cfg.data.context_field}' fields, or use "
                       f"`tunelab ask {run.dir} --context FILE --question \"...\"`")


def check_config(cfg) -> list[str]:
    """Problems beyond the schema: LoRA on a scratch model, a stride that leaves windows no new tokens;
    data.redact_pii / data.augment where the texts cannot be rewritten."""
    from tunelab.data.prepare import rewrite_problems

    problems = rewrite_problems(cfg, data_view(cfg))
    if cfg.method.name == "lora" and str(cfg.model.name).startswith("scratch:"):
        problems.append(f"method.name: lora wraps Hugging Face layers; {cfg.model.name} is a scratch model: use "
                        "full or freeze")
    stride = cfg.data.doc_stride
    if isinstance(stride, int) and isinstance(cfg.model.max_length, int) and stride >= cfg.model.max_length // 2:
        problems.append(f"data.doc_stride: got {stride}; windows share this many context tokens, so it must stay "
                        f"below half of model.max_length ({cfg.model.max_length // 2}); e.g. null "
                        f"({cfg.model.max_length // 4})")
    return problems


def check_data(ref, data_cfg) -> None:
    """`tunelab validate`: read a data reference the way training will (a DataError for what cannot be read)."""
    read_questions(ref, data_cfg, lambda _: None)


def _register() -> None:
    from tunelab.tasks import TASKS
    from tunelab.tasks.base import Task

    TASKS.register("extractive_qa", Task(
        name="extractive_qa", summary="the answer to a question as a span of its context (SQuAD v1/v2)",
        job=ExtractiveQAJob, metrics=METRICS, methods=("full", "freeze", "lora"),
        load=load_model, evaluate=evaluate, predict=predict, metrics_line=metrics_line, outputs="answers",
        settings=("data.question_field", "data.context_field", "data.answers_field", "data.fix_offsets",
                  "qa."),
        refused_settings={"data.label_field": "an extractive_qa run has no labels; its answers are "
                                              "data.answers_field",
                          "generate.": "generate.* applies to text generation; {run} is an extractive_qa run"},
        text_records=text_records, check_config=check_config, check_data=check_data,
        scratch_kinds=("transformer",), verbs={"ask": ask}, api=("answer",), splits=split_questions,
        data_view=data_view),
        options=("data.question_field", "data.context_field", "data.answers_field", "data.fix_offsets",
                 "data.doc_stride", "qa.max_answer_length", "qa.n_best", "qa.no_answer_threshold"))


_register()
