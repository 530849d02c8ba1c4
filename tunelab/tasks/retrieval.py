"""Retriever fine-tuning: (query, positive passage[, hard negative]) records -> an encoder whose pooled unit
vectors put each query next to its passage; recall@k / MRR against the untuned model and BM25.

Records name their texts with data.query_field / data.positive_field / data.negative_field (optional). The
model is a plain encoder (transformers AutoModel; builtin:minilm-l6 by default) with no new head: a query and
a passage are embedded by the same network, pooled and normalised with tunelab.retrieval.embed.encode_batch
(retrieval.pooling), which is also what `tunelab index build` embeds with.

Loss (in-batch negatives, InfoNCE): each query's cosine similarities to every passage of the batch (all
rows' positives, then any hard negatives), divided by retrieval.temperature, cross-entropy towards its own
positive. A passage that is relevant to the query anyway (the same text as its positive, or the positive
of a row with the same query text) is masked out rather than counted as a negative. Under DDP each process
builds its negatives from its own rows.

Evaluation ranks every query of a split against all passages of that split (exact search over unique
passage texts; identical query texts are one query whose relevant passages are all their positives).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.errors import DataError, TunelabError
from tunelab.evaluate.retrieval_metrics import METRIC_KEYS, ranks_from_scores, retrieval_metrics

METRICS = ("mrr@10", "recall@1", "recall@5", "recall@10")
META_FILE = "retrieval.json"  # RUN_DIR/model/retrieval.json: how the encoder's vectors are made
REPORT_EXAMPLES = 5
CLIP = 300  # characters of a passage shown in the report and in eval.json's examples


# ---------------------------------------------------------------------------------------------
# Records -> pairs


@dataclass
class Pairs:
    """One split's texts: queries[i] is answered by positives[i]; negatives[i] is its hard negative."""
    queries: list[str]
    positives: list[str]
    negatives: list[str] | None
    source: str

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, idx: list[int], source: str) -> Pairs:
        neg = [self.negatives[i] for i in idx] if self.negatives is not None else None
        return Pairs([self.queries[i] for i in idx], [self.positives[i] for i in idx], neg, source)


def field_texts(records: list[dict], field: str, key: str, source: str) -> list[str]:
    """The non-empty text of `field` in every record; a DataError names the file, record, field and fix."""
    texts = []
    for i, rec in enumerate(records):
        value = rec.get(field)
        if not isinstance(value, str) or not value.strip():
            what = ("missing" if field not in rec else "empty" if isinstance(value, str) or value is None
                    else f"not a text ({value!r:.40})")
            fields = ", ".join(k for k in rec if not k.startswith("_"))
            raise DataError(rec.get("_file", source), f"record {i + 1}: field '{field}' is {what}; every record "
                                                       f"needs it: fix the record or set {key} to the field "
                                                       f"holding that text (fields here: {fields})",
                            rec.get("_line"))
        texts.append(value)
    return texts


def read_pairs(records: list[dict], source: str, d) -> Pairs:
    """`d` a DataConfig: the query / positive / negative texts of `records`."""
    queries = field_texts(records, d.query_field, "data.query_field", source)
    positives = field_texts(records, d.positive_field, "data.positive_field", source)
    negatives = (field_texts(records, d.negative_field, "data.negative_field", source)
                 if d.negative_field else None)
    return Pairs(queries, positives, negatives, source)


def split_records(d, seed: int, log) -> dict[str, tuple[list[dict], str]]:
    """train / validation / test records: given files, or seeded splits carved out of data.train (every
    record's texts checked by `read_pairs`).

    Records sharing a positive passage text stay in one split, so a passage trained on is never a test
    passage (BBC News holds some articles twice, under two headlines)."""
    from tunelab.data.sources import load_records
    from tunelab.data.splits import held_out, split_indices, subset_indices

    records = load_records(d.train, log)
    pairs = read_pairs(records, d.train, d)
    groups: dict[str, int] = {}
    group_of = [groups.setdefault(p, len(groups)) for p in pairs.positives]
    parts = split_indices(len(groups), d.val_fraction, d.test_fraction, seed, hold_out=held_out(d))
    splits = {}
    for name, chosen in parts.items():
        chosen = set(chosen)
        splits[name] = ([records[i] for i, g in enumerate(group_of) if g in chosen],
                        d.train if name == "train" else f"{d.train} ({name} split)")
    train = splits["train"][0]
    if d.limit is not None and d.limit < len(train):
        splits["train"] = ([train[i] for i in subset_indices(len(train), d.limit, seed)], d.train)
        log(f"data.limit: using {d.limit} training pairs")
    for name, ref in (("validation", d.validation), ("test", d.test)):
        if ref:
            given = load_records(ref, log)
            read_pairs(given, ref, d)
            splits[name] = (given, ref)
    if not splits["train"][0]:
        raise DataError(d.train, "no training pairs left after carving validation and test; lower "
                                 "data.val_fraction / data.test_fraction or add records")
    return splits


def load_splits(d, seed: int, log) -> dict[str, Pairs]:
    """train / validation / test pairs (`split_records`)."""
    return {name: read_pairs(records, source, d) for name, (records, source) in split_records(d, seed, log).items()}


def read_splits(cfg, log) -> dict[str, tuple[list[dict], str]]:
    """Task.splits: the records of each split as a run splits them (`split_records`)."""
    return split_records(cfg.data, cfg.train.seed, log)


def data_view(cfg):
    """Task.data_view: a record's texts are its query, its positive and (when set) its hard negative; redaction
    rewrites them all, augmentation the query only (the passages are what a query must find)."""
    from tunelab.data.prepare import DataView, rewrite_fields

    d = cfg.data
    fields = (d.query_field, d.positive_field, *((d.negative_field,) if d.negative_field else ()))
    return DataView(texts=lambda r: [r[f] for f in fields if isinstance(r.get(f), str)],
                    rewrite=lambda r, fn: rewrite_fields(r, fields, fn),
                    augment=lambda r, fn: rewrite_fields(r, (d.query_field,), fn))


# ---------------------------------------------------------------------------------------------
# Tensors: token ids, text groups, batches


class PairSet:
    """One split tokenised. Groups: identical texts share an id (queries among queries, passages among
    positives and negatives), so a batch can tell a duplicate passage from a negative."""

    def __init__(self, tokenizer, pairs: Pairs, max_length: int):
        from tunelab.tasks.classification import encode

        self.pairs = pairs
        self.query_ids, q_cut = encode(tokenizer, pairs.queries, max_length)
        self.positive_ids, p_cut = encode(tokenizer, pairs.positives, max_length)
        self.negative_ids, n_cut = (encode(tokenizer, pairs.negatives, max_length) if pairs.negatives is not None
                                    else (None, 0))
        self.truncated = (q_cut, p_cut + n_cut)
        queries: dict[str, int] = {}
        passages: dict[str, int] = {}
        self.query_group = [queries.setdefault(q, len(queries)) for q in pairs.queries]
        self.positive_group = [passages.setdefault(p, len(passages)) for p in pairs.positives]
        self.negative_group = ([passages.setdefault(p, len(passages)) for p in pairs.negatives]
                               if pairs.negatives is not None else None)

    def __len__(self) -> int:
        return len(self.pairs)

    def lengths(self) -> list[int]:
        negs = self.negative_ids or [[]] * len(self)
        return [len(q) + len(p) + len(n) for q, p, n in zip(self.query_ids, self.positive_ids, negs)]

    def describe(self, max_length: int) -> str:
        tokens = sum(self.lengths())
        q_cut, p_cut = self.truncated
        notes = [f"{q_cut} queries truncated"] if q_cut else []
        notes += [f"{p_cut} passages truncated"] if p_cut else []
        negatives = " with hard negatives" if self.negative_ids is not None else ""
        cut = f" ({', '.join(notes)} to {max_length} tokens)" if notes else ""
        return f"{len(self)} pairs{negatives}, {tokens} tokens{cut}"

    def batch(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        """Rows `idx`: query_/passage_(/negative_) input_ids and attention_mask (B, T*), and the text groups
        query_group / passage_group (/ negative_group) (B,)."""
        from tunelab.data.batching import pad_batch

        out: dict[str, torch.Tensor] = {}
        parts = [("query", self.query_ids, self.query_group), ("passage", self.positive_ids, self.positive_group)]
        if self.negative_ids is not None:
            parts.append(("negative", self.negative_ids, self.negative_group))
        for name, ids, groups in parts:
            padded = pad_batch([ids[i] for i in idx], pad_id)
            out[f"{name}_input_ids"], out[f"{name}_attention_mask"] = padded["input_ids"], padded["attention_mask"]
            out[f"{name}_group"] = torch.tensor([groups[i] for i in idx])
        return out


# ---------------------------------------------------------------------------------------------
# The loss


def in_batch_loss(queries: torch.Tensor, passages: torch.Tensor, query_group: torch.Tensor,
                  positive_group: torch.Tensor, passage_group: torch.Tensor, temperature: float
                  ) -> tuple[torch.Tensor, int]:
    """InfoNCE with in-batch negatives; (loss summed over the B queries, B).

    queries (B, H) and passages (C, H) are unit vectors; passages[:B] are the rows' positives (row i's is
    column i), any further columns hard negatives. positive_group (B,) / passage_group (C,) are the text
    groups of the rows' positives and of every column, query_group (B,) those of the queries. A column is
    masked out for row i (not a negative) when its text is the positive of a row whose query is row i's
    query text (row i itself included), unless it is row i's own column.
    """
    B = queries.size(0)
    logits = queries @ passages.T / temperature  # (B, C) cosine similarities / temperature
    same_query = (query_group[:, None] == query_group[None, :]).float()  # (B, B): rows asking the same
    holds = (positive_group[:, None] == passage_group[None, :]).float()  # (B, C): row k's positive is column c
    relevant = (same_query @ holds) > 0  # (B, C): column c answers row i's query
    own = torch.zeros_like(relevant)
    own[torch.arange(B), torch.arange(B)] = True
    logits = logits.masked_fill(relevant & ~own, float("-inf"))
    loss = F.cross_entropy(logits.float(), torch.arange(B, device=logits.device), reduction="sum")
    return loss, B


def batch_loss(model, batch: dict[str, torch.Tensor], pooling: str, temperature: float
               ) -> tuple[torch.Tensor, int]:
    """Embed the batch's queries and passages with the one encoder, then `in_batch_loss`."""
    from tunelab.retrieval.embed import encode_batch

    q = encode_batch(model, batch["query_input_ids"], batch["query_attention_mask"], pooling)  # (B, H)
    p = encode_batch(model, batch["passage_input_ids"], batch["passage_attention_mask"], pooling)  # (B, H)
    groups = batch["passage_group"]
    if "negative_input_ids" in batch:
        n = encode_batch(model, batch["negative_input_ids"], batch["negative_attention_mask"], pooling)  # (B, H)
        p, groups = torch.cat([p, n]), torch.cat([groups, batch["negative_group"]])  # (2B, H), (2B,)
    return in_batch_loss(q, p, batch["query_group"], batch["passage_group"], groups, temperature)


# ---------------------------------------------------------------------------------------------
# Exact-search evaluation of a split


@dataclass
class Corpus:
    """A split as a search problem: unique queries, unique passages, and the passages relevant to each query."""
    queries: list[str]
    passages: list[str]
    relevant: list[set[int]]


def corpus_of(pairs: Pairs) -> Corpus:
    """Unique query and passage texts (positives and hard negatives), in first-seen order."""
    passages: dict[str, int] = {}
    for text in pairs.positives + (pairs.negatives or []):
        passages.setdefault(text, len(passages))
    relevant: dict[str, set[int]] = {}
    for q, p in zip(pairs.queries, pairs.positives):
        relevant.setdefault(q, set()).add(passages[p])
    return Corpus(list(relevant), list(passages), list(relevant.values()))


QUERY_BLOCK = 512  # queries scored at a time: a (512, P) block instead of the whole (Q, P) matrix


def rank_scores(score_block, corpus: Corpus) -> tuple[list[list[int]], list[int]]:
    """(ranks of each query's relevant passages, each query's top passage); score_block(start, stop) gives
    the (stop - start, P) scores of those queries."""
    ranks, top = [], []
    for start in range(0, len(corpus.queries), QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, len(corpus.queries))
        scores = score_block(start, stop)
        ranks += ranks_from_scores(scores, corpus.relevant[start:stop])
        top += [int(i) for i in scores.argmax(1)]
    return ranks, top


def dense_ranking(model, tokenizer, corpus: Corpus, *, max_length: int, pooling: str, batch_size: int,
                  device) -> tuple[dict, list[int]]:
    """(metrics, top passage per query) of an encoder on `corpus`: exact search by cosine similarity."""
    from tunelab.retrieval.embed import embed_texts

    kw = dict(max_length=max_length, pooling=pooling, batch_size=batch_size, device=device, desc=None)
    q = embed_texts(model, tokenizer, corpus.queries, **kw)  # (Q, H) unit vectors
    p = embed_texts(model, tokenizer, corpus.passages, **kw)  # (P, H)
    ranks, top = rank_scores(lambda a, b: q[a:b] @ p.T, corpus)
    return _metrics(ranks, corpus), top


def bm25_ranking(corpus: Corpus) -> tuple[dict, list[int]]:
    """(metrics, top passage per query) of BM25 (tunelab.retrieval.bm25) on `corpus`."""
    from tunelab.retrieval.bm25 import BM25Index

    index = BM25Index(corpus.passages)
    ranks, top = rank_scores(lambda a, b: index.scores(corpus.queries[a:b]), corpus)
    return _metrics(ranks, corpus), top


def _metrics(ranks: list[list[int]], corpus: Corpus) -> dict:
    metrics = retrieval_metrics(ranks, [len(r) for r in corpus.relevant])
    metrics["passages"] = len(corpus.passages)
    return metrics


def evaluate_encoder(model, tokenizer, pairs: Pairs, *, max_length: int, pooling: str = "mean",
                     batch_size: int = 64, device="cpu") -> dict:
    """recall@1/5/10, mrr@10, n (queries) and passages of an encoder on labelled pairs (exact search).

    The bench calls this with any AutoModel + tokenizer (a run's: `tunelab.runs.load_run(RUN).model`)."""
    return dense_ranking(model, tokenizer, corpus_of(pairs), max_length=max_length, pooling=pooling,
                         batch_size=batch_size, device=device)[0]


def evaluate_bm25(pairs: Pairs) -> dict:
    """The same metrics for BM25 on the same pairs."""
    return bm25_ranking(corpus_of(pairs))[0]


# ---------------------------------------------------------------------------------------------
# The model: a plain encoder


def load_pretrained_encoder(model_cfg):
    """(fp32 transformers AutoModel, tokenizer) of model.name: builtin:NAME, a folder (an encoder, or a
    classification run's model/: its body is taken)."""
    from transformers import AutoModel

    from tunelab.models.load import _config, load_tokenizer
    from tunelab.models.registry import resolve_model

    path = resolve_model(model_cfg.name)
    config = _config(path, model_cfg.dropout)
    model = AutoModel.from_pretrained(str(path), config=config, dtype=torch.float32)
    return model, load_tokenizer(path)


def freeze_pooler(model) -> int:
    """Keep a BERT-style `pooler` (a layer on [CLS] that mean / cls pooling never read) out of training: its
    gradient would always be None. Returns how many parameters were frozen."""
    count = 0
    for name, p in model.named_parameters():
        if name.startswith("pooler.") or ".pooler." in name:
            count += p.numel() if p.requires_grad else 0
            p.requires_grad = False
    return count


# ---------------------------------------------------------------------------------------------
# The job: what `tunelab train` runs for `task: retrieval`


class RetrievalJob:
    default_metric = "mrr@10"
    metric_names = METRICS

    def __init__(self, cfg, device: torch.device, log):
        self.cfg, self.device, self.log = cfg, device, log
        self.eval_batch_size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        self.before: dict = {}  # "base" / "bm25" -> (metrics, top passage per query) on the test split
        self.after_top: list[int] = []

    def prepare(self) -> None:
        from tunelab.data.prepare import prepare_splits
        from tunelab.data.tokens import pad_id_of
        from tunelab.methods import apply_method, options_of
        from tunelab.methods.common import count_parameters
        from tunelab.models.load import check_max_length

        cfg = self.cfg
        prepared = prepare_splits(read_splits(cfg, self.log), data_view(cfg), cfg, self.log)
        self.data_summary = prepared.summary
        splits = {name: read_pairs(records, source, cfg.data) for name, (records, source) in prepared.items()}
        model, self.tokenizer = load_pretrained_encoder(cfg.model)
        check_max_length(cfg.model.max_length, model, cfg.model.name)
        self.pad_id = pad_id_of(self.tokenizer)
        self.data = {name: PairSet(self.tokenizer, pairs, cfg.model.max_length) for name, pairs in splits.items()}
        for name, data in self.data.items():
            self.log(f"{name}: {data.describe(cfg.model.max_length)}")
        if len(self.data.get("test", ())):
            self._measure_before(model.to(self.device))
        m = cfg.method
        self.model = apply_method(m.name, model, set(), task_type="FEATURE_EXTRACTION",
                                  **options_of(m)).to(self.device)
        frozen = freeze_pooler(self.model)
        trainable, total = count_parameters(self.model)
        note = f"; the pooler ({frozen:,}) stays frozen: {cfg.retrieval.pooling} pooling does not read it" \
            if frozen else ""
        self.log(f"method {m.name}: {trainable:,} trainable of {total:,} parameters "
                 f"({100 * trainable / total:.2f}%){note}")

    def _measure_before(self, model) -> None:
        """The untuned encoder and BM25 on the test split, before any training step."""
        self.corpus = corpus_of(self.data["test"].pairs)
        self.before["base"] = self._rank(model)
        self.before["bm25"] = bm25_ranking(self.corpus)
        for name in ("base", "bm25"):
            self.log(f"{'untuned model' if name == 'base' else 'BM25'} on test: "
                     f"{metrics_line(self.before[name][0])}")

    def _rank(self, model, corpus: Corpus | None = None) -> tuple[dict, list[int]]:
        return dense_ranking(model, self.tokenizer, corpus or self.corpus, max_length=self.cfg.model.max_length,
                             pooling=self.cfg.retrieval.pooling, batch_size=self.eval_batch_size,
                             device=self.device)

    # -- training ---------------------------------------------------------------------------

    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.data["train"]) / self.cfg.train.batch_size)

    def epoch_batches(self, epoch: int):
        """The same batches in the same order for an epoch every time (seeded by train.seed + epoch)."""
        from tunelab.data.batching import training_batches

        data = self.data["train"]
        for idx in training_batches(data.lengths(), self.cfg.train.batch_size, self.cfg.train.seed + epoch,
                                    self.cfg.train.group_by_length):
            yield data.batch(idx, self.pad_id)

    def loss(self, model, batch):
        return batch_loss(model, batch, self.cfg.retrieval.pooling, self.cfg.retrieval.temperature)

    # -- evaluation -------------------------------------------------------------------------

    def validate(self, model) -> dict | None:
        data = self.data.get("validation")
        if data is None or len(data) == 0:
            return None
        return self._rank(model, corpus_of(data.pairs))[0]

    def test(self) -> dict:
        if not len(self.data.get("test", ())):
            return {}
        metrics, self.after_top = self._rank(self.model)
        return metrics

    def save(self, model_dir: Path, run_dir: Path) -> None:
        from tunelab.io import atomic_write_json
        from tunelab.models.build import save_model

        save_model(self.model, self.tokenizer, model_dir, run_dir, self.cfg, None)
        atomic_write_json(model_dir / META_FILE, {"pooling": self.cfg.retrieval.pooling, "normalized": True,
                                                  "max_length": self.cfg.model.max_length})

    def finish(self, run_dir: Path) -> dict:
        """eval.json beside `test`: the untuned model (`base`) and BM25 (`bm25`) on the same test split, and a
        few test queries with their top passage before and after training (`examples`)."""
        if not self.before:
            return {}
        return {"base": self.before["base"][0], "bm25": self.before["bm25"][0], "examples": self._examples()}

    def _examples(self) -> list[dict]:
        """Up to REPORT_EXAMPLES test queries, first those that training changed (found <-> missed at rank 1)."""
        c, base_top, bm25_top = self.corpus, self.before["base"][1], self.before["bm25"][1]
        changed = [(base_top[i] in c.relevant[i]) != (self.after_top[i] in c.relevant[i])
                   for i in range(len(c.queries))]
        out = []
        for i in sorted(range(len(c.queries)), key=lambda i: not changed[i])[:REPORT_EXAMPLES]:
            gold = min(c.relevant[i])
            out.append({"query": c.queries[i], "positive": _clip(c.passages[gold]),
                        **{f"top_{name}": _clip(c.passages[top[i]]) for name, top in
                           (("bm25", bm25_top), ("base", base_top), ("tuned", self.after_top))},
                        **{f"{name}_correct": top[i] in c.relevant[i] for name, top in
                           (("bm25", bm25_top), ("base", base_top), ("tuned", self.after_top))}})
        return out

    def report_sections(self, test_metrics: dict) -> list[tuple[str, str]]:
        if not test_metrics or not self.before:
            return []
        rows = [("BM25", self.before["bm25"][0]), ("untuned model", self.before["base"][0]),
                ("fine-tuned", test_metrics)]
        return [("Retrieval on the test split: BM25, untuned and fine-tuned", comparison_table(rows)),
                ("Example test queries: the top passage", examples_table(self._examples()))]

    def summary(self, m: dict) -> str:
        if not m:
            return "no test split (data.test_fraction is 0 and no data.test file)"
        base, bm25 = self.before["base"][0], self.before["bm25"][0]
        return (f"test: {metrics_line(m)}; untuned mrr@10 {base['mrr@10']:.4f}, BM25 mrr@10 "
                f"{bm25['mrr@10']:.4f}")


def _clip(text: str) -> str:
    return text if len(text) <= CLIP else text[:CLIP] + " ..."


def comparison_table(rows: list[tuple[str, dict]]) -> str:
    """HTML table: one row per system, the retrieval metrics side by side."""
    head = "".join(f"<th>{k}</th>" for k in METRIC_KEYS)
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{m[k]:.4f}</td>" for k in METRIC_KEYS)
                   + "</tr>" for name, m in rows)
    n = rows[-1][1]
    return (f"<p>{n['n']} queries ranked against all {n['passages']} passages of the split (exact search)</p>"
            f"<table><tr><th>system</th>{head}</tr>{body}</table>")


def examples_table(examples: list[dict]) -> str:
    """HTML table of example queries, their passage, and the top passage of each system (marked right/wrong)."""
    def cell(text: str, ok: bool | None = None) -> str:
        mark = "" if ok is None else ("&#10003; " if ok else "&#10007; ")
        return f"<td style='white-space:pre-wrap;vertical-align:top'>{mark}{html.escape(text)}</td>"

    rows = "".join("<tr>" + cell(e["query"]) + cell(e["positive"])
                   + "".join(cell(e[f"top_{s}"], e[f"{s}_correct"]) for s in ("bm25", "base", "tuned")) + "</tr>"
                   for e in examples)
    return ("<table><tr><th>query</th><th>its passage</th><th>BM25 top</th><th>untuned top</th>"
            f"<th>fine-tuned top</th></tr>{rows}</table>")


def metrics_line(m: dict) -> str:
    """recall@1/5/10 and mrr@10, with the counts (`tunelab eval` adds the untuned model and BM25)."""
    line = "  ".join(f"{k} {m[k]:.4f}" for k in METRIC_KEYS) + f"  (n={m['n']}, {m['passages']} passages)"
    for name, label in (("base", "untuned"), ("bm25", "BM25")):
        if name in m:
            line += f"; {label}: " + "  ".join(f"{k} {m[name][k]:.4f}" for k in METRIC_KEYS)
    return line


# ---------------------------------------------------------------------------------------------
# A finished retrieval run: load it, evaluate it, embed with it


def load_model(run_dir: Path, cfg) -> tuple:
    """(encoder in eval mode, tokenizer, {"pooling", "max_length"}) of a retrieval run's RUN_DIR/model: a
    transformers AutoModel folder, a LoRA adapter on RUN_DIR/base, or a compressed model (tunelab.compress)."""
    import json

    from transformers import AutoModel, AutoTokenizer

    from tunelab.compress.store import is_compressed, load_compressed
    from tunelab.runs import load_adapter

    model_dir = Path(run_dir) / "model"
    meta_path = model_dir / META_FILE
    meta = (json.loads(meta_path.read_text()) if meta_path.is_file()
            else {"pooling": cfg.retrieval.pooling, "max_length": cfg.model.max_length})
    if is_compressed(model_dir):
        model, _ = load_compressed(model_dir)
    elif (model_dir / "adapter_config.json").exists():
        model = load_adapter(model_dir, AutoModel)
    else:
        model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir)), {"pooling": meta["pooling"],
                                                                   "max_length": meta["max_length"]}


def evaluate(run, records: list[dict] | None, source: str, log) -> dict:
    """Metrics of a run on labelled pairs (None: its own test split), with the untuned model (`base`, when
    model.name still loads) and BM25 (`bm25`) on the same pairs."""
    from tunelab.data.prepare import held_out_as_trained

    cfg = run.cfg
    if records is None:
        test, source = split_records(cfg.data, cfg.train.seed, lambda _: None).get("test", ([], ""))
        if not test:
            raise TunelabError(f"{run.dir} has no test split (data.test_fraction is 0 and no data.test file); "
                               "pass --data FILE with query/positive records to evaluate on")
        pairs = read_pairs(held_out_as_trained(test, data_view(cfg), cfg), source, cfg.data)
    else:
        pairs = read_pairs(records, source, cfg.data)
    kw = dict(max_length=run.meta["max_length"], pooling=run.meta["pooling"])
    metrics = evaluate_encoder(run.model, run.tokenizer, pairs, **kw)
    try:
        base, tokenizer = load_pretrained_encoder(cfg.model)
    except (OSError, TunelabError) as e:
        log(f"the untuned model {cfg.model.name} does not load here ({str(e).splitlines()[0]}); no `base` metrics")
    else:
        metrics["base"] = evaluate_encoder(base, tokenizer, pairs, **kw)
    metrics["bm25"] = evaluate_bm25(pairs)
    return metrics


def embed(run, texts: list[str]) -> np.ndarray:
    """(N, H) unit vectors of `texts` with a loaded run (tunelab.runs.load_run), as its training embedded them."""
    from tunelab.models.device import model_device
    from tunelab.retrieval.embed import embed_texts

    return embed_texts(run.model, run.tokenizer, texts, max_length=run.meta["max_length"],
                       pooling=run.meta["pooling"], device=model_device(run.model), desc=None)


def predict(run, records: list[dict], source: str, log) -> list[dict]:
    """Each record plus `embedding` (a list of floats: the unit vector of its data.query_field text)."""
    texts = field_texts(records, run.cfg.data.query_field, "data.query_field", source)
    vectors = embed(run, texts)
    out = []
    for rec, vec in zip(records, vectors):
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        clean["embedding"] = vec.tolist()
        out.append(clean)
    return out


def text_records(texts: list[str], run) -> list[dict]:
    """`predict --text` inputs as records: the text in data.query_field."""
    return [{run.cfg.data.query_field: t} for t in texts]


def check_config(cfg) -> list[str]:
    """Problems beyond the schema: the model must be a Hugging Face encoder folder or builtin model;
    data.redact_pii / data.augment where the texts cannot be rewritten."""
    from tunelab.data.prepare import rewrite_problems
    from tunelab.models.scratch import is_scratch_dir

    name, problems = cfg.model.name, rewrite_problems(cfg, data_view(cfg))
    if name.startswith(("scratch:", "gguf:")) or is_scratch_dir(name):
        problems.insert(0, f"model.name: {name!r}: retrieval fine-tunes a pretrained Hugging Face encoder "
                           "(transformers AutoModel); use builtin:minilm-l6 or a model folder")
    return problems


def check_records(records: list[dict], source: str, data_cfg) -> None:
    """`tunelab validate`: the first records hold a query, a positive and (when set) a negative text."""
    read_pairs(records, source, data_cfg)


def _register() -> None:
    from tunelab.tasks import TASKS
    from tunelab.tasks.base import Task

    TASKS.register("retrieval", Task(
        name="retrieval", summary="a query/passage encoder for dense retrieval (in-batch negatives, InfoNCE)",
        job=RetrievalJob, metrics=METRICS, methods=("full", "freeze", "lora"),
        load=load_model, evaluate=evaluate, predict=predict, metrics_line=metrics_line, outputs="embeddings",
        settings=("data.query_field", "data.positive_field", "data.negative_field"),
        refused_settings={"data.label_field": "a retrieval run has no labels; its pairs are data.query_field / "
                                              "data.positive_field",
                          "data.text_field": "a retrieval run reads data.query_field (predict embeds it)",
                          "generate.": "generate.* applies to causal_lm runs; {run} is a retrieval run"},
        text_records=text_records, check_config=check_config, check_records=check_records,
        api=("embeddings",), splits=read_splits, data_view=data_view),
        options=("data.query_field", "data.positive_field", "data.negative_field", "retrieval.temperature",
                 "retrieval.pooling"))


_register()
