"""Token classification (named-entity recognition and any per-word tagging): a tag per word from a token head
on any encoder (Hugging Face's AutoModelForTokenClassification, or the scratch TransformerTagger / RNNTagger).

Data (tunelab.data.tagging): CoNLL-style files, JSONL with words + tags, or JSONL with raw text + character
span entities, read into sentences of words. Tags of any scheme (IOB1, IOB2, BIOES, BILOU, plain labels) are
converted to IOB2; the scheme is detected once from the training tags (data.tag_scheme: auto) and logged,
and repaired invalid sequences are counted. The label set is the training data's IOB2 tags, sorted with "O"
first; a tag of validation / test data outside it is an error. Splits carved out of data.train are seeded
sentence splits (tunelab.data.splits.split_indices).

Alignment. A sentence's words are tokenised as pre-split words (is_split_into_words=True), and the
tokenizer's word ids say which word each sub-token belongs to; a tokenizer without word ids (a slow one) is
run word by word, which gives the same map. The first sub-token of a word carries its tag; the other
sub-tokens and the special tokens are labelled -100 (no loss), and a prediction reads the first sub-token.

Windows. A sentence longer than a row becomes several rows ("windows")
    [CLS] sub-tokens of words a .. b-1 [SEP]               (BOS / EOS for tokenizers without CLS / SEP)
never splitting a word, consecutive windows sharing at most data.doc_stride sub-tokens of whole words
(null: a quarter of model.max_length). A word longer than a whole window keeps its first pieces (only the
first is read). Each word's tag scores come from the window where it is most central (the most words on
its shorter side), so no word and no entity is lost to truncation.

Decoding. The best tag per word (argmax), or with predict.constrained: true the best valid IOB2 sequence
(Viterbi over the word log-probabilities with I-X allowed only after B-X or I-X, never first). Entity
metrics are seqeval's strict IOB2 mode (tunelab.evaluate.ner_metrics); early stopping uses entity F1. Decoding
and scores start from the words' tag probabilities (Task.probabilities, which `tunelab ensemble` averages over
runs), and the loss is the mean negative log-likelihood of each word's gold tag, each word counted once.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.data.tokens import IGNORE_INDEX
from tunelab.errors import DataError, TunelabError

METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "loss")
TAGGING_FILE = "tagging.json"  # RUN_DIR/tagging.json: the tag scheme, how it was chosen, the labels
REPORT_SAMPLES = 10
MODEL_INPUTS = ("input_ids", "attention_mask")


# ---------------------------------------------------------------------------------------------
# Words -> sub-tokens, and the windows of long sentences


def framing_ids(tokenizer) -> tuple[list[int], list[int]]:
    """(ids that open a row, ids that close it): [CLS] / [SEP], else BOS / EOS, else none (a bare tokenizer:
    scratch recurrent models need no framing)."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return ([cls] if cls is not None else []), ([sep] if sep is not None else [])


def word_pieces(tokenizer, sentences: list[list[str]]) -> list[list[list[int]]]:
    """The sub-token ids of each word of each sentence (no special tokens): pieces[s][w] = ids of word w.

    A fast tokenizer reads the sentence as pre-split words and its word ids assign the pieces; any other
    tokenizer is run word by word. A word the tokenizer drops entirely (e.g. a lone control character) gets
    the unknown token, so every word has a first sub-token to carry its tag.
    """
    from transformers.utils import logging as hf_logging

    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # long sentences are meant to exceed model_max_length: they are windowed
    try:
        if getattr(tokenizer, "is_fast", False) and sentences:
            out = pieces_by_word_ids(tokenizer, sentences)
        else:
            out = pieces_word_by_word(tokenizer, sentences)
    finally:
        hf_logging.set_verbosity(verbosity)
    return [[ids or [unk] for ids in words] for words in out]


def pieces_by_word_ids(tokenizer, sentences: list[list[str]]) -> list[list[list[int]]]:
    """Sub-token ids per word from one call on the pre-split sentences and the tokenizer's word ids."""
    enc = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
    out = []
    for s, words in enumerate(sentences):
        pieces: list[list[int]] = [[] for _ in words]
        for token, word in zip(enc["input_ids"][s], enc.word_ids(s)):
            if word is not None:
                pieces[word].append(token)
        out.append(pieces)
    return out


def pieces_word_by_word(tokenizer, sentences: list[list[str]]) -> list[list[list[int]]]:
    """Sub-token ids per word from tokenising each word alone (tokenizers without word ids)."""
    return [[tokenizer(w, add_special_tokens=False)["input_ids"] for w in words] for words in sentences]


def window_ranges(counts: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [a, b) of the windows over a sentence whose words have `counts` sub-tokens (each <= budget).

    A window takes whole words while they fit in `budget` sub-tokens; the next one starts at the earliest
    word after the window's start such that the words from there to the window's end hold at most `stride`
    sub-tokens (the overlap) and leave room for the next word, so every window starts and ends later.
    """
    out, a, n = [], 0, len(counts)
    while a < n:
        b, used = a, 0
        while b < n and used + counts[b] <= budget:
            used += counts[b]
            b += 1
        out.append((a, b))
        if b >= n:
            break
        nxt, shared, room = b, 0, min(stride, budget - counts[b])
        while nxt - 1 > a and shared + counts[nxt - 1] <= room:
            nxt -= 1
            shared += counts[nxt]
        a = nxt
    return out


@dataclass
class Window:
    """One row: framing + the sub-tokens of words [first, first + len(word_pos)) of one sentence."""

    sentence: int
    first: int
    ids: list[int]
    word_pos: list[int]
    """Row position of each word's first sub-token."""
    labels: list[int]
    """Per row position: the tag id at each word's first sub-token, else -100."""


@dataclass
class TagSplit:
    """One split: its sentences (tagging records), the IOB2 tag ids per sentence (None: unlabelled), windows."""

    records: list[dict]
    source: str
    tag_ids: list[list[int]] | None
    windows: list[Window] = field(default_factory=list)
    by_sentence: list[list[int]] = field(default_factory=list)
    words_cut: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def describe(self) -> str:
        words = sum(len(r["tokens"]) for r in self.records)
        tokens = sum(len(w.ids) for w in self.windows)
        long = sum(len(ws) > 1 for ws in self.by_sentence)
        notes = [f"{long} sentences split into overlapping windows"] if long else []
        if self.words_cut:
            notes.append(f"{self.words_cut} words longer than a window keep their first sub-tokens")
        return (f"{len(self)} sentences, {words} words, {len(self.windows)} windows, {tokens} tokens"
                + (f"; {'; '.join(notes)}" if notes else ""))


def build_windows(records: list[dict], tag_ids: list[list[int]] | None, source: str, tokenizer, max_length: int,
                  stride: int | None) -> TagSplit:
    """The windows of every sentence of `records` (tagging records with `tokens`); see the module docstring."""
    head, tail = framing_ids(tokenizer)
    budget = max_length - len(head) - len(tail)
    if budget < 1:
        raise TunelabError(f"model.max_length: {max_length} leaves no room for words; raise model.max_length")
    stride = max_length // 4 if stride is None else stride
    split = TagSplit(records, source, tag_ids)
    pieces = word_pieces(tokenizer, [r["tokens"] for r in records])
    for s, words in enumerate(pieces):
        split.words_cut += sum(len(p) > budget for p in words)
        words = [p[:budget] for p in words]
        first_window = len(split.windows)
        for a, b in window_ranges([len(p) for p in words], budget, stride):
            ids, pos, labels = list(head), [], [IGNORE_INDEX] * len(head)
            for w in range(a, b):
                pos.append(len(ids))
                ids += words[w]
                tag = tag_ids[s][w] if tag_ids is not None else IGNORE_INDEX
                labels += [tag] + [IGNORE_INDEX] * (len(words[w]) - 1)
            split.windows.append(Window(s, a, ids + tail, pos, labels + [IGNORE_INDEX] * len(tail)))
        split.by_sentence.append(list(range(first_window, len(split.windows))))
    return split


def window_batch(windows: list[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels (B, T), labels padded with -100."""
    from tunelab.data.batching import pad_batch

    return pad_batch([w.ids for w in windows], pad_id, {"labels": [w.labels for w in windows]},
                     {"labels": IGNORE_INDEX})


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Cross entropy summed over the labelled positions (first sub-tokens of words) and their count."""
    logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits  # (B, T, L)
    return token_loss(logits, batch["labels"])


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed cross entropy of logits (B, T, L) at the positions whose label (B, T) is not -100, their count)."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


def most_central(windows: list[Window], n_words: int) -> list[tuple[int, int]]:
    """For each word of a sentence: (index into `windows`, row position) of its first sub-token in the window
    where it has the most words on its shorter side (the first such window on a tie)."""
    best: list[tuple[int, int, int]] = [(-1, -1, -1)] * n_words  # (centrality, window, position)
    for k, w in enumerate(windows):
        n = len(w.word_pos)
        for i, pos in enumerate(w.word_pos):
            centrality = min(i, n - 1 - i)
            if centrality > best[w.first + i][0]:
                best[w.first + i] = (centrality, k, pos)
    return [(k, pos) for _, k, pos in best]


@torch.no_grad()
def word_log_probs(model, split: TagSplit, batch_size: int, pad_id: int, device) -> tuple[list[np.ndarray], float]:
    """Per sentence: the tag log-probabilities of its words (n_words, L) as merged from its windows, and the
    mean cross entropy over the labelled positions of all windows (nan when unlabelled)."""
    from tunelab.data.batching import length_grouped_batches
    from tunelab.train.logging import progress

    model.eval()
    rows: list = [None] * len(split.windows)
    total, count = 0.0, 0
    plan = length_grouped_batches([len(w.ids) for w in split.windows], batch_size, 0, shuffle=False)
    for idx in progress(plan, len(plan), "tag", "batches"):
        batch = {k: v.to(device) for k, v in window_batch([split.windows[i] for i in idx], pad_id).items()}
        logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits.float()  # (B, T, L)
        loss, n = token_loss(logits, batch["labels"])
        total, count = total + float(loss), count + n
        log_probs = torch.log_softmax(logits, dim=-1).cpu().numpy()  # (B, T, L)
        for row, i in enumerate(idx):
            rows[i] = log_probs[row, :len(split.windows[i].ids)]
    out = []
    for record, window_ids in zip(split.records, split.by_sentence):
        windows = [split.windows[i] for i in window_ids]
        picks = most_central(windows, len(record["tokens"]))
        out.append(np.stack([rows[window_ids[k]][pos] for k, pos in picks]) if picks
                   else np.zeros((0, 0), dtype=np.float32))
    return out, total / count if count else math.nan


# ---------------------------------------------------------------------------------------------
# Decoding: the best tag per word, or the best valid IOB2 sequence


def transitions(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(allowed first tags (L,), allowed transitions (L, L) [from, to]) of IOB2: I-X only after B-X or I-X."""
    def inside_of(tag: str) -> str | None:
        return tag[2:] if tag.startswith("I-") else None

    first = np.array([inside_of(t) is None for t in labels])
    allowed = np.ones((len(labels), len(labels)), dtype=bool)
    for j, to in enumerate(labels):
        kind = inside_of(to)
        if kind is not None:
            allowed[:, j] = [frm in (f"B-{kind}", f"I-{kind}") for frm in labels]
    return first, allowed


def viterbi(log_probs: np.ndarray, first: np.ndarray, allowed: np.ndarray) -> list[int]:
    """The tag sequence of highest summed log-probability (log_probs (n, L)) using only allowed tags first and
    allowed transitions; the lowest tag index wins a tie."""
    n, _ = log_probs.shape
    if n == 0:
        return []
    penalty = np.where(allowed, 0.0, -np.inf)  # (L, L) [from, to]
    score = np.where(first, log_probs[0], -np.inf)  # (L,)
    back = np.zeros((n, log_probs.shape[1]), dtype=int)
    for t in range(1, n):
        options = score[:, None] + penalty  # (L from, L to)
        back[t] = options.argmax(axis=0)
        score = options.max(axis=0) + log_probs[t]
    path = [int(score.argmax())]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t][path[-1]]))
    return path[::-1]


def decode(log_probs: np.ndarray, labels: list[str], constrained: bool) -> list[int]:
    """Tag ids of one sentence's words: argmax per word, or Viterbi over valid IOB2 sequences."""
    if log_probs.shape[0] == 0:
        return []
    if constrained:
        return viterbi(log_probs, *transitions(labels))
    return [int(i) for i in log_probs.argmax(axis=1)]


def entities_of(record: dict, tags: list[str], probs: np.ndarray) -> list[dict]:
    """{text, label, start, end, score} per entity of IOB2 `tags`: character offsets into the record's text
    when it came as raw text, else word indices [start, end); score = mean probability of the entity's tags
    (`probs`: the probability of each word's chosen tag)."""
    from tunelab.data.tagging import spans_of

    out = []
    for label, i, j in spans_of(tags):
        score = round(float(probs[i:j].mean()), 4)
        if record.get("offsets") is not None and record.get("text") is not None:
            start, end = record["offsets"][i][0], record["offsets"][j - 1][1]
            out.append({"text": record["text"][start:end], "label": label, "start": start, "end": end,
                        "score": score})
        else:
            out.append({"text": " ".join(record["tokens"][i:j]), "label": label, "start": i, "end": j,
                        "score": score})
    return out


# ---------------------------------------------------------------------------------------------
# Data for a run: sentences, the scheme, IOB2 tags and their ids


def read_sentences(ref, d, log, labelled: bool = True) -> list[dict]:
    """Tagging records of one data reference with the run's data.* settings."""
    from tunelab.data.tagging import load_tagged

    return load_tagged(str(ref), d, log, labelled=labelled)


def split_sentences(cfg, log) -> dict[str, tuple[list[dict], str]]:
    """train / validation / test sentences: given files, or seeded splits of data.train's sentences."""
    from tunelab.data.splits import held_out, split_indices, subset_indices

    d, seed = cfg.data, cfg.train.seed
    records = read_sentences(d.train, d, log)
    parts = split_indices(len(records), d.val_fraction, d.test_fraction, seed, hold_out=held_out(d))
    splits = {name: ([records[i] for i in idx], d.train if name == "train" else f"{d.train} ({name} split)")
              for name, idx in parts.items()}
    for name, ref in (("validation", d.validation), ("test", d.test)):
        if ref:
            splits[name] = (read_sentences(ref, d, log), ref)
    train = splits["train"][0]
    if d.limit is not None and d.limit < len(train):
        splits["train"] = ([train[i] for i in subset_indices(len(train), d.limit, seed)], d.train)
        log(f"data.limit: using {d.limit} training sentences")
    return splits


def data_view(cfg):
    """Task.data_view: a sentence's text is its raw text, or its words joined by spaces; a rewrite keeps every
    word's tag (`rewrite_sentence`), and augmentation edits only the words between entities
    (`augment_sentence`)."""
    from tunelab.data.prepare import DataView

    return DataView(texts=lambda r: [r["text"] if r.get("text") is not None else " ".join(r["tokens"])],
                    rewrite=rewrite_sentence, augment=augment_sentence)


def augment_sentence(record: dict, fn) -> dict:
    """A copy of a tagged record with fn applied to each run of words between entities; the entities are the
    labels, so their words, tags and text stay exactly as they were (`rewrite_sentence`)."""
    return rewrite_sentence(record, fn, entities=False)


def rewrite_sentence(record: dict, fn, entities: bool = True) -> dict:
    """A copy of a tagged record (IOB2 tags: the job converts before tunelab.data.prepare.prepare_splits) with
    fn applied to each entity and to each run of words between entities, apart, so tags follow the words:
    an entity's new words are B-X, I-X ..., the others O. A run's text is its stretch of the raw text (an
    e-mail address that the word rule cut into pieces is whole again) or its words joined by spaces; its new
    words are the raw-text word rule's (tunelab.data.tagging.words_of) or the pieces between spaces. An entity
    rewritten to nothing keeps its words; with `entities` False every entity keeps its words, tags and text."""
    from tunelab.data.tagging import spans_of, words_of

    words, tags, text, offsets = record["tokens"], record["tags"], record.get("text"), record.get("offsets")
    runs, at = [], 0  # (first word, last word + 1, entity type or None)
    for kind, start, end in (spans_of(tags) if tags is not None else []):
        if start > at:
            runs.append((at, start, None))
        runs.append((start, end, kind))
        at = end
    if at < len(words):
        runs.append((at, len(words), None))
    new_words, new_tags, new_offsets, pieces = [], [], [], []
    done = length = 0  # characters of the old text read, of the new text written
    for start, end, kind in runs:
        kept = kind is not None and not entities
        if text is not None:
            a, b = offsets[start][0], offsets[end - 1][1]
            pieces.append(text[done:a])
            length += a - done
            changed = text[a:b] if kept else fn(text[a:b])
            got, spans = words_of(changed)
            if kept or (kind is not None and not got):  # the entity's own words and offsets, moved
                changed, got = text[a:b], words[start:end]
                spans = [(x - a, y - a) for x, y in offsets[start:end]]
            pieces.append(changed)
            new_offsets += [(length + x, length + y) for x, y in spans]
            length += len(changed)
            done = b
        else:
            got = words[start:end] if kept else fn(" ".join(words[start:end])).split()
            if kind is not None and not got:
                got = words[start:end]
        new_words += got
        if tags is not None:
            new_tags += [("B-" if k == 0 else "I-") + kind if kind else "O" for k in range(len(got))]
    out = {**record, "tokens": new_words, "tags": new_tags if tags is not None else None}
    if text is not None:
        out["text"], out["offsets"] = "".join(pieces) + text[done:], new_offsets
    return out


def choose_scheme(records: list[dict], setting: str) -> tuple[str, str]:
    """(scheme, how it was chosen): data.tag_scheme, or detected from the training tags."""
    from tunelab.data.tagging import detect_scheme

    if setting != "auto":
        return setting, "data.tag_scheme"
    return detect_scheme([r["tags"] for r in records]), "detected"


def label_set(tag_lists: list[list[str]]) -> list[str]:
    """"O" first, then B-X and I-X for every entity type X of the training data, sorted: a type whose training
    entities are all one word still gets its I- tag (a two-word one in validation is no unseen tag)."""
    types = {t[2:] for tags in tag_lists for t in tags if t != "O"}
    return ["O"] + sorted(f"{prefix}-{kind}" for kind in types for prefix in "BI")


def tag_ids_of(records: list[dict], label2id: dict[str, int]) -> list[list[int]]:
    """Tag ids of each sentence's IOB2 tags; a tag the training data does not have is a DataError naming
    the record."""
    out = []
    for r in records:
        unknown = next((t for t in r["tags"] if t not in label2id), None)
        if unknown is not None:
            raise DataError(r["_file"], f"{r['_where']}: tag {unknown!r} (in IOB2) does not occur in the training "
                                        f"data (known: {', '.join(label2id)}); fix the tag or add training "
                                        "sentences with it", r["_line"])
        out.append([label2id[t] for t in r["tags"]])
    return out


def require_tags(records: list[dict], split: str, d) -> list[dict]:
    """`records`, or a DataError for the first sentence without tags (training and scoring need them)."""
    missing = next((r for r in records if r["tags"] is None), None)
    if missing is not None:
        raise DataError(missing["_file"], f"{missing['_where']}: no tags; {split} needs them (set "
                                          "data.tags_field / data.entities_field / data.tag_column)", missing["_line"])
    return records


# ---------------------------------------------------------------------------------------------
# Scoring a split


@dataclass
class Tagged:
    """A split's decoded tags (IOB2 names per sentence), the probability of each chosen tag, the loss."""

    tags: list[list[str]]
    probs: list[np.ndarray]
    loss: float


def word_probabilities(model, split: TagSplit, batch_size: int, pad_id: int, device) -> list[np.ndarray]:
    """Per sentence of `split`: its words' tag probabilities (n_words, L) as float64, so that a probability
    near 1 keeps its log-probability's precision (the loss and decoding take its log again)."""
    log_probs, _ = word_log_probs(model, split, batch_size, pad_id, device)
    return [np.exp(lp.astype(np.float64)) for lp in log_probs]


def tag_probabilities(word_probs: list[np.ndarray], labels: list[str], constrained: bool,
                      tag_ids: list[list[int]] | None = None) -> Tagged:
    """Decode each sentence's word probabilities (n_words, L) (argmax, or constrained Viterbi over their logs);
    the loss is the mean negative log-likelihood of each word's gold tag (`tag_ids`; nan without them), each
    word once, read where decoding reads it."""
    tags, probs = [], []
    with np.errstate(divide="ignore"):  # a probability of exactly 0 is a log of -inf, which decoding handles
        for p in word_probs:
            ids = decode(np.log(p), labels, constrained)
            tags.append([labels[i] for i in ids])
            probs.append(p[np.arange(len(ids)), ids] if ids else np.zeros(0))
    return Tagged(tags, probs, word_loss(word_probs, tag_ids))


def word_loss(word_probs: list[np.ndarray], tag_ids: list[list[int]] | None) -> float:
    """Mean -log p(gold tag) over the words of all sentences; nan when unlabelled or without words."""
    if tag_ids is None:
        return math.nan
    gold = [p[np.arange(len(ids)), ids] for p, ids in zip(word_probs, tag_ids) if len(ids)]
    if not gold:
        return math.nan
    return float(-np.log(np.clip(np.concatenate(gold), np.finfo(np.float64).tiny, None)).mean())


def tag_split(model, split: TagSplit, labels: list[str], constrained: bool, batch_size: int, pad_id: int,
              device) -> Tagged:
    """Decode every sentence of `split` from its merged word probabilities (see `tag_probabilities`)."""
    return tag_probabilities(word_probabilities(model, split, batch_size, pad_id, device), labels, constrained,
                             split.tag_ids)


def scores(split: TagSplit, tagged: Tagged) -> dict:
    """ner_metrics of the split's gold IOB2 tags against the decoded ones, plus the loss."""
    from tunelab.evaluate.ner_metrics import ner_metrics

    from tunelab.data.tagging import to_iob2

    # an argmax I- that continues nothing is read as B- (as predict and the report read it), so the metrics
    # score the entities users get; constrained decoding never produces one
    predicted = [to_iob2(tags, "iob2")[0] for tags in tagged.tags]
    metrics = ner_metrics([r["tags"] for r in split.records], predicted)
    metrics["loss"] = tagged.loss
    return metrics


# ---------------------------------------------------------------------------------------------
# The job: what `tunelab train` runs for `task: token_classification`


class TokenClassificationJob:
    default_metric = "entity_f1"
    metric_names = METRICS

    def __init__(self, cfg, device: torch.device, log):
        self.cfg, self.device, self.log = cfg, device, log
        self.eval_batch_size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        self.samples: list[dict] = []

    def prepare(self) -> None:
        from tunelab.data.prepare import prepare_splits
        from tunelab.data.tagging import convert_records
        from tunelab.data.tokens import pad_id_of
        from tunelab.methods import apply_method, options_of
        from tunelab.methods.common import count_parameters
        from tunelab.models.build import load_tagger_and_tokenizer
        from tunelab.models.load import check_max_length

        cfg, d = self.cfg, self.cfg.data
        splits = {name: (require_tags(recs, name, d), src) for name, (recs, src) in
                  split_sentences(cfg, self.log).items()}
        self.scheme, self.scheme_how = choose_scheme(splits["train"][0], d.tag_scheme)
        self.log(f"tag scheme: {self.scheme} ({self.scheme_how})")
        for name, (recs, src) in splits.items():
            convert_records(recs, self.scheme, src, self.log)
        splits = prepare_splits(splits, data_view(cfg), cfg, self.log)  # after IOB2: rewrite_sentence needs it
        self.data_summary = splits.summary
        self.labels = label_set([r["tags"] for r in splits["train"][0]])
        if len(self.labels) < 2:
            raise DataError(d.train, "the training data has no entity tags (every word is 'O'); token "
                                     "classification needs at least one tagged word")
        label2id = {t: i for i, t in enumerate(self.labels)}
        model, self.tokenizer, head = load_tagger_and_tokenizer(cfg.model, self.labels)
        check_max_length(cfg.model.max_length, model, cfg.model.name)
        self.pad_id = pad_id_of(self.tokenizer)
        self.data = {name: build_windows(recs, tag_ids_of(recs, label2id), src, self.tokenizer,
                                         cfg.model.max_length, d.doc_stride)
                     for name, (recs, src) in splits.items()}
        self.log(f"labels: {len(self.labels)} IOB2 tags ({', '.join(self.labels)})")
        for name, split in self.data.items():
            self.log(f"{name}: {split.describe()}")
        m = cfg.method
        self.model = apply_method(m.name, model, head, task_type="TOKEN_CLS", **options_of(m)).to(self.device)
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
        """Every training window as one padded batch (input_ids, attention_mask, labels with -100 off the
        first sub-tokens): the rows another trainer can be fed (bench)."""
        return window_batch(self.data["train"].windows, self.pad_id)

    # -- evaluation -------------------------------------------------------------------------

    def _tagged(self, model, name: str) -> Tagged | None:
        split = self.data.get(name)
        if split is None or len(split) == 0:
            return None
        return tag_split(model, split, self.labels, self.cfg.predict.constrained, self.eval_batch_size,
                         self.pad_id, self.device)

    def validate(self, model) -> dict | None:
        tagged = self._tagged(model, "validation")
        return None if tagged is None else scores(self.data["validation"], tagged)

    def test(self) -> dict:
        tagged = self._tagged(self.model, "test")
        if tagged is None:
            return {}
        split = self.data["test"]
        self.samples = [{"tokens": r["tokens"], "gold": r["tags"], "predicted": p}
                        for r, p in zip(split.records, tagged.tags)][:REPORT_SAMPLES]
        return scores(split, tagged)

    def save(self, model_dir: Path, run_dir: Path) -> None:
        from tunelab.io import atomic_write_json
        from tunelab.models.build import save_model

        save_model(self.model, self.tokenizer, model_dir, run_dir, self.cfg, self.labels)
        atomic_write_json(run_dir / TAGGING_FILE, {"scheme": self.scheme, "how": self.scheme_how,
                                                   "labels": self.labels})

    def finish(self, run_dir: Path) -> dict:
        return {}

    def report_sections(self, test_metrics: dict) -> list[tuple[str, str]]:
        if not test_metrics:
            return []
        note = (f"<p>tag scheme of the data: {html.escape(self.scheme)} ({html.escape(self.scheme_how)}), "
                "converted to IOB2; entities scored by seqeval in strict mode (IOB2): an entity counts only "
                f"with its exact type and word span; decoding: "
                f"{'constrained (valid IOB2)' if self.cfg.predict.constrained else 'best tag per word'}</p>")
        return [("Entities by type (test)", note + per_type_table(test_metrics)),
                ("Entity type confusion (test)", type_confusion_section(test_metrics)),
                ("Sample sentences (test)", samples_html(self.samples))]

    def summary(self, m: dict) -> str:
        if not m:
            return "no test split (data.test_fraction is 0 and no data.test file)"
        return "test: " + metrics_line(m)


def metrics_line(m: dict) -> str:
    """One line: entity precision / recall / F1, token accuracy, loss."""
    line = (f"entity_f1 {m['entity_f1']:.4f}  precision {m['entity_precision']:.4f}  "
            f"recall {m['entity_recall']:.4f}  token_accuracy {m['token_accuracy']:.4f}")
    if m.get("loss") is not None and not math.isnan(m["loss"]):
        line += f"  loss {m['loss']:.4f}"
    return line + f"  (n={m['n']} sentences)"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def per_type_table(m: dict) -> str:
    """HTML table: precision / recall / F1 / support per entity type, then the micro average."""
    rows = "".join(f"<tr><td>{html.escape(kind)}</td><td>{_num(r['precision'])}</td><td>{_num(r['recall'])}</td>"
                   f"<td>{_num(r['f1'])}</td><td>{r['support']}</td></tr>" for kind, r in m["per_type"].items())
    rows += (f"<tr><th>all (micro)</th><th>{_num(m['entity_precision'])}</th><th>{_num(m['entity_recall'])}</th>"
             f"<th>{_num(m['entity_f1'])}</th><th>{m['entities']}</th></tr>")
    return ("<table><tr><th>type</th><th>precision</th><th>recall</th><th>F1</th><th>gold entities</th></tr>"
            f"{rows}</table><p>token accuracy {_num(m['token_accuracy'])} over the words of {m['n']} sentences</p>")


def type_confusion_section(m: dict) -> str:
    """The entity type confusion as a figure: gold type (rows) against the type predicted on the same word
    span (columns); "none" = no entity there (a missed gold entity, or a spurious prediction)."""
    from tunelab.evaluate.report import confusion_figure

    confusion = m["type_confusion"]
    if len(confusion["labels"]) < 2:
        return "<p>no entities in the test split</p>"
    note = ("<p>rows: gold entity type; columns: the type predicted on exactly the same words; 'none' column: "
            "gold entities no prediction matches in span; 'none' row: predicted entities on no gold span</p>")
    return note + confusion_figure(confusion["matrix"], confusion["labels"])


def highlighted(tokens: list[str], tags: list[str]) -> str:
    """The words as HTML (escaped) with each entity of IOB2 `tags` marked and its type after it."""
    from tunelab.data.tagging import spans_of

    starts = {i: (kind, j) for kind, i, j in spans_of(tags)}
    out, i = [], 0
    while i < len(tokens):
        if i in starts:
            kind, j = starts[i]
            out.append(f"<mark>{html.escape(' '.join(tokens[i:j]))}<sub>{html.escape(kind)}</sub></mark>")
            i = j
        else:
            out.append(html.escape(tokens[i]))
            i += 1
    return " ".join(out)


def samples_html(samples: list[dict]) -> str:
    """HTML table of sample sentences with their gold and predicted entities highlighted."""
    rows = "".join(f"<tr><td>gold</td><td>{highlighted(s['tokens'], s['gold'])}</td></tr>"
                   f"<tr><td>predicted</td><td>{highlighted(s['tokens'], s['predicted'])}</td></tr>"
                   for s in samples)
    return f"<table>{rows}</table>"


# ---------------------------------------------------------------------------------------------
# A finished token-classification run: load, evaluate, predict


def load_model(run_dir: Path, cfg) -> tuple:
    """(token tagger in eval mode, tokenizer, RUN_DIR/tagging.json: scheme and labels) of a run."""
    import json

    from transformers import AutoModelForTokenClassification

    from tunelab.runs import load_model_dir

    model_dir = Path(run_dir) / "model"
    model, tokenizer = load_model_dir(model_dir, AutoModelForTokenClassification)
    path = Path(run_dir) / TAGGING_FILE
    if not path.is_file():
        raise TunelabError(f"{run_dir}: {TAGGING_FILE} is missing; `tunelab train` writes it for a "
                           "token_classification run (train the run again)")
    return model, tokenizer, json.loads(path.read_text())


def own_test_split(run) -> tuple[list[dict], str]:
    """(tagged sentences, source) of a finished run's own test split as its training tested on them (tags in
    IOB2, redacted with data.redact_pii), or one clear error when it has none."""
    from tunelab.data.prepare import held_out_as_trained
    from tunelab.data.tagging import convert_records

    splits = split_sentences(run.cfg, lambda _: None)
    if "test" not in splits or not splits["test"][0]:
        raise TunelabError(f"{run.dir} has no test split (data.test_fraction is 0 and no data.test file); "
                           "pass --data FILE with tagged sentences")
    sentences, source = splits["test"]
    convert_records(sentences, run.meta["scheme"], source)  # rewrite_sentence reads IOB2 tags
    return held_out_as_trained(sentences, data_view(run.cfg), run.cfg), source


def probabilities(run, records: list[dict] | None, source: str, log) -> list[np.ndarray]:
    """Task.probabilities: for each sentence of `records` (loaded dicts; None: the run's own test split) the
    tag probabilities of its words (n_words, labels), read at each word's first sub-token in the window where
    it is most central, in the order of run.meta["labels"]."""
    from tunelab.data.tagging import records_to_tagged
    from tunelab.data.tokens import pad_id_of
    from tunelab.models.device import model_device

    if records is None:
        sentences, source = own_test_split(run)
    else:
        sentences = records_to_tagged(records, source, run.cfg.data, log, labelled=False)
    split = build_windows(sentences, None, source, run.tokenizer, run.cfg.model.max_length, run.cfg.data.doc_stride)
    return word_probabilities(run.model, split, 32, pad_id_of(run.tokenizer), model_device(run.model))


def quiet(_line: str) -> None:
    """The log of a second reading of records whose notes were already logged."""


def evaluate(run, records: list[dict] | None, source: str, log) -> dict:
    """Entity metrics of a run on tagged sentences (`records` loaded dicts; None: the run's own test split),
    decoded from the word probabilities of tunelab.runs.run_probabilities (an ensemble's: its members' mean)."""
    from tunelab.data.tagging import convert_records, records_to_tagged
    from tunelab.runs import run_probabilities

    if records is None:
        sentences, source = own_test_split(run)  # in IOB2 already
    else:
        sentences = records_to_tagged(records, source, run.cfg.data, log, labelled=True)
        convert_records(require_tags(sentences, "evaluation", run.cfg.data), run.meta["scheme"], source, log)
    labels = run.meta["labels"]
    tag_ids = tag_ids_of(sentences, {t: i for i, t in enumerate(labels)})
    word_probs = run_probabilities(run, records, source, quiet)
    tagged = tag_probabilities(word_probs, labels, run.cfg.predict.constrained, tag_ids)
    return scores(TagSplit(sentences, source, tag_ids), tagged)


def predict(run, records: list[dict], source: str, log) -> list[dict]:
    """Each record plus `entities` [{text, label, start, end, score}] (character offsets into its text for
    raw-text records, word indices [start, end) for word records, where `tags` (IOB2, one per word) is added
    too). `score` is the mean probability of the entity's tags."""
    from tunelab.data.tagging import records_to_tagged
    from tunelab.runs import run_probabilities

    sentences = records_to_tagged(records, source, run.cfg.data, log, labelled=False)
    word_probs = run_probabilities(run, records, source, quiet)
    tagged = tag_probabilities(word_probs, run.meta["labels"], run.cfg.predict.constrained)
    out = []
    for sent, tags, probs in zip(sentences, tagged.tags, tagged.probs):
        clean = {k: v for k, v in (sent["_record"] or {}).items() if not k.startswith("_")}
        if sent["text"] is None:
            clean["tags"] = tags
        clean["entities"] = entities_of(sent, tags, probs)
        out.append(clean)
    return out


def check_config(cfg) -> list[str]:
    """Problems beyond the schema: LoRA on a scratch model, a stride that leaves windows no new words;
    data.redact_pii / data.augment where the texts cannot be rewritten."""
    from tunelab.data.prepare import rewrite_problems

    problems = rewrite_problems(cfg, data_view(cfg))
    if cfg.method.name == "lora" and str(cfg.model.name).startswith("scratch:"):
        problems.append(f"method.name: lora wraps Hugging Face layers; {cfg.model.name} is a scratch model: use "
                        "full or freeze")
    stride = cfg.data.doc_stride
    if isinstance(stride, int) and isinstance(cfg.model.max_length, int) and stride >= cfg.model.max_length // 2:
        problems.append(f"data.doc_stride: got {stride}; windows share at most this many sub-tokens, so it must "
                        f"stay below half of model.max_length ({cfg.model.max_length // 2}); e.g. null "
                        f"({cfg.model.max_length // 4})")
    return problems


def check_data(ref, data_cfg) -> None:
    """`tunelab validate`: read a data reference the way training will (a DataError for what cannot be read)."""
    read_sentences(ref, data_cfg, lambda _: None)


def read_data(ref: str, cfg, log) -> list[dict]:
    """`eval --data` / `predict --input`: a CoNLL file (.conll, .txt) as word records (data.tokens_field, and
    data.tags_field where it has tags); any other file as tunelab.data.sources.load_records reads it."""
    from tunelab.data.tagging import CONLL_SUFFIXES, load_tagged

    d = cfg.data
    if not str(ref).startswith("builtin:") and Path(ref).suffix.lower() in CONLL_SUFFIXES:
        return [{d.tokens_field: r["tokens"], **({d.tags_field: r["tags"]} if r["tags"] is not None else {}),
                 "_file": r["_file"], "_line": r["_line"]}
                for r in load_tagged(str(ref), d, log, labelled=False)]
    from tunelab.data.sources import load_records

    return load_records(ref, log)


def _register() -> None:
    from tunelab.models.scratch import TAGGER_KINDS
    from tunelab.tasks import TASKS
    from tunelab.tasks.base import Task

    TASKS.register("token_classification", Task(
        name="token_classification", summary="a tag per word: named entities or any per-word labels (NER)",
        job=TokenClassificationJob, metrics=METRICS, methods=("full", "freeze", "lora", "distill"),
        load=load_model, evaluate=evaluate, predict=predict, metrics_line=metrics_line, outputs="entities",
        probabilities=probabilities,
        settings=("data.text_field", "data.tokens_field", "data.tags_field", "data.entities_field",
                  "data.tag_column", "data.skip_bad_spans", "predict."),
        refused_settings={"data.label_field": "a token_classification run tags words; its tags are "
                                              "data.tags_field (or data.entities_field)",
                          "generate.": "generate.* applies to text generation; {run} is a token_classification "
                                       "run"},
        check_config=check_config, check_data=check_data, read_data=read_data, scratch_kinds=TAGGER_KINDS,
        splits=split_sentences, data_view=data_view,
        api=("entities",)),
        options=("data.tokens_field", "data.tags_field", "data.entities_field", "data.tag_column",
                 "data.tag_scheme", "data.skip_bad_spans", "data.doc_stride", "predict.constrained"))


_register()
