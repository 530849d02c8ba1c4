"""Task `pretrain`: causal-LM pretraining of a scratch GPT on a text corpus, with validation perplexity.

The config is an ordinary run config with `task: pretrain` (or `task: causal_lm`, which hands a scratch
GPT over to this task), `model.name: scratch:gpt` (or a saved scratch
GPT folder, to go on pretraining) and `data.train` a text corpus: a .txt file, a folder of .txt files, a
.jsonl (or other record file) with `data.text_field`, or builtin:NAME (its texts; labels are ignored).

Documents are split into train / validation / test (seeded; `data.val_fraction` / `test_fraction` of the
documents, or of the blocks when there are too few documents to hold any out; `data.validation` /
`data.test` files are used as given; `data.limit` caps the training documents). Each split is tokenised
without special tokens, joined into one stream with the tokenizer's EOS (or SEP) token after every
document, and cut into blocks (tunelab.data.corpus) of `model.max_length` tokens. A block starts with the last token of the one
before it, so every token but the first is a next-token target exactly once.

`PretrainJob` implements the run driver's TaskJob protocol (tunelab/tasks/base.py); `tunelab.run.train`
drives it (`tunelab train`, or its shortcut `tunelab pretrain`) and writes the usual
RUN_DIR (config.yaml, metrics.jsonl, eval.json, report.html, model/, tunelab-run.json), staged beside it and
swapped in when the run finished, as for every run. RUN_DIR/model is a scratch folder: `model.name: RUN_DIR/model` fine-tunes it as a
classifier with `tunelab train` (a GPTClassifier with the pretrained body) or pretrains it further.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.data.corpus import corpus_documents, corpus_splits, encode_documents, end_of_document_id, \
    make_blocks
from tunelab.data.splits import split_indices
from tunelab.data.tokens import IGNORE_INDEX, pad_id_of
from tunelab.errors import DataError, TunelabError

if TYPE_CHECKING:  # torch is imported where it is used
    import torch
    from torch import nn

METRICS = ("loss", "perplexity")
METHODS = ("full", "freeze")
SAMPLES, SAMPLE_PROMPT_TOKENS, SAMPLE_NEW_TOKENS = 3, 16, 32


# ------------------------------------------------------------------------------------ loss and evaluation

def lm_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
                ) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the target tokens of a batch, and how many there are."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t + 1
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)
    return loss, int((targets != IGNORE_INDEX).sum())


def block_batch(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels (B, T), right-padded; labels are IGNORE_INDEX at padding."""
    from tunelab.data.batching import pad_batch

    return pad_batch(rows, pad_id, {"labels": rows}, {"labels": IGNORE_INDEX})


def evaluate_blocks(model: nn.Module, rows: list[list[int]], batch_size: int, pad_id: int,
                    device: torch.device) -> dict:
    """Mean next-token loss, perplexity and the number of target tokens over `rows`."""
    import torch

    from tunelab.train.logging import progress

    model.eval()
    total, count = 0.0, 0
    starts = range(0, len(rows), batch_size)
    with torch.no_grad():
        for k in progress(starts, total=len(starts), desc="evaluate", unit="batches"):
            batch = block_batch(rows[k:k + batch_size], pad_id)
            loss, n = lm_loss_sum(model, {name: t.to(device) for name, t in batch.items()})
            total, count = total + float(loss), count + n
    mean = total / max(1, count)
    return {"loss": mean, "perplexity": math.exp(min(mean, 100.0)), "tokens": count}


# ------------------------------------------------------------------------------------------------ the job

class PretrainJob:
    """Pretraining as a TaskJob (tunelab/tasks/base.py): blocks of a token stream, loss, perplexity."""

    default_metric = "loss"
    metric_names = METRICS

    def __init__(self, cfg, device: torch.device, log):
        self.cfg, self.device, self.log = cfg, device, log
        self.eval_batch_size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        self.samples: list[dict] = []

    def prepare(self) -> None:
        from tunelab.data.prepare import prepare_splits
        from tunelab.methods import apply_method, options_of
        from tunelab.methods.common import count_parameters
        from tunelab.models.scratch import build_scratch_causal_lm

        cfg = self.cfg
        model, self.tokenizer, _ = build_scratch_causal_lm(cfg.model)
        self.eos_id = end_of_document_id(self.tokenizer)
        self.pad_id = pad_id_of(self.tokenizer, fallback=self.eos_id)
        splits = prepare_splits(read_splits(cfg, self.log), data_view(cfg), cfg, self.log)
        self.data_summary = splits.summary
        self.blocks = self._blocks({name: ([r["text"] for r in records], source)
                                    for name, (records, source) in splits.items()})
        m = cfg.method
        self.model = apply_method(m.name, model, set(), **options_of(m)).to(self.device)
        trainable, total = count_parameters(self.model)
        self.log(f"method {m.name}: {trainable:,} trainable of {total:,} parameters; vocabulary "
                 f"{len(self.tokenizer):,} tokens")

    def _blocks(self, splits: dict[str, tuple[list[str], str]]) -> dict[str, list[list[int]]]:
        """Token blocks per split; held-out blocks are carved from train when no document was held out."""
        d, size = self.cfg.data, self.cfg.model.max_length
        blocks = {name: make_blocks(encode_documents(self.tokenizer, texts), self.eos_id, size)
                  for name, (texts, _) in splits.items()}
        wanted = {"validation": 0.0 if d.validation else d.val_fraction, "test": 0.0 if d.test else d.test_fraction}
        missing = {n: (f if not blocks.get(n) else 0.0) for n, f in wanted.items()}
        if any(missing.values()) and blocks.get("train"):
            parts = split_indices(len(blocks["train"]), missing["validation"], missing["test"], self.cfg.train.seed,
                                  draw="once")
            self.log(f"too few documents to hold some out: splitting {len(blocks['train'])} blocks instead")
            blocks.update({n: [blocks["train"][i] for i in idx] for n, idx in parts.items() if idx or n == "train"})
        if not blocks.get("train"):
            raise DataError(d.train, "no training block: the corpus has fewer than 2 tokens; add text")
        for name, rows in blocks.items():
            self.log(f"{name}: {len(rows)} blocks of up to {size} tokens, "
                     f"{sum(len(r) - 1 for r in rows):,} target tokens")
        return blocks

    # -- training ---------------------------------------------------------------------------

    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.blocks["train"]) / self.cfg.train.batch_size)

    def epoch_batches(self, epoch: int):
        from tunelab.data.batching import random_batches

        rows = self.blocks["train"]
        for idx in random_batches(len(rows), self.cfg.train.batch_size, self.cfg.train.seed + epoch):
            yield block_batch([rows[i] for i in idx], self.pad_id)

    def loss(self, model, batch):
        return lm_loss_sum(model, batch, self.cfg.train.label_smoothing)

    # -- evaluation -------------------------------------------------------------------------

    def validate(self, model) -> dict | None:
        rows = self.blocks.get("validation")
        return evaluate_blocks(model, rows, self.eval_batch_size, self.pad_id, self.device) if rows else None

    def test(self) -> dict:
        rows = self.blocks.get("test")
        return evaluate_blocks(self.model, rows, self.eval_batch_size, self.pad_id, self.device) if rows else {}

    def save(self, model_dir: Path, run_dir: Path) -> None:
        """The shared saver (staged, swapped in atomically), as every task's model: a scratch folder here."""
        from tunelab.models.build import save_model

        save_model(self.model, self.tokenizer, model_dir, run_dir, self.cfg, None)

    def finish(self, run_dir: Path) -> dict:
        """Greedy continuations of the first held-out blocks, for eval.json and the report."""
        import torch

        rows = self.blocks.get("test") or self.blocks.get("validation") or self.blocks["train"]
        self.samples = []
        for row in rows[:SAMPLES]:
            prompt = torch.tensor([row[:SAMPLE_PROMPT_TOKENS]], device=self.device)
            out = self.model.generate(prompt, SAMPLE_NEW_TOKENS, eos_token_id=self.eos_id)[0].tolist()
            self.samples.append({"prompt": self.tokenizer.decode(out[:prompt.size(1)]),
                                 "generated": self.tokenizer.decode(out[prompt.size(1):])})
        return {"samples": self.samples}

    def report_sections(self, test_metrics: dict) -> list[tuple[str, str]]:
        if not self.samples:
            return []
        items = "".join(f"<p><b>{html.escape(s['prompt'])}</b> {html.escape(s['generated'])}</p>"
                        for s in self.samples)
        return [("Samples: greedy continuations of held-out text (prompt in bold)", items)]

    def summary(self, m: dict) -> str:
        if not m:
            return "no test split (data.test_fraction is 0 and no data.test file)"
        return f"test: loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f}  ({m['tokens']:,} target tokens)"


# ------------------------------------------------------------------------------- config and registration

SCRATCH_KINDS = ("gpt",)


def read_splits(cfg, log) -> dict[str, tuple[list[dict], str]]:
    """Task.splits: the corpus's documents per split (tunelab.data.corpus.corpus_splits) as records
    {"text": document}."""
    return {name: ([{"text": text} for text in texts], source)
            for name, (texts, source) in corpus_splits(cfg.data, cfg.train.seed, log).items()}


def data_view(cfg):
    """Task.data_view: a document is one text, cut into blocks (so its length is no problem); it is all target
    (every token is one the model learns to write), so it is never augmented."""
    from tunelab.data.prepare import DataView, rewrite_fields

    return DataView(texts=lambda r: [r["text"]], rewrite=lambda r, fn: rewrite_fields(r, ("text",), fn),
                    chunked=True, no_augment="pretraining text is what the model learns to write, so an edited "
                                             "copy would teach it the edits")


def config_problems(cfg) -> list[str]:
    """What pretraining needs beyond a valid run config; every problem at once."""
    from tunelab.data.prepare import rewrite_problems
    from tunelab.models.scratch import is_scratch_dir

    problems = []
    if cfg.task not in ("pretrain", "causal_lm"):
        problems.append(f"task: got {cfg.task!r}; pretraining is causal language modelling, set task: pretrain")
    if cfg.model.name != "scratch:gpt" and not is_scratch_dir(cfg.model.name):
        problems.append(f"model.name: got {cfg.model.name!r}; pretrain builds scratch:gpt or goes on from a "
                        "scratch GPT folder (RUN_DIR/model of an earlier tunelab pretrain)")
    if cfg.method.name not in METHODS:  # `tunelab pretrain` may be given another task's config
        problems.append(f"method.name: got {cfg.method.name!r}; pretraining has no new head to train, use "
                        f"{' or '.join(METHODS)}")
    if cfg.train.early_stopping.metric not in (None, *METRICS):  # null = loss
        problems.append(f"train.early_stopping.metric: got {cfg.train.early_stopping.metric!r}; "
                        f"pretraining metrics: {', '.join(METRICS)}")
    if cfg.data.format not in ("auto", "text"):
        problems.append(f"data.format: got {cfg.data.format!r}; pretraining reads plain text, use auto or text")
    if cfg.model.max_length < 2:
        problems.append(f"model.max_length: got {cfg.model.max_length}; a block needs at least 2 tokens")
    return problems + rewrite_problems(cfg, data_view(cfg))


def check_config(cfg) -> None:
    """Raise a ConfigError listing `config_problems(cfg)`, if any."""
    problems = config_problems(cfg)
    if problems:
        from tunelab.errors import ConfigError

        raise ConfigError(problems)


def pretrain(cfg, *, overwrite: bool = False, resume: bool = False, show_progress: bool = True,
             log=print) -> Path:
    """Pretrain end to end with the shared run driver (tunelab.run.train); returns RUN_DIR.

    The same as `train(cfg)` for a pretraining config; it only refuses configs that would train anything else.
    """
    from tunelab.run import train

    check_config(cfg)
    return train(cfg, overwrite=overwrite, resume=resume, show_progress=show_progress, log=log)


def load_model(run_dir: Path, cfg) -> tuple:
    """(scratch GPT in eval mode, tokenizer, {}) of a pretraining run."""
    from tunelab.models.scratch import load_scratch

    model, tokenizer = load_scratch(run_dir / "model")
    model.eval()
    return model, tokenizer, {}


def _refuse(run, *_, **__):
    """A pretraining run has no labels and no chat format: say what to do with it instead."""
    raise TunelabError(f"{run.dir} is a pretraining run of a scratch GPT: its eval.json and report.html "
                       f"hold perplexity and sample continuations; fine-tune it with "
                       f"model.name: {run.dir / 'model'}")


def check_data(ref: str, data_cfg) -> None:
    """`tunelab validate`: read the corpus as pretraining will (a folder of .txt files, a .txt file, or the
    text field of a record file); what it drops is counted at training time, not here."""
    corpus_documents(ref, data_cfg.text_field, log=lambda line: None)


def _register() -> None:
    from tunelab.tasks import TASKS
    from tunelab.tasks.base import Task

    TASKS.register("pretrain", Task(
        name="pretrain", summary="next-token prediction on a text corpus from scratch (a scratch GPT)",
        job=PretrainJob, metrics=METRICS, methods=METHODS,
        load=load_model, evaluate=_refuse, predict=_refuse, check_config=config_problems,
        check_data=check_data, scratch_kinds=SCRATCH_KINDS, splits=read_splits, data_view=data_view),
        options=("data.format",))


_register()
