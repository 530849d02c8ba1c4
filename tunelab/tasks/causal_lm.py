"""Causal language modelling (instruction tuning, chat, continued pretraining): data, loss, evaluation.

Records are encoded by `tunelab.data.encoding` into token ids and next-token targets (IGNORE_INDEX where
no loss is taken: prompts, padding). The loss runs the decoder for hidden states, keeps only the positions
that carry a target and applies the vocabulary projection to those alone: with SmolLM2's 49,152-token
vocabulary the full (B, T, V) logits of a batch would cost more memory and time than the rest of the step.

With `data.packing`, examples are packed into rows of up to `model.max_length` tokens; positions restart
at 0 per example and no 2-D attention mask is passed, so transformers builds a block-diagonal causal mask:
every example sees only itself, and its loss equals the unpacked one.
"""
from __future__ import annotations

import html
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from tunelab.data.batching import padded_batch
from tunelab.data.chat_template import prompt_and_reference
from tunelab.data.encoding import EncodedSet, encode_records
from tunelab.data.formats import detect_format
from tunelab.data.packing import pack, packed_batch
from tunelab.data.tokens import IGNORE_INDEX, ensure_pad_token
from tunelab.errors import DataError, TunelabError
from tunelab.train.linear_ce import linear_cross_entropy

METRICS = ("loss", "perplexity")
DATA_INFO = "data_format.json"
REPORT_SAMPLES = 6


# ---------------------------------------------------------------------------------------------
# Loss on labelled positions only


def _unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers stay active inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def labelled_loss(model, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
                  ) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the positions with a target, and how many there are.

    No attention mask is passed: padding is on the right, so causal attention never lets a real token see
    it, and packed rows are told apart by their restarting position_ids.
    """
    base = _unwrap(model)
    hidden = base.get_decoder()(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                                use_cache=False).last_hidden_state  # (B, T, H)
    targets = batch["targets"]  # (B, T)
    keep = targets != IGNORE_INDEX
    head = base.get_output_embeddings()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap or not isinstance(head, torch.nn.Linear):
        logits = head(hidden[keep]).float()  # (N, V): only labelled positions
        if cap:  # Gemma-2 style soft-capping happens in the model's own forward; repeat it here
            logits = torch.tanh(logits / cap) * cap
        loss = F.cross_entropy(logits, targets[keep], reduction="sum", label_smoothing=label_smoothing)
    else:  # the same loss without materialising N x V logits
        loss = linear_cross_entropy(hidden[keep], head.weight, head.bias, targets[keep], label_smoothing)
    return loss, int(keep.sum())


@torch.no_grad()
def evaluate_loss(model, data: EncodedSet, batch_size: int, pad_id: int, device: torch.device) -> dict:
    """Mean loss per trained token and perplexity over a split (no label smoothing)."""
    from tunelab.data.batching import length_grouped_batches
    from tunelab.train.logging import progress

    model.eval()
    total, count = 0.0, 0
    lengths = [len(e.ids) for e in data.examples]
    for idx in progress(length_grouped_batches(lengths, batch_size, 0, shuffle=False), desc="evaluate loss",
                        unit="batches"):
        batch = padded_batch([data.examples[i] for i in idx], pad_id)
        loss, n = labelled_loss(model, {k: v.to(device) for k, v in batch.items()})
        total += float(loss)
        count += n
    mean = total / max(1, count)
    return {"loss": mean, "perplexity": math.exp(min(mean, 100.0)), "tokens": count}


@torch.no_grad()
def generation_eval(model, tokenizer, data: EncodedSet, *, gen_cfg, batch_size: int, device: torch.device,
                    log=None) -> tuple[dict, list[dict]]:
    """Generate answers for up to `gen_cfg.samples_in_eval` records with a reference; metrics + samples.

    Prompts are rendered whole from the records (not from the training-length encodings) and cut from the
    left only where prompt + `max_new_tokens` would exceed the model's context; `prompts_cut` counts them.
    """
    from tunelab.evaluate.text_metrics import generation_metrics
    from tunelab.generation import fit_prompts, generate_texts, model_context, prompt_budget, settings_kwargs

    context = model_context(_unwrap(model), tokenizer)
    budget = prompt_budget(context, gen_cfg.max_new_tokens)  # rag prompts: passages cut to fit it
    prompts, references, shown = [], [], []
    for norm in data.normalised:
        if len(prompts) >= gen_cfg.samples_in_eval:
            break
        ids, reference = prompt_and_reference(tokenizer, norm, data.fmt, budget)
        if reference is None:
            continue
        prompts.append(ids)
        references.append(reference)
        shown.append(norm.messages[-2]["content"] if norm.messages else norm.prompt)
    if not prompts:
        return {}, []
    prompts, cut = fit_prompts(prompts, context, gen_cfg.max_new_tokens)
    if cut and log is not None:
        log(f"generation: {cut} of {len(prompts)} prompts cut from the left to fit the model's context of "
            f"{context} tokens with generate.max_new_tokens {gen_cfg.max_new_tokens}")
    kwargs = settings_kwargs(tokenizer, _unwrap(model), gen_cfg)
    generated = generate_texts(model, tokenizer, prompts, kwargs, batch_size, device)
    samples = [{"prompt": p, "reference": r, "generated": g} for p, r, g in zip(shown, references, generated)]
    return {**generation_metrics(generated, references), "prompts_cut": cut}, samples


# ---------------------------------------------------------------------------------------------
# Splits


def split_records(d, seed: int, records: list[dict], log) -> dict[str, tuple[list[dict], str]]:
    """train / validation / test records: given files, or seeded random splits carved out of `records`.

    With `data.limit`, held-out splits carved from the same file shrink in proportion (a quick run stays
    quick: evaluating on 10% of 17k chats would cost more than the training).
    """
    from tunelab.data.sources import load_records

    from tunelab.data.splits import held_out, split_indices, subset_indices

    hold_out = held_out(d)
    if d.limit is not None:
        share = 1.0
        for name in hold_out:  # validation, then test: the same float arithmetic as ever
            share -= d.val_fraction if name == "validation" else d.test_fraction
        pool = subset_indices(len(records), min(len(records), math.ceil(d.limit / share)), seed)
        records = [records[i] for i in pool]
    parts = split_indices(len(records), d.val_fraction, d.test_fraction, seed, hold_out=hold_out)
    splits = {name: ([records[i] for i in idx], d.train if name == "train" else f"{d.train} ({name} split)")
              for name, idx in parts.items()}
    if d.limit is not None and len(splits["train"][0]) > d.limit:
        splits["train"] = (splits["train"][0][: d.limit], d.train)
    if d.limit is not None:
        log(f"data.limit: using {len(splits['train'][0])} training records")
    for name, given in (("validation", d.validation), ("test", d.test)):
        if given:
            splits[name] = (load_records(given, log), given)
    return splits


def read_splits(cfg, log) -> dict[str, tuple[list[dict], str]]:
    """Task.splits: data.train read and split as a run splits it (`split_records`)."""
    from tunelab.data.sources import load_records

    return split_records(cfg.data, cfg.train.seed, load_records(cfg.data.train, log), log)


# The text fields of each record format (a rag record's passages are strings or {id, text}).
PLAIN_FIELDS = {"alpaca": ("instruction", "input", "output"), "prompt_completion": ("prompt", "completion"),
                "rag": ("question", "answer")}
TURN_FIELDS = {"messages": ("messages", "role", "content"), "sharegpt": ("conversations", "from", "value")}
# What data.augment may edit in each format: what the model reads, never what it learns to write (assistant
# turns, output, completion, answer); a rag record's passages stay too, as the evidence its answer quotes.
INPUT_FIELDS = {"alpaca": ("instruction", "input"), "prompt_completion": ("prompt",), "rag": ("question",)}
INPUT_ROLE = "user"


def data_view(cfg, fmt: str | None = None):
    """Task.data_view: every text content of a record in its format (roles left out), and the turns of chat
    records; redaction rewrites every text, augmentation only the user's (INPUT_FIELDS, user turns), and
    text-format data, all of it target, is not augmented. `fmt` is the run's resolved format; without one,
    data.format, and for auto each record's fields (FORMAT_FIELDS; a record of no known format has no text
    here, and training names its problem)."""
    from tunelab.data.formats import FORMAT_FIELDS
    from tunelab.data.prepare import DataView

    d = cfg.data
    fixed = fmt or (d.format if d.format != "auto" else None)

    def format_of(record: dict) -> str | None:
        if fixed:
            return fixed
        found = next((f for f, keys in FORMAT_FIELDS if all(k in record for k in keys)), None)
        return found or ("text" if d.text_field in record else None)

    def texts(record: dict) -> list[str]:
        return [text for _, text in _contents(record, format_of(record), d.text_field)]

    def turns(record: dict) -> list[tuple[str, str]] | None:
        return _turns(record, format_of(record))

    def rewrite(record: dict, fn) -> dict:
        return _rewrite(record, format_of(record), d.text_field, fn)

    def augment(record: dict, fn) -> dict:
        return _rewrite(record, format_of(record), d.text_field, fn, inputs_only=True)

    if fixed == "text":
        return DataView(texts=texts, turns=turns, rewrite=rewrite, chunked=True,
                        no_augment="text-format records are all target (every token is one the model learns to "
                                   "write), so an edited copy would teach it the edits")
    return DataView(texts=texts, turns=turns, rewrite=rewrite, augment=augment)


def resolved_data_view(cfg):
    """Task.data_view: `data_view` with data.format auto resolved from data.train as a run resolves it
    (`resolve_format`), so `tunelab data check` judges the records as the check at train start does (text-format
    data is cut into blocks, so no record is too long). It reads data.train for that; `check_config` does not
    call it."""
    fmt = None
    if cfg.data.format == "auto":
        from tunelab.data.sources import load_records

        def quiet(_line: str) -> None:  # the splits the check reads next log what reading the file found
            pass

        d = cfg.data
        fmt = resolve_format("auto", load_records(d.train, quiet), d.train, quiet, d.text_field)
    return data_view(cfg, fmt)


def _contents(record: dict, fmt: str | None, text_field: str) -> list[tuple[str, str]]:
    """(where, text) of each text in a record: a field name, or a turn / passage number."""
    if fmt in TURN_FIELDS:
        key, _, text_key = TURN_FIELDS[fmt]
        turns = record.get(key) if isinstance(record.get(key), list) else []
        return [(str(j), t[text_key]) for j, t in enumerate(turns) if isinstance(t, dict) and
                isinstance(t.get(text_key), str)]
    fields = PLAIN_FIELDS.get(fmt, (text_field,) if fmt == "text" else ())
    out = [(name, record[name]) for name in fields if isinstance(record.get(name), str)]
    if fmt == "rag" and isinstance(record.get("passages"), list):
        for j, p in enumerate(record["passages"]):
            text = p.get("text") if isinstance(p, dict) else p
            if isinstance(text, str):
                out.append((f"passage {j}", text))
    return out


def _turns(record: dict, fmt: str | None) -> list[tuple[str, str]] | None:
    """(role, content) of a chat record's turns as training sees them; None for plain text formats."""
    from tunelab.data.formats import SHAREGPT_ROLES

    if fmt in TURN_FIELDS:
        key, role_key, text_key = TURN_FIELDS[fmt]
        turns = record.get(key) if isinstance(record.get(key), list) else []
        roles = SHAREGPT_ROLES if fmt == "sharegpt" else {}
        return [(roles.get(t.get(role_key), t.get(role_key)), t.get(text_key) if isinstance(t.get(text_key), str)
                 else "") for t in turns if isinstance(t, dict)]
    if fmt == "alpaca":
        user = "\n\n".join(record[k] for k in ("instruction", "input") if isinstance(record.get(k), str))
        answer = record.get("output")
        return [("user", user)] + ([("assistant", answer)] if isinstance(answer, str) else [])
    if fmt == "rag":
        answer = record.get("answer")
        return [("user", "\n".join(t for w, t in _contents(record, fmt, "") if w != "answer"))] + \
            ([("assistant", answer)] if isinstance(answer, str) else [])
    return None


def _rewrite(record: dict, fmt: str | None, text_field: str, fn, inputs_only: bool = False) -> dict:
    """A copy of `record` with fn applied to every text _contents finds (roles, ids and the rest kept), or with
    `inputs_only` to the user's texts alone: user turns and INPUT_FIELDS."""
    from tunelab.data.formats import SHAREGPT_ROLES

    out = dict(record)
    if fmt in TURN_FIELDS:
        key, role_key, text_key = TURN_FIELDS[fmt]
        roles = SHAREGPT_ROLES if fmt == "sharegpt" else {}

        def edited(turn) -> bool:
            return isinstance(turn, dict) and isinstance(turn.get(text_key), str) and (
                not inputs_only or roles.get(turn.get(role_key), turn.get(role_key)) == INPUT_ROLE)

        if isinstance(out.get(key), list):
            out[key] = [{**t, text_key: fn(t[text_key])} if edited(t) else t for t in out[key]]
        return out
    fields = PLAIN_FIELDS.get(fmt, (text_field,) if fmt == "text" else ())
    for name in INPUT_FIELDS.get(fmt, ()) if inputs_only else fields:
        if isinstance(out.get(name), str):
            out[name] = fn(out[name])
    if fmt == "rag" and not inputs_only and isinstance(out.get("passages"), list):
        out["passages"] = [{**p, "text": fn(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str)
                           else fn(p) if isinstance(p, str) else p for p in out["passages"]]
    return out


def check_config(cfg) -> list[str]:
    """Problems beyond the schema: data.redact_pii / data.augment where the texts cannot be rewritten."""
    from tunelab.data.prepare import rewrite_problems

    return rewrite_problems(cfg, data_view(cfg))


def resolve_format(fmt: str, records: list[dict], source: str, log, text_field: str = "text") -> str:
    if fmt != "auto":
        return fmt
    found = detect_format(records, source, text_field)
    log(f"data.format auto: records look like {found!r} (set data.format to override)")
    return found


# ---------------------------------------------------------------------------------------------
# The causal-LM job: what `tunelab train` runs for `task: causal_lm`


class CausalLMJob:
    default_metric = "loss"
    metric_names = METRICS

    def __init__(self, cfg, device: torch.device, log):
        self.cfg, self.device, self.log = cfg, device, log
        self.eval_batch_size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        self.samples: list[dict] = []

    def prepare(self) -> None:
        from tunelab.data.prepare import prepare_splits
        from tunelab.data.sources import load_records
        from tunelab.methods import apply_method, options_of
        from tunelab.methods.common import count_parameters
        from tunelab.models.build import load_causal_lm_and_tokenizer
        from tunelab.models.load import check_max_length

        cfg, d = self.cfg, self.cfg.data
        records = load_records(d.train, self.log)
        self.fmt = resolve_format(d.format, records, d.train, self.log, d.text_field)
        splits = prepare_splits(split_records(d, cfg.train.seed, records, self.log), data_view(cfg, self.fmt), cfg,
                                self.log)
        self.data_summary = splits.summary
        model, self.tokenizer = load_causal_lm_and_tokenizer(cfg.model.name, cfg.model.dropout)
        check_max_length(cfg.model.max_length, model, cfg.model.name)
        if cfg.generate.samples_in_eval > 0:  # before training: the test-split generation needs room for a prompt
            from tunelab.generation import model_context, prompt_budget

            prompt_budget(model_context(model, self.tokenizer), cfg.generate.max_new_tokens)
        self.pad_id = self.tokenizer.pad_token_id
        self.data = self._encode_splits(splits)
        for name, data in self.data.items():
            self.log(f"{name}: {data.describe(cfg.model.max_length)}")
        if not self.data["train"].examples:
            raise DataError(d.train, "no training example has a trained token; raise model.max_length")
        self.rows = None
        if d.packing:
            train = self.data["train"].examples
            self.rows = pack([len(e.ids) for e in train], cfg.model.max_length)
            fill = sum(len(e.ids) for e in train) / (len(self.rows) * cfg.model.max_length)
            self.log(f"packing: {len(train)} examples in {len(self.rows)} rows of up to "
                     f"{cfg.model.max_length} tokens ({100 * fill:.0f}% full)")
        m = cfg.method
        self.model = apply_method(m.name, model, set(), task_type="CAUSAL_LM", **options_of(m)).to(self.device)
        trainable, total = count_parameters(self.model)
        self.log(f"method {m.name}: {trainable:,} trainable of {total:,} parameters "
                 f"({100 * trainable / total:.2f}%)")

    def _encode_splits(self, splits: dict[str, tuple[list[dict], str]]) -> dict[str, EncodedSet]:
        from tunelab.data.splits import split_indices

        cfg, d = self.cfg, self.cfg.data

        def encode(recs: list[dict], source: str) -> EncodedSet:
            return encode_records(self.tokenizer, recs, self.fmt, max_length=cfg.model.max_length,
                                  train_on_prompt=d.train_on_prompt, source=source, text_field=d.text_field)

        empty = [name for name in ("validation", "test") if name in splits and not splits[name][0]]
        if self.fmt != "text" or not empty:
            return {name: encode(recs, src) for name, (recs, src) in splits.items()}
        # A corpus of too few documents to hold any out (e.g. one .txt file): split its chunks instead.
        whole = encode(splits["train"][0], d.train)
        parts = split_indices(len(whole), d.val_fraction, d.test_fraction, cfg.train.seed, hold_out=empty)
        self.log(f"too few documents to hold some out: splitting {len(whole)} chunks instead")
        out = {name: encode(recs, src) for name, (recs, src) in splits.items() if name not in parts}
        for name, idx in parts.items():
            out[name] = whole.subset(idx, keep_counts=name == "train")
        return out

    # -- training ---------------------------------------------------------------------------

    def micro_batches_per_epoch(self) -> int:
        n = len(self.rows) if self.rows is not None else len(self.data["train"])
        return math.ceil(n / self.cfg.train.batch_size)

    def epoch_batches(self, epoch: int):
        from tunelab.data.batching import random_batches, training_batches

        bs, seed, examples = self.cfg.train.batch_size, self.cfg.train.seed + epoch, self.data["train"].examples
        if self.rows is not None:
            for idx in random_batches(len(self.rows), bs, seed):
                yield packed_batch([[examples[i] for i in self.rows[r]] for r in idx], self.pad_id)
            return
        for idx in training_batches([len(e.ids) for e in examples], bs, seed, self.cfg.train.group_by_length):
            yield padded_batch([examples[i] for i in idx], self.pad_id)

    def loss(self, model, batch):
        return labelled_loss(model, batch, self.cfg.train.label_smoothing)

    # -- evaluation -------------------------------------------------------------------------

    def validate(self, model) -> dict | None:
        data = self.data.get("validation")
        if data is None or len(data) == 0:
            return None
        return evaluate_loss(model, data, self.eval_batch_size, self.pad_id, self.device)

    def test(self) -> dict:
        data = self.data.get("test")
        if data is None or len(data) == 0:
            return {}
        metrics = evaluate_loss(self.model, data, self.eval_batch_size, self.pad_id, self.device)
        metrics["n"] = len(data)
        g = self.cfg.generate
        if g.samples_in_eval > 0:
            gen, self.samples = generation_eval(self.model, self.tokenizer, data, gen_cfg=g,
                                                batch_size=self.eval_batch_size, device=self.device,
                                                log=self.log)
            metrics.update(gen)
            metrics["samples"] = self.samples[:REPORT_SAMPLES]
        return metrics

    def save(self, model_dir: Path, run_dir: Path) -> None:
        from tunelab.io import atomic_write_json
        from tunelab.models.build import save_model

        save_model(self.model, self.tokenizer, model_dir, run_dir, self.cfg, None)
        # what `auto` resolved to, so predict / chat / eval render prompts the way training did
        atomic_write_json(run_dir / DATA_INFO,
                          {"format": self.fmt, "train_on_prompt": self.cfg.data.train_on_prompt})

    def finish(self, run_dir: Path) -> dict:
        """After testing: with `method.merge`, write RUN_DIR/merged and check it against the adapter."""
        from tunelab.models.build import is_peft, write_merged

        if not (self.cfg.method.merge and is_peft(self.model)):
            return {}
        data = self.data.get("test") or self.data["train"]
        sample = padded_batch(data.examples[:4], self.pad_id)
        inputs = {k: sample[k].to(self.device) for k in ("input_ids", "attention_mask")}
        diff = write_merged(self.model, self.tokenizer, run_dir / "merged", inputs)
        # run_dir is still the staging folder here: name the place the run will have
        self.log(f"merged model written to {Path(self.cfg.output_dir) / 'merged'}; "
                 f"max |logit difference| vs adapter: {diff:.2e}")
        return {"merge_max_abs_logit_diff": diff}

    def report_sections(self, test_metrics: dict) -> list[tuple[str, str]]:
        if not self.samples:
            return []
        return [("Sample generations (test)", samples_table(self.samples[:REPORT_SAMPLES]))]

    def summary(self, m: dict) -> str:
        if not m:
            return "no test split (data.test_fraction is 0 and no data.test file)"
        return "test: " + metrics_line(m)


def metrics_line(m: dict) -> str:
    """One line of test metrics; generation scores are all 0-1 (see tunelab.evaluate.text_metrics)."""
    parts = [f"loss {m['loss']:.4f}", f"perplexity {m['perplexity']:.2f}"]
    if "exact_match" in m:
        cut = f", {m['prompts_cut']} prompts cut to fit the context" if m.get("prompts_cut") else ""
        parts += [f"exact_match {m['exact_match']:.3f}",
                  f"exact_match_normalised {m['exact_match_normalised']:.3f}",
                  f"token_f1 (normalised) {m['token_f1']:.3f}", f"rouge_l {m['rouge_l']:.3f}",
                  f"chrf {m['chrf']:.3f} ({m['generated']} generated{cut})"]
    return "  ".join(parts) + (f"  (n={m['n']})" if "n" in m else "")


def samples_table(samples: list[dict], clip: int = 600) -> str:
    """HTML table of sample generations with each one's exact / normalised match and token F1 (0-1)."""
    from tunelab.evaluate.text_metrics import exact_match, exact_match_normalised, token_f1

    def cell(text: str) -> str:
        text = text if len(text) <= clip else text[:clip] + " ..."
        return f"<td style='white-space:pre-wrap;vertical-align:top'>{html.escape(text)}</td>"

    def scores(s: dict) -> str:
        ref, gen = s["reference"], s["generated"]
        return (cell("yes" if exact_match(gen, ref) else "no")
                + cell("yes" if exact_match_normalised(gen, ref) else "no") + cell(f"{token_f1(gen, ref):.3f}"))

    rows = "".join(f"<tr>{cell(s['prompt'])}{cell(s['reference'])}{cell(s['generated'])}{scores(s)}</tr>"
                   for s in samples)
    head = ("<tr><th>prompt</th><th>reference</th><th>generated</th><th>exact match</th>"
            "<th>normalised match</th><th>token F1 (normalised)</th></tr>")
    note = ("<p>exact match: equal strings (surrounding whitespace aside); normalised: lower-cased, punctuation "
            "and articles dropped (SQuAD).</p>")
    return f"{note}<table>{head}{rows}</table>"


# ---------------------------------------------------------------------------------------------
# `tunelab data preview`


def preview(cfg, n: int = 3, split: str = "train", color: bool = False, max_records: int = 2000) -> str:
    """What training will see: `n` rendered examples (trained tokens marked), counts, a length histogram.

    Loads only the tokenizer. Statistics cover up to `max_records` records of the split (a seeded sample).
    """
    from tunelab.data.preview import length_histogram, render_tokens
    from tunelab.data.sources import load_records
    from tunelab.models.load import load_tokenizer
    from tunelab.models.registry import resolve_model

    if cfg.task != "causal_lm":
        raise TunelabError(f"data preview shows causal_lm data (chat rendering and label masks); this config "
                           f"has task: {cfg.task}")
    d, lines = cfg.data, []
    records = load_records(d.train)
    fmt = resolve_format(d.format, records, d.train, lines.append, d.text_field)
    splits = split_records(d, cfg.train.seed, records, lines.append)
    if split not in splits:
        raise TunelabError(f"--split: no {split!r} split here; known: {', '.join(splits)}")
    recs, source = splits[split]
    sampled = len(recs) > max_records
    if sampled:
        recs = [recs[i] for i in sorted(random.Random(cfg.train.seed).sample(range(len(recs)), max_records))]
    tokenizer = load_tokenizer(resolve_model(cfg.model.name))
    data = encode_records(tokenizer, recs, fmt, max_length=cfg.model.max_length,
                          train_on_prompt=d.train_on_prompt, source=source, text_field=d.text_field)
    lines.append(f"{source}: format {fmt}, {len(splits[split][0])} {split} records"
                 + (f" (statistics from a sample of {max_records})" if sampled else ""))
    mark = "green" if color else "[[double brackets]]"
    lines.append(f"trained tokens are shown in {mark}; everything else is context only\n")
    for k, ex in enumerate(data.examples[:n]):
        rec = data.records[ex.record]
        at = rec.get("_file") or (f"line {rec['_line']}" if "_line" in rec else f"record {ex.record + 1}")
        lines.append(f"--- example {k + 1} ({at}): {len(ex.ids)} tokens, {ex.n_labels} trained ---")
        lines.append(render_tokens(tokenizer, ex, color))
    lengths = [len(e.ids) for e in data.examples]
    lines.append(f"\n{data.describe(cfg.model.max_length)}")
    if lengths:
        lines.append(f"tokens per example: min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, "
                     f"max {max(lengths)} (model.max_length {cfg.model.max_length})")
    lines.append(length_histogram(lengths, cfg.model.max_length))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# A finished causal_lm run: load it, evaluate it, predict with it, merge it, chat with it


def load_causal_model(model_dir: str | Path):
    """(model, tokenizer) from a saved causal LM folder: a peft adapter, a full/merged or a compressed model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.compress.store import is_compressed, load_compressed

    model_dir = Path(model_dir)
    if is_compressed(model_dir):
        model, tokenizer = load_compressed(model_dir)
        return model, ensure_pad_token(tokenizer)
    if (model_dir / "adapter_config.json").exists():
        from tunelab.runs import load_adapter

        model = load_adapter(model_dir, AutoModelForCausalLM)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(str(model_dir)))
    model.eval()
    return model, tokenizer


def load_model(run_dir: Path, cfg) -> tuple:
    """(model in eval mode, tokenizer, {"format": the data format training resolved}) of a causal_lm run."""
    import json

    info = json.loads((run_dir / DATA_INFO).read_text()) if (run_dir / DATA_INFO).exists() else {}
    model, tokenizer = load_causal_model(run_dir / "model")
    return model, tokenizer, {"format": info.get("format", cfg.data.format)}


def causal_prompts(tokenizer, records: list[dict], source: str, fmt: str, context: int | None,
                   max_new_tokens: int, text_field: str = "text"
                   ) -> tuple[list[list[int]], list[str | None], list, int]:
    """Prompt ids, references (None where a record has no answer), normalised records, and how many prompts
    were cut from the left to fit the model's `context` (see `generation.model_context`) with the answer.

    `fmt` "auto" detects the format from the first record's fields.
    """
    from tunelab.data.chat_template import require_chat_template
    from tunelab.data.formats import CHAT_FORMATS, normalise
    from tunelab.generation import fit_prompts, prompt_budget

    fmt = detect_format(records, source, text_field) if fmt == "auto" else fmt
    if fmt in CHAT_FORMATS:
        require_chat_template(tokenizer, fmt)
    budget = prompt_budget(context, max_new_tokens)  # rag prompts: passages cut to fit it
    prompts, refs, norms = [], [], []
    for i, rec in enumerate(records):
        norm = normalise(rec, fmt, i, source, need_answer=False, text_field=text_field)
        ids, ref = prompt_and_reference(tokenizer, norm, fmt, budget)
        prompts.append(ids)
        refs.append(ref)
        norms.append(norm)
    prompts, cut = fit_prompts(prompts, context, max_new_tokens)
    return prompts, refs, norms, cut


def text_records(texts: list[str], run) -> list[dict]:
    """`--text` inputs as records: a user turn for chat-trained runs, a plain prompt (continued) otherwise."""
    if run.meta["format"] in ("prompt_completion", "text"):
        return [{"prompt": t} for t in texts]
    return [{"messages": [{"role": "user", "content": t}]} for t in texts]


def predict(run, records: list[dict], source: str, log, batch_size: int = 8) -> list[dict]:
    """Each record plus `generated` (the model's answer), with the run's `generate:` settings.

    Prompts are cut only to fit the model's context (not the training `model.max_length`); `log` says how
    many were cut.
    """
    from tunelab.generation import generate_texts, model_context, settings_kwargs
    from tunelab.models.device import model_device

    cfg, model, tokenizer = run.cfg, run.model, run.tokenizer
    context = model_context(model, tokenizer)
    # detected from the inputs' own fields: they may be laid out differently from the training data
    prompts, _, _, cut = causal_prompts(tokenizer, records, source, "auto", context,
                                        cfg.generate.max_new_tokens, cfg.data.text_field)
    if cut:
        log(f"{cut} of {len(prompts)} prompts cut from the left to fit the model's context of {context} tokens "
            f"with generate.max_new_tokens {cfg.generate.max_new_tokens}")
    kwargs = settings_kwargs(tokenizer, model, cfg.generate)
    generated = generate_texts(model, tokenizer, prompts, kwargs, batch_size, model_device(model))
    out = []
    for rec, text in zip(records, generated):
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        clean["generated"] = text
        out.append(clean)
    return out


def evaluate(run, records: list[dict] | None, source: str, log) -> dict:
    """Loss, perplexity and generation metrics of a causal_lm run on `records` (None: its test split)."""
    from tunelab.data.prepare import held_out_as_trained
    from tunelab.data.sources import load_records

    cfg, model, tokenizer, fmt = run.cfg, run.model, run.tokenizer, run.meta["format"]
    name = "test" if records is None else Path(source).stem
    if records is None:
        records, source = split_records(cfg.data, cfg.train.seed, load_records(cfg.data.train),
                                        lambda _: None).get("test", ([], ""))
        if not records:
            raise TunelabError(f"{run.dir}: the run has no test split; pass --data FILE")
        if fmt == "auto":
            fmt = detect_format(records, source, cfg.data.text_field)
        records = held_out_as_trained(records, data_view(cfg, fmt), cfg)
    else:
        fmt = detect_format(records, source, cfg.data.text_field)
    encoded = encode_records(tokenizer, records, fmt, max_length=cfg.model.max_length,
                             train_on_prompt=cfg.data.train_on_prompt, source=source,
                             text_field=cfg.data.text_field)
    log(f"{name}: {encoded.describe(cfg.model.max_length)}")
    device = torch.device("cpu")
    metrics = evaluate_loss(model, encoded, 16, tokenizer.pad_token_id, device)
    metrics["n"] = len(encoded)
    if cfg.generate.samples_in_eval > 0:
        gen, samples = generation_eval(model, tokenizer, encoded, gen_cfg=cfg.generate, batch_size=8,
                                       device=device, log=log)
        metrics.update(gen)
        metrics["samples"] = samples
    return metrics


def merge_run(run_dir: str | Path, log=print) -> tuple[Path, float]:
    """Write RUN_DIR/merged (LoRA folded into the weights); returns it and max |logit diff| vs the adapter."""
    from tunelab.models.build import is_peft, write_merged
    from tunelab.runs import load_run
    from tunelab.train.logging import note

    note(f"merge: loading the run in {run_dir} ...")
    run = load_run(run_dir)
    if not is_peft(run.model):
        raise TunelabError(f"{run_dir}: the model is not a LoRA adapter (method {run.cfg.method.name}); "
                           "only method: lora runs can be merged")
    sample = padded_batch(_merge_sample(run.cfg, run.tokenizer, run.meta["format"]), run.tokenizer.pad_token_id)
    merged_dir = Path(run_dir) / "merged"
    diff = write_merged(run.model, run.tokenizer, merged_dir,
                        {k: sample[k] for k in ("input_ids", "attention_mask")})
    return merged_dir, diff


def _merge_sample(cfg, tokenizer, fmt: str) -> list:
    """Up to 4 encoded examples of the run's own data, or a fixed sentence when that cannot be read."""
    from tunelab.data.encoding import Encoded
    from tunelab.data.sources import load_records

    try:
        records = load_records(cfg.data.train)[:4]
        fmt = detect_format(records, cfg.data.train, cfg.data.text_field) if fmt == "auto" else fmt
        examples = encode_records(tokenizer, records, fmt, max_length=cfg.model.max_length,
                                  train_on_prompt=True, source=cfg.data.train,
                                  text_field=cfg.data.text_field).examples
        if examples:
            return examples
    except TunelabError:
        pass
    ids = tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    return [Encoded(ids, ids[1:] + [IGNORE_INDEX], 0)]


def chat_model(ref: str, overrides: list[str]):
    """(model, tokenizer, generate config, max_length) from a run directory or a model reference."""
    from tunelab.config import GenerateConfig, RunConfig, apply_overrides, config_from_dict

    bad = [o for o in overrides if not o.startswith("generate.")]
    if bad:
        raise TunelabError(f"chat: only generate.* settings can be overridden here, got {', '.join(bad)}")
    run_dir = Path(ref)
    if (run_dir / "config.yaml").is_file() and (run_dir / "model").is_dir():
        from tunelab.runs import load_run

        run = load_run(run_dir)
        cfg, model, tokenizer = run.cfg, run.model, run.tokenizer
    else:  # builtin:NAME, gguf:PATH or a model folder: chat with it as it is
        from tunelab.models.build import load_causal_lm_and_tokenizer

        cfg = RunConfig(task="causal_lm")
        model, tokenizer = load_causal_lm_and_tokenizer(ref)
        model.eval()
        cfg.model.max_length = 2048
    gen: GenerateConfig = config_from_dict(apply_overrides(cfg.to_dict(), overrides)).generate
    return model, tokenizer, gen, cfg.model.max_length


def check_records(records: list[dict], source: str, data_cfg) -> None:
    """`tunelab validate`: the records' format (data.format, or detected from the first record) and each
    record's fields."""
    from tunelab.data.formats import normalise

    fmt = data_cfg.format
    if fmt == "auto":
        fmt = detect_format(records, source, data_cfg.text_field)
    for i, rec in enumerate(records):
        normalise(rec, fmt, i, source, need_answer=True, text_field=data_cfg.text_field)


def _route(cfg) -> str | None:
    """A scratch GPT (scratch:gpt or a saved scratch folder) under task causal_lm is pretraining."""
    from tunelab.models.scratch import PREFIX, is_scratch_dir

    name = cfg.model.name
    return "pretrain" if name.startswith(PREFIX) or is_scratch_dir(name) else None


def _register() -> None:
    import dataclasses

    from tunelab.config import GenerateConfig
    from tunelab.tasks import TASKS
    from tunelab.tasks.base import Task

    TASKS.register("causal_lm", Task(
        name="causal_lm", summary="next-token prediction on instructions, chats or text (instruction tuning)",
        job=CausalLMJob, metrics=METRICS, methods=("full", "freeze", "lora", "distill"),
        load=load_model, evaluate=evaluate, predict=predict, metrics_line=metrics_line, outputs="generations",
        settings=("data.text_field", "generate."),
        refused_settings={"data.label_field": "a causal_lm run has no labels (its references come from the "
                                              "records' format); leave out --label-field"},
        text_records=text_records, check_records=check_records, route=_route, check_config=check_config,
        splits=read_splits, data_view=resolved_data_view,
        verbs={"merge": merge_run, "chat": chat_model}, api=("chat.completions", "completions", "answer")),
        options=("data.format", "data.train_on_prompt", "data.packing",
                 *(f"generate.{f.name}" for f in dataclasses.fields(GenerateConfig))))


_register()
