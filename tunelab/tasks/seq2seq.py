"""Text to text (translation, summarisation): source -> target pairs, two model families, BLEU / chrF / ROUGE-L.

Records are `{"source": str, "target": str}` pairs read by `tunelab.data.parallel.load_pairs` (data files,
two aligned text files, builtin:gettext). Two families train on them, chosen from model.name:

- an encoder-decoder (a Hugging Face seq2seq folder, MiniLM warm-started with model.architecture:
  encoder-decoder, or scratch:transformer-seq2seq; tunelab.models.seq2seq loads, trains and decodes them):
  batches are the source ids (B, S) with their attention_mask and `labels` (B, T) with -100 on padding;
- a causal LM (builtin:smollm2-135m-instruct, a causal folder): each pair becomes a prompt_completion record
  {"prompt": source + newline, "completion": target}, encoded by tunelab.data.encoding as causal_lm encodes
  it, so the loss is on the target tokens only.

Both are scored the same way: greedy or beam-search outputs on `generate.samples_in_eval` validation pairs
at each evaluation (early stopping on chrF by default) and on the test pairs at the end.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import torch

from tunelab.data.tokens import IGNORE_INDEX
from tunelab.errors import DataError, TunelabError

METRICS = ("chrf", "bleu", "rouge_l", "loss")
REPORT_SAMPLES = 8
FAMILY_FILE = "seq2seq.json"  # RUN_DIR/seq2seq.json: which family the run trained (how to load it)


def prompt_of(source: str) -> str:
    """The decoder-only prompt for a source text: the text, then a newline where the target starts."""
    return source + "\n"


# ---------------------------------------------------------------------------------------------
# Which family model.name is


def family_of(model_cfg) -> str:
    """"encoder-decoder" or "decoder" for the model model_cfg names; one error for anything else."""
    from tunelab.models.registry import resolve_model
    from tunelab.models.scratch import PREFIX, is_scratch_dir

    name = model_cfg.name
    if name in (f"{PREFIX}transformer-seq2seq", f"{PREFIX}seq2seq") or model_cfg.architecture == "encoder-decoder":
        return "encoder-decoder"
    if name == f"{PREFIX}gpt" or is_scratch_dir(name) and _scratch_kind(name) == "gpt":
        return "scratch-decoder"
    if name.startswith(PREFIX) or is_scratch_dir(name):
        raise TunelabError(f"model.name: {name!r}: seq2seq trains scratch:transformer-seq2seq (an "
                           "encoder-decoder from nothing) or scratch:gpt (decoder-only, fresh or a folder saved "
                           "by `tunelab pretrain`); use one of them, or a Hugging Face model")
    if name.startswith("gguf:"):
        return "decoder"
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(resolve_model(name)))
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if _is_causal(config):
        return "decoder"
    raise TunelabError(f"model.name: {name!r} is an encoder ({config.model_type}); set model.architecture: "
                       "encoder-decoder to warm-start an encoder-decoder from it")


def _scratch_kind(folder: str) -> str | None:
    """The kind recorded in a saved scratch model folder (scratch_config.json)."""
    import json

    from tunelab.models.scratch import CONFIG_NAME

    try:
        return json.loads((Path(folder).expanduser() / CONFIG_NAME).read_text()).get("kind")
    except (OSError, ValueError):
        return None


def _is_causal(config) -> bool:
    """A folder saved from a causal LM (its config names a ...ForCausalLM / ...LMHeadModel class)."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in getattr(config, "architectures", None) or [])


# ---------------------------------------------------------------------------------------------
# Data: pairs, splits, encoding


def load_split_pairs(d, seed: int, log) -> dict[str, tuple[list[dict], str]]:
    """train / validation / test pairs: given files, or seeded random splits carved out of data.train."""
    from tunelab.data.splits import held_out, split_indices

    def load(ref) -> list[dict]:
        return read_pairs(ref, d, log)

    pairs = load(d.train)
    name = _ref_name(d.train)
    parts = split_indices(len(pairs), d.val_fraction, d.test_fraction, seed, hold_out=held_out(d))
    splits = {part: ([pairs[i] for i in idx], name if part == "train" else f"{name} ({part} split)")
              for part, idx in parts.items()}
    if d.limit is not None and len(splits["train"][0]) > d.limit:
        splits["train"] = (splits["train"][0][: d.limit], name)
        log(f"data.limit: using {d.limit} training pairs")
    for part, given in (("validation", d.validation), ("test", d.test)):
        if given:
            splits[part] = (load(given), _ref_name(given))
    if not splits["train"][0]:
        raise DataError(name, "no training pairs (every pair was empty or dropped)")
    return splits


def read_splits(cfg, log) -> dict[str, tuple[list[dict], str]]:
    """Task.splits: the pairs of each split as a run reads them (`load_split_pairs`)."""
    return load_split_pairs(cfg.data, cfg.train.seed, log)


def data_view(cfg):
    """Task.data_view: a pair's texts are its source and its target (the reader names them so); redaction
    rewrites both, augmentation the source only (the target is what the model learns to write)."""
    from tunelab.data.prepare import DataView, rewrite_fields

    return DataView(texts=lambda r: [r["source"], r["target"]],
                    rewrite=lambda r, fn: rewrite_fields(r, ("source", "target"), fn),
                    augment=lambda r, fn: rewrite_fields(r, ("source",), fn))


def read_pairs(ref, d, log) -> list[dict]:
    """Pairs from one data reference with the data.* settings (tunelab.data.parallel.load_pairs)."""
    from tunelab.data.parallel import load_pairs

    return load_pairs(ref, source_field=d.source_field, target_field=d.target_field, language=d.language,
                      direction=d.direction, max_placeholder_share=d.max_placeholder_share,
                      max_chars=d.max_chars, log=log)


def _ref_name(ref) -> str:
    """A data reference as one string for messages: a path, builtin:NAME, or 'SOURCE + TARGET'."""
    return f"{ref['source']} + {ref['target']}" if isinstance(ref, dict) else str(ref)


SPELL_SAMPLE, SPELL_SHARE = 200, 0.1  # targets checked; share that may come back changed before warning


def spelling_warning(tokenizer, targets: list[str], name: str, seed: int = 0) -> str | None:
    """One warning line when the tokenizer cannot write the targets back (None when it can).

    A sample of targets goes through encode -> decode; case and whitespace are ignored (an uncased model
    writes lowercase, and decoders re-space punctuation). MiniLM's tokenizer strips accents, so about half
    of German/French/Spanish software messages come back changed ('Größe' -> 'große' is fine, 'Binärmodus'
    -> 'binarmodus' is not) against under 2% of the English ones: the model cannot learn to write them.
    """
    import random

    def norm(text: str) -> str:
        return "".join(text.casefold().split())

    sample = random.Random(seed).sample(targets, min(SPELL_SAMPLE, len(targets)))
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"] if sample else []
    back = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    lost = [(t, b) for t, b in zip(sample, back) if norm(t) != norm(b)]
    if not sample or len(lost) <= SPELL_SHARE * len(sample):
        return None
    target, got = min(lost, key=lambda tb: len(tb[0]))
    return (f"warning: the tokenizer of {name} cannot write {len(lost)} of {len(sample)} sampled targets back "
            f"(e.g. {target!r} comes back as {got!r}), so the model cannot learn to output them; translate "
            "into a language it spells (MiniLM: English, data.direction: to_english) or use "
            "scratch:transformer-seq2seq with a tokenizer trained on both sides of the data")


class PairSet:
    """One split of an encoder-decoder run: source ids, label ids, the pairs, and what truncation did."""

    def __init__(self, model, tokenizer, pairs: list[dict], source: str, max_length: int, max_target_length: int):
        from tunelab.models.seq2seq import encode_targets

        sources, targets = [p["source"] for p in pairs], [p["target"] for p in pairs]
        self.sources = tokenizer(sources, truncation=True, max_length=max_length)["input_ids"] if pairs else []
        full = tokenizer(sources)["input_ids"] if pairs else []
        self.source_cut = sum(len(a) < len(b) for a, b in zip(self.sources, full))
        # labels: the target's tokens then EOS (tunelab.models.seq2seq); cut ones still end in EOS
        self.labels = encode_targets(model, tokenizer, targets, max_target_length) if pairs else []
        plain = tokenizer(targets, add_special_tokens=False)["input_ids"] if pairs else []
        self.target_cut = sum(len(p) + 1 > max_target_length for p in plain)
        self.pairs, self.source = pairs, source

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, max_length: int, max_target_length: int) -> str:
        tokens = sum(map(len, self.sources)) + sum(map(len, self.labels))
        notes = [f"{self.source_cut} sources truncated at {max_length} tokens"] if self.source_cut else []
        if self.target_cut:
            notes.append(f"{self.target_cut} targets truncated at {max_target_length} tokens")
        return f"{len(self)} pairs, {tokens} tokens" + (f"; {'; '.join(notes)}" if notes else "")

    def batch(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask (B, S), labels (B, T) with IGNORE_INDEX on padding, and
        decoder_attention_mask (B, T): the target tokens, which the loop counts as trained tokens too."""
        from tunelab.data.batching import pad_batch

        out = pad_batch([self.sources[i] for i in idx], pad_id)
        out["labels"] = pad_batch([self.labels[i] for i in idx], IGNORE_INDEX)["input_ids"]
        out["decoder_attention_mask"] = (out["labels"] != IGNORE_INDEX).long()
        return out


# ---------------------------------------------------------------------------------------------
# The two families behind one interface: load, encode, batch, loss, generate, save


class EncoderDecoder:
    """Hugging Face encoder-decoders, warm-started ones and the scratch Transformer (tunelab.models.seq2seq)."""

    name = "encoder-decoder"
    task_type = "SEQ_2_SEQ_LM"

    def load(self, model_cfg, log):
        from tunelab.models.seq2seq import load_seq2seq

        return load_seq2seq(model_cfg, log)

    def encode(self, tokenizer, model, pairs: list[dict], source: str, max_length: int,
               max_target_length: int) -> PairSet:
        return PairSet(model, tokenizer, pairs, source, max_length, max_target_length)

    def lengths(self, data: PairSet) -> list[int]:
        return [len(s) + len(t) for s, t in zip(data.sources, data.labels)]

    def batch(self, data: PairSet, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return data.batch(idx, pad_id)

    def loss(self, model, batch):
        from tunelab.models.seq2seq import seq2seq_loss

        return seq2seq_loss(model, batch)

    @torch.no_grad()
    def generate(self, model, tokenizer, sources: list[str], gen_cfg, max_length: int, batch_size: int,
                 device) -> list[str]:
        from tunelab.data.batching import pad_batch
        from tunelab.data.tokens import pad_id_of
        from tunelab.models.seq2seq import seq2seq_generate

        model.eval()
        ids = tokenizer(sources, truncation=True, max_length=max_length)["input_ids"]
        out: list[str] = [""] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            b = pad_batch([ids[i] for i in idx], pad_id_of(tokenizer))
            rows = seq2seq_generate(model, tokenizer, b["input_ids"].to(device), b["attention_mask"].to(device),
                                    max_new_tokens=gen_cfg.max_new_tokens, num_beams=gen_cfg.num_beams,
                                    length_penalty=gen_cfg.length_penalty,
                                    no_repeat_ngram_size=gen_cfg.no_repeat_ngram_size)
            for i, row in zip(idx, rows):
                out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        return out

    def save(self, model, tokenizer, model_dir: Path, run_dir: Path, cfg) -> None:
        from tunelab.models.build import is_peft, save_model
        from tunelab.models.seq2seq import save_seq2seq

        if is_peft(model):
            save_model(model, tokenizer, model_dir, run_dir, cfg, None)
        else:
            save_seq2seq(model, tokenizer, model_dir)

    def load_saved(self, model_dir: Path):
        if (model_dir / "adapter_config.json").exists():
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            from tunelab.runs import load_adapter

            return load_adapter(model_dir, AutoModelForSeq2SeqLM), AutoTokenizer.from_pretrained(str(model_dir))
        from tunelab.models.seq2seq import load_saved_seq2seq

        return load_saved_seq2seq(model_dir)


class DecoderOnly:
    """A causal LM on source -> target prompts, with causal_lm's encoding, loss and generation."""

    name = "decoder"
    task_type = "CAUSAL_LM"

    def load(self, model_cfg, log):
        from tunelab.models.build import load_causal_lm_and_tokenizer

        return load_causal_lm_and_tokenizer(model_cfg.name, model_cfg.dropout)

    def encode(self, tokenizer, model, pairs: list[dict], source: str, max_length: int, max_target_length: int):
        from tunelab.data.encoding import encode_records

        records = [{"prompt": prompt_of(p["source"]), "completion": p["target"]} for p in pairs]
        data = encode_records(tokenizer, records, "prompt_completion", max_length=max_length,
                              train_on_prompt=False, source=source)
        data.pairs = pairs
        return data

    def lengths(self, data) -> list[int]:
        return [len(e.ids) for e in data.examples]

    def batch(self, data, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        from tunelab.data.batching import padded_batch

        return padded_batch([data.examples[i] for i in idx], pad_id)

    def loss(self, model, batch):
        from tunelab.tasks.causal_lm import labelled_loss

        return labelled_loss(model, batch)

    @torch.no_grad()
    def generate(self, model, tokenizer, sources: list[str], gen_cfg, max_length: int, batch_size: int,
                 device) -> list[str]:
        from tunelab.generation import fit_prompts, generate_texts, model_context, settings_kwargs
        from tunelab.tasks.causal_lm import _unwrap

        prompts = [tokenizer(prompt_of(s), add_special_tokens=True)["input_ids"] for s in sources]
        prompts, _ = fit_prompts(prompts, model_context(_unwrap(model), tokenizer), gen_cfg.max_new_tokens)
        kwargs = settings_kwargs(tokenizer, _unwrap(model), gen_cfg)
        kwargs.update(num_beams=gen_cfg.num_beams, length_penalty=gen_cfg.length_penalty,
                      no_repeat_ngram_size=gen_cfg.no_repeat_ngram_size)
        return [t.split("\n")[0].strip() for t in generate_texts(model, tokenizer, prompts, kwargs, batch_size,
                                                                  device)]

    def save(self, model, tokenizer, model_dir: Path, run_dir: Path, cfg) -> None:
        from tunelab.models.build import save_model

        save_model(model, tokenizer, model_dir, run_dir, cfg, None)

    def load_saved(self, model_dir: Path):
        from tunelab.tasks.causal_lm import load_causal_model

        return load_causal_model(model_dir)


class ScratchDecoder(DecoderOnly):
    """tunelab's scratch GPT (fresh on model.tokenizer, or a folder saved by `tunelab pretrain`) on the same
    source -> target prompts: causal_lm's encoding, its own forward for the loss, greedy decoding."""

    name = "scratch-decoder"

    def load(self, model_cfg, log):
        from tunelab.models.scratch import build_scratch_causal_lm

        model, tokenizer, _ = build_scratch_causal_lm(model_cfg)
        return model, tokenizer

    def loss(self, model, batch):
        """Summed cross-entropy of the target tokens (targets are next-token ids, IGNORE_INDEX elsewhere)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        targets = batch["targets"]  # (B, T)
        keep = targets != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
        return loss, int(keep.sum())

    @torch.no_grad()
    def generate(self, model, tokenizer, sources: list[str], gen_cfg, max_length: int, batch_size: int,
                 device) -> list[str]:
        """Greedy, one prompt at a time (the scratch GPT decodes unpadded prompts); the first line of the
        continuation is the answer."""
        from tunelab.data.corpus import end_of_document_id

        eos, window = end_of_document_id(tokenizer), model.config["max_position"]
        was_training = model.training
        model.eval()
        out = []
        for text in sources:
            ids = tokenizer(prompt_of(text), add_special_tokens=True)["input_ids"]
            ids = ids[-max(1, window - gen_cfg.max_new_tokens):]  # the prompt's end, where the target starts
            prompt = torch.tensor([ids], device=device)
            new = model.generate(prompt, gen_cfg.max_new_tokens, eos_token_id=eos)[0, len(ids):].tolist()
            out.append(tokenizer.decode(new, skip_special_tokens=True).split("\n")[0].strip())
        model.train(was_training)
        return out

    def load_saved(self, model_dir: Path):
        from tunelab.models.scratch import load_scratch

        return load_scratch(model_dir)


FAMILIES = {"encoder-decoder": EncoderDecoder, "decoder": DecoderOnly, "scratch-decoder": ScratchDecoder}


# ---------------------------------------------------------------------------------------------
# The job: what `tunelab train` runs for `task: seq2seq`


class Seq2SeqJob:
    default_metric = "chrf"
    metric_names = METRICS

    def __init__(self, cfg, device: torch.device, log):
        self.cfg, self.device, self.log = cfg, device, log
        self.eval_batch_size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        self.samples: list[dict] = []

    def prepare(self) -> None:
        from tunelab.data.prepare import prepare_splits
        from tunelab.data.tokens import pad_id_of
        from tunelab.methods import apply_method, options_of
        from tunelab.methods.common import count_parameters

        cfg = self.cfg
        self.family = FAMILIES[family_of(cfg.model)]()
        if self.family.name == "decoder" and cfg.data.max_target_length is not None:
            self.log("data.max_target_length: a causal LM reads source and target as one row of "
                     f"model.max_length {cfg.model.max_length} tokens; the setting is not used")
        splits = prepare_splits(read_splits(cfg, self.log), data_view(cfg), cfg, self.log)
        self.data_summary = splits.summary
        model, self.tokenizer = self.family.load(cfg.model, self.log)
        if self.family.name == "decoder":
            from tunelab.models.load import check_max_length

            check_max_length(cfg.model.max_length, model, cfg.model.name)
        self.pad_id = pad_id_of(self.tokenizer, fallback=self.tokenizer.eos_token_id)
        warning = spelling_warning(self.tokenizer, [p["target"] for p in splits["train"][0]], cfg.model.name)
        if warning:
            self.log(warning)
        self.max_target = cfg.data.max_target_length or cfg.model.max_length
        self.data = {name: self.family.encode(self.tokenizer, model, pairs, src, cfg.model.max_length,
                                              self.max_target) for name, (pairs, src) in splits.items()}
        for name, data in self.data.items():
            self.log(f"{name}: {self._describe(data)}")
        m = cfg.method
        self.model = apply_method(m.name, model, set(), task_type=self.family.task_type,
                                  **options_of(m)).to(self.device)
        trainable, total = count_parameters(self.model)
        self.log(f"{self.family.name} model, method {m.name}: {trainable:,} trainable of {total:,} parameters "
                 f"({100 * trainable / total:.2f}%)")

    def _describe(self, data) -> str:
        if isinstance(data, PairSet):
            return data.describe(self.cfg.model.max_length, self.max_target)
        return data.describe(self.cfg.model.max_length)

    # -- training ---------------------------------------------------------------------------

    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.data["train"]) / self.cfg.train.batch_size)

    def epoch_batches(self, epoch: int):
        """The same batches in the same order for an epoch every time (seeded by train.seed + epoch)."""
        from tunelab.data.batching import training_batches

        data, bs = self.data["train"], self.cfg.train.batch_size
        for idx in training_batches(self.family.lengths(data), bs, self.cfg.train.seed + epoch,
                                    self.cfg.train.group_by_length):
            yield self.family.batch(data, idx, self.pad_id)

    def loss(self, model, batch):
        return self.family.loss(model, batch)

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def _loss_of(self, model, data) -> float:
        from tunelab.data.batching import length_grouped_batches

        model.eval()
        total, count = 0.0, 0
        for idx in length_grouped_batches(self.family.lengths(data), self.eval_batch_size, 0, shuffle=False):
            batch = {k: v.to(self.device) for k, v in self.family.batch(data, idx, self.pad_id).items()}
            loss, n = self.family.loss(model, batch)
            total, count = total + float(loss), count + n
        return total / max(1, count)

    def _scores(self, model, data, limit: int) -> tuple[dict, list[dict]]:
        """Loss on the whole split; BLEU / chrF / ROUGE-L of the outputs for its first `limit` pairs."""
        metrics = {"loss": self._loss_of(model, data), "n": len(data)}
        pairs = data.pairs[:limit]
        if not pairs:
            return metrics, []
        generated = self.family.generate(model, self.tokenizer, [p["source"] for p in pairs], self.cfg.generate,
                                         self.cfg.model.max_length, self.eval_batch_size, self.device)
        metrics.update(score_outputs(generated, [p["target"] for p in pairs]))
        samples = [{"source": p["source"], "reference": p["target"], "generated": g}
                   for p, g in zip(pairs, generated)]
        return metrics, samples

    def validate(self, model) -> dict | None:
        data = self.data.get("validation")
        if data is None or len(data) == 0:
            return None
        return self._scores(model, data, self.cfg.generate.samples_in_eval)[0]

    def test(self) -> dict:
        data = self.data.get("test")
        if data is None or len(data) == 0:
            return {}
        metrics, self.samples = self._scores(self.model, data, self.cfg.generate.samples_in_eval)
        metrics["samples"] = self.samples[:REPORT_SAMPLES]
        return metrics

    def save(self, model_dir: Path, run_dir: Path) -> None:
        from tunelab.io import atomic_write_json

        self.family.save(self.model, self.tokenizer, model_dir, run_dir, self.cfg)
        atomic_write_json(run_dir / FAMILY_FILE, {"family": self.family.name})

    def finish(self, run_dir: Path) -> dict:
        return {}

    def report_sections(self, test_metrics: dict) -> list[tuple[str, str]]:
        if not self.samples:
            return []
        return [("Sample outputs (test)", samples_table(self.samples[:REPORT_SAMPLES], test_metrics))]

    def summary(self, m: dict) -> str:
        if not m:
            return "no test split (data.test_fraction is 0 and no data.test file)"
        return "test: " + metrics_line(m)


def score_outputs(generated: list[str], references: list[str]) -> dict:
    """BLEU, chrF (sacrebleu, 0-100, with signatures) and ROUGE-L (0-1) of outputs against references."""
    from tunelab.evaluate.text_metrics import translation_metrics

    return translation_metrics(generated, references)


def metrics_line(m: dict) -> str:
    """One line of metrics: loss, and BLEU / chrF (0-100) and ROUGE-L (0-1) where outputs were generated."""
    parts = [f"loss {m['loss']:.4f}"] if "loss" in m else []
    if "chrf" in m:
        parts += [f"chrf {m['chrf']:.2f}", f"bleu {m['bleu']:.2f}", f"rouge_l {m['rouge_l']:.3f}",
                  f"({m['generated']} generated)"]
    return "  ".join(parts) + (f"  (n={m['n']})" if "n" in m else "")


def samples_table(samples: list[dict], metrics: dict | None = None, clip: int = 400) -> str:
    """HTML table of sources, references and outputs, with the sacrebleu signatures of the scores."""
    def cell(text: str) -> str:
        text = text if len(text) <= clip else text[:clip] + " ..."
        return f"<td style='white-space:pre-wrap;vertical-align:top'>{html.escape(text)}</td>"

    rows = "".join(f"<tr>{cell(s['source'])}{cell(s['reference'])}{cell(s['generated'])}</tr>" for s in samples)
    sigs = (metrics or {}).get("signatures", {})
    note = "".join(f"<p>sacrebleu {name} signature: <code>{html.escape(sig)}</code></p>"
                   for name, sig in sigs.items())
    return f"{note}<table><tr><th>source</th><th>reference</th><th>generated</th></tr>{rows}</table>"


# ---------------------------------------------------------------------------------------------
# A finished seq2seq run: load it, evaluate it, predict with it, translate with it


def _family_of_run(run_dir: Path) -> str:
    import json

    path = Path(run_dir) / FAMILY_FILE
    if not path.is_file():
        raise TunelabError(f"{run_dir}: {FAMILY_FILE} is missing; it is written by `tunelab train` for a "
                           "seq2seq run (train the run again)")
    return json.loads(path.read_text())["family"]


def load_model(run_dir: Path, cfg) -> tuple:
    """(model in eval mode, tokenizer, {"family": ...}) of a seq2seq run's RUN_DIR/model."""
    from tunelab.compress.store import is_compressed, load_compressed
    from tunelab.data.tokens import ensure_pad_token

    family, model_dir = _family_of_run(run_dir), Path(run_dir) / "model"
    if is_compressed(model_dir):  # any family: rebuilt from compression.json, the pad as a decoder's loader sets it
        model, tokenizer = load_compressed(model_dir)
        tokenizer = ensure_pad_token(tokenizer)
    else:
        model, tokenizer = FAMILIES[family]().load_saved(model_dir)
    model.eval()
    return model, tokenizer, {"family": family}


def generate_for(run, sources: list[str], batch_size: int = 8) -> list[str]:
    """The run's outputs for `sources`, with its `generate:` settings."""
    from tunelab.models.device import model_device

    family = FAMILIES[run.meta["family"]]()
    return family.generate(run.model, run.tokenizer, sources, run.cfg.generate, run.cfg.model.max_length,
                           batch_size, model_device(run.model))


def _sources(records: list[dict], field: str, source: str) -> list[str]:
    out = []
    for i, rec in enumerate(records):
        value = rec.get(field)
        if not isinstance(value, str):
            raise DataError(rec.get("_file", source), f"record {i + 1}: no text in field '{field}'; set "
                                                      "data.source_field to the field holding the source text",
                            rec.get("_line"))
        out.append(value)
    return out


def predict(run, records: list[dict], source: str, log) -> list[dict]:
    """Each record plus `generated` (the model's output for its data.source_field text)."""
    generated = generate_for(run, _sources(records, run.cfg.data.source_field, source))
    out = []
    for rec, text in zip(records, generated):
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        clean["generated"] = text
        out.append(clean)
    return out


def evaluate(run, records: list[dict] | None, source: str, log) -> dict:
    """BLEU / chrF / ROUGE-L of a run on pairs in `records` (None: the run's own test split)."""
    from tunelab.data.parallel import load_pairs
    from tunelab.data.prepare import held_out_as_trained

    cfg = run.cfg
    if records is None:
        splits = load_split_pairs(cfg.data, cfg.train.seed, lambda _: None)
        if "test" not in splits or not splits["test"][0]:
            raise TunelabError(f"{run.dir}: the run has no test split; pass --data FILE")
        pairs = held_out_as_trained(splits["test"][0], data_view(cfg), cfg)
    else:
        pairs = load_pairs(source, source_field=cfg.data.source_field, target_field=cfg.data.target_field,
                           log=log)
    generated = generate_for(run, [p["source"] for p in pairs])
    metrics = score_outputs(generated, [p["target"] for p in pairs])
    metrics["n"] = len(pairs)
    return metrics


def translate(run_dir: str | Path, texts: list[str], overrides: list[str] | None = None) -> list[str]:
    """`tunelab translate RUN_DIR`: the run's output for each text, in order."""
    from tunelab.runs import load_run

    run = load_run(run_dir, overrides)
    return generate_for(run, texts)


def text_records(texts: list[str], run) -> list[dict]:
    """`predict --text` inputs as records: the text in data.source_field."""
    return [{run.cfg.data.source_field: t} for t in texts]


def check_config(cfg) -> list[str]:
    """Problems beyond the schema: methods the model family cannot take; data.redact_pii / data.augment where
    the texts cannot be rewritten."""
    from tunelab.data.prepare import rewrite_problems

    problems = rewrite_problems(cfg, data_view(cfg))
    name = cfg.model.name
    if cfg.method.name == "lora" and (name.startswith("scratch:")):
        problems.append(f"method.name: lora wraps Hugging Face layers; {name} is a scratch model: use full or "
                        "freeze")
    if name == "scratch:gpt" and cfg.generate.num_beams > 1:
        problems.append("generate.num_beams: a scratch GPT decodes greedily here; set generate.num_beams: 1, or "
                        "use scratch:transformer-seq2seq for beam search")
    if cfg.model.architecture == "encoder-decoder" and name.startswith("scratch:"):
        problems.append(f"model.architecture: encoder-decoder warm-starts from a pretrained encoder; {name} is "
                        "built from scratch: leave model.architecture at auto")
    return problems


def check_data(ref, data_cfg) -> None:
    """`tunelab validate`: read a data reference the way training will (DataError for what cannot be read)."""
    read_pairs(ref, data_cfg, lambda _: None)


def _register() -> None:
    from tunelab.tasks import TASKS
    from tunelab.tasks.base import Task

    TASKS.register("seq2seq", Task(
        name="seq2seq", summary="text to text: translation or summarisation of source -> target pairs",
        job=Seq2SeqJob, metrics=METRICS, methods=("full", "freeze", "lora", "distill"),
        load=load_model, evaluate=evaluate, predict=predict, metrics_line=metrics_line, outputs="outputs",
        settings=("data.source_field", "data.target_field", "generate."),
        refused_settings={"data.label_field": "a seq2seq run has no labels; its references are "
                                              "data.target_field"},
        text_records=text_records, check_config=check_config, check_data=check_data,
        scratch_kinds=("transformer-seq2seq",), verbs={"translate": translate},
        api=("translate",), splits=read_splits, data_view=data_view),
        options=("data.source_field", "data.target_field", "data.language", "data.direction",
                 "data.max_placeholder_share", "data.max_chars", "data.max_target_length", "model.architecture",
                 "generate.max_new_tokens", "generate.samples_in_eval", "generate.num_beams",
                 "generate.length_penalty", "generate.no_repeat_ngram_size"))


_register()
