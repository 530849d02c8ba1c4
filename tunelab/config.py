"""The run config: one typed dataclass per concern, loaded strictly from YAML plus `a.b=value` overrides.

Strict means: an unknown key, a wrong type or a value outside its allowed set is an error that names the
key, the value received and what is allowed. Every problem in a file is reported at once.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import yaml

from tunelab.errors import ConfigError

@dataclass
class ModelConfig:
    name: str = "builtin:minilm-l6"
    """builtin:NAME | path to a Hugging Face model folder | gguf:PATH | scratch:KIND | a Hub id (org/name) already
    in the local Hugging Face cache (nothing is downloaded). Relative paths are read from the current directory."""
    max_length: int = 128
    """Tokens per example, special tokens included; longer inputs are truncated (and counted). At least 4 (room
    for up to 3 special tokens such as [CLS] and [SEP] plus one token of text) and at most the model's positions
    (checked when the model is loaded)."""
    dropout: Optional[float] = None
    """Override the model's hidden/attention dropout (null keeps the pretrained value)."""
    tokenizer: Optional[str] = None
    """Tokenizer for scratch models: a folder from `tunelab tokenizer train` or a model reference."""
    layers: int = 2
    """Scratch models: number of layers."""
    hidden_size: int = 128
    """Scratch models: hidden (and embedding) width."""
    heads: int = 4
    """Scratch Transformer/GPT: attention heads."""
    ffn_size: Optional[int] = None
    """Scratch Transformer/GPT: feed-forward width (null = 4 x hidden_size)."""
    bidirectional: bool = True
    """Scratch RNN/LSTM/GRU classifiers: read both directions."""
    position: Literal["sinusoidal", "learned", "rotary"] = "learned"
    """Scratch Transformer/GPT: position encoding."""
    architecture: Literal["auto", "encoder-decoder"] = "auto"
    """seq2seq: auto = what model.name is (an encoder-decoder folder, or a causal LM trained on source -> target
    prompts); encoder-decoder = warm-start an encoder-decoder from the encoder model.name names (e.g.
    builtin:minilm-l6: its uncased tokenizer only writes English)."""


@dataclass
class AugmentConfig:
    copies: int = 0
    """EDA-style edited copies added per training record (0 = none); the training split only, never validation
    or test, and only a record's input side: labels, entities, answers, targets and assistant turns stay."""
    edits: List[Literal["synonym", "insert", "swap", "delete"]] = field(
        default_factory=lambda: ["synonym", "insert", "swap", "delete"])
    """The edits a copy draws from: synonym (replace words by synonyms from tunelab's bundled list), insert (a
    synonym of a word at a random place), swap (two words), delete (words)."""
    rate: float = 0.1
    """Share of a text's words one edit changes (at least one word); in (0, 1)."""
    back_translation: List[str] = field(default_factory=list)
    """seq2seq runs the input side of a training record is translated through in turn (e.g. [runs/en-de,
    runs/de-en]); each training record then also gets its round-trip copy. [] = none."""
    seed: Optional[int] = None
    """Seeds the edits; null = train.seed."""


# A data reference: a path or builtin:NAME, or (seq2seq) a mapping {source: PATH, target: PATH} of two aligned
# plain-text files, one sentence per line.
DataRef = Union[str, Dict[str, str]]
PAIR_KEYS = ("source", "target")


@dataclass
class DataConfig:
    train: DataRef = "builtin:bbc-news"
    """builtin:NAME | .jsonl | .csv | .tsv | .parquet | .txt | folder (one sub-folder of .txt per label); seq2seq
    also {source: PATH, target: PATH} (two aligned text files) and builtin:gettext. Relative paths are read from
    the current directory."""
    validation: Optional[DataRef] = None
    """Validation file; null = carve `val_fraction` out of train (stratified, seeded)."""
    test: Optional[DataRef] = None
    """Test file; null = carve `test_fraction` out of train (stratified, seeded)."""
    val_fraction: float = 0.1
    """Share of train held out for validation when data.validation is null."""
    test_fraction: float = 0.1
    """Share of train held out for testing when data.test is null."""
    text_field: str = "text"
    """Field holding the text (classification, and causal_lm format text)."""
    label_field: str = "label"
    """Field holding the label: strings or integers (3 and "3" are one label), not a mix of JSON types."""
    limit: Optional[int] = None
    """Use at most this many training records (a stratified, seeded subset), for quick runs."""
    format: Literal["auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text", "rag"] = "auto"
    """causal_lm: how records are laid out; `auto` detects it from the fields (rag: `question`, `passages`,
    `answer`: answer the question from the passages, as `tunelab ask --index` prompts)."""
    train_on_prompt: bool = False
    """causal_lm: also compute the loss on prompt tokens (default: assistant tokens only)."""
    packing: bool = False
    """causal_lm: pack several examples into one row (attention and positions kept per example)."""
    source_field: str = "source"
    """seq2seq: field holding the input text (the sentence to translate, the document to summarise)."""
    target_field: str = "target"
    """seq2seq: field holding the reference output text."""
    language: Optional[str] = None
    """seq2seq with data.train builtin:gettext: the other language (de, fr, es, ...) of the English pairs."""
    direction: Literal["to_english", "from_english"] = "to_english"
    """seq2seq with builtin:gettext: translate into English (the source is the other language) or out of it."""
    max_placeholder_share: float = 0.5
    """seq2seq with builtin:gettext: drop pairs whose source is more than this share placeholders (%s, {0})."""
    max_chars: Optional[int] = None
    """seq2seq: drop pairs whose source or target is longer than this many characters; null = keep all."""
    max_target_length: Optional[int] = None
    """seq2seq: target tokens per example (longer targets are truncated and counted); null = model.max_length."""
    question_field: str = "question"
    """extractive_qa: field holding the question (flat JSONL; SQuAD-style JSON has its own layout)."""
    context_field: str = "context"
    """extractive_qa: field holding the passage the answer is taken from."""
    answers_field: str = "answers"
    """extractive_qa: field holding {text: [...], answer_start: [...]} (empty lists: no answer in the context)."""
    fix_offsets: bool = False
    """extractive_qa: an answer whose text is not at its answer_start is searched for in the context (nearest
    occurrence) and counted, instead of being an error."""
    doc_stride: Optional[int] = None
    """extractive_qa: context tokens shared by consecutive windows of a long context; null = a quarter of
    model.max_length."""
    query_field: str = "query"
    """retrieval: field holding the query."""
    positive_field: str = "positive"
    """retrieval: field holding the passage that answers the query."""
    negative_field: Optional[str] = None
    """retrieval: field holding a hard negative passage (optional; null = in-batch negatives only)."""
    tokens_field: str = "tokens"
    """token_classification: JSONL field holding the words of a sentence (with data.tags_field)."""
    tags_field: str = "tags"
    """token_classification: JSONL field holding one tag per word."""
    entities_field: str = "entities"
    """token_classification: JSONL field holding character-span entities [{start, end, label}] of data.text_field."""
    tag_column: int = -1
    """token_classification: CoNLL files: the column (0-based; negative counts from the end) holding the tag."""
    tag_scheme: Literal["auto", "iob2", "iob1", "bioes", "bilou", "plain"] = "auto"
    """token_classification: how tags mark entities; auto detects it from the training tags and says which."""
    skip_bad_spans: bool = False
    """token_classification: drop (and count) entities that do not fall on word boundaries or overlap another,
    instead of stopping with an error."""
    check: bool = True
    """Check the data when training starts (duplicates, train/validation/test leakage, labels, lengths, charset,
    conversation turns, PII) and log a short summary; `tunelab data check CONFIG` prints the whole report."""
    dedup: bool = False
    """Drop from the training split every record that repeats an earlier training record exactly or nearly
    (data.near_duplicate_threshold), or (nearly) equals a validation or test record; validation and test stay
    as they are, so scores with and without dedup compare."""
    near_duplicate_threshold: float = 0.8
    """Similarity (Jaccard of word 3-gram sets, estimated by MinHash) from which two texts count as near
    duplicates; in (0, 1]."""
    redact_pii: bool = False
    """Replace e-mail addresses, phone numbers, card numbers (Luhn-checked), IP addresses and IBANs in every split
    with typed placeholders ([EMAIL], [PHONE], [CARD], [IP], [IBAN]) before training; the log and report count
    them."""
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig())


def _method_config() -> type:
    """The `method:` section: `name` plus every registered method's own options (tunelab/methods/<name>.py),
    so a method's options are written, typed and documented beside the method."""
    from tunelab.methods import METHODS, option_fields

    fields: list[tuple] = [("name", Literal[METHODS.names()], field(default="full"))]
    fields += option_fields()  # an option two methods share once, null = the chosen method's default
    return dataclasses.make_dataclass("MethodConfig", fields)


MethodConfig = _method_config()


def method_docs() -> dict[str, str]:
    """The docstrings of the method section's fields, from each method's Options."""
    from tunelab.methods import METHODS, shared_option_doc, shared_options

    docs = {"name": " | ".join(METHODS.get(n).summary for n in METHODS.names()) + "."}
    own = {name: field_docs(METHODS.get(name).options) for name in METHODS.names()
           if METHODS.get(name).options is not None}
    for name in own:
        docs.update({k: v for k, v in own[name].items() if k not in docs})
    docs.update({key: shared_option_doc(key, own) for key in shared_options()})
    return docs


@dataclass
class EarlyStoppingConfig:
    metric: Optional[str] = None
    """Validation metric that picks the best checkpoint (loss/perplexity minimised, others maximised);
    null = the task's default (classification: f1_macro, causal_lm: loss)."""
    patience: Optional[int] = 3
    """Evaluations without improvement before stopping; null = never stop early."""


@dataclass
class TrainConfig:
    epochs: float = 3
    """Passes over the training data (fractions allowed)."""
    max_steps: Optional[int] = None
    """Optimizer steps; overrides epochs when set."""
    batch_size: int = 16
    """Examples per micro-batch."""
    eval_batch_size: Optional[int] = None
    """null = 2 x batch_size."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x grad_accum)."""
    lr: float = 5.0e-5
    """Peak learning rate."""
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    """adamw (decoupled weight decay) | adam (L2 in the gradient) | sgd (with momentum)."""
    momentum: float = 0.9
    """sgd only."""
    weight_decay: float = 0.01
    """Applied to weight matrices only (not biases or norms)."""
    scheduler: Literal["constant", "linear", "cosine", "exponential"] = "linear"
    """Learning-rate schedule after warmup."""
    gamma: float = 0.999
    """exponential: lr multiplier per step after warmup."""
    warmup_ratio: float = 0.06
    """Share of the steps with linear warmup from 0."""
    warmup_steps: Optional[int] = None
    """Overrides warmup_ratio when set."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm; null = no clipping."""
    label_smoothing: float = 0.0
    """Classification: cross-entropy label smoothing."""
    l1_penalty: float = 0.0
    """Adds l1_penalty * sum(|w|) over trainable weights to the loss."""
    eval_every: Optional[int] = None
    """Evaluate every N optimizer steps (always at each epoch end)."""
    log_every: int = 10
    """Log training loss, lr and tokens/s every N steps."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    seed: int = 42
    """Seeds the splits, the batch order, initialisation and dropout."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available."""
    threads: Optional[int] = None
    """CPU threads for torch; null = torch's default."""
    group_by_length: Literal["auto", "always", "never"] = "auto"
    """Batch examples of similar length (less padding). auto = only when that cuts an epoch's padded tokens
    by at least 10%; otherwise batches are plainly random (grouping makes batches less random)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training arithmetic. bf16 = mixed precision: matrix products in bfloat16 under autocast; weights,
    optimizer state, loss and saved models in float32. auto = bf16 where the hardware multiplies bf16
    natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16), else fp32. Evaluation is always fp32."""
    fast_dropout: bool = True
    """On a CPU, draw dropout masks from 16-bit random words (about 5x cheaper; same distribution, p rounded
    to a multiple of 1/65536); false = torch's nn.Dropout. GPUs always use torch's fused dropout."""
    reuse_memory: bool = True
    """On a CPU under Linux (glibc), keep freed memory in the process for reuse instead of handing it back
    to the kernel, so big tensors do not pay for fresh pages every step (10-20% of a fp32 MiniLM step).
    Applies to the whole process until it exits."""
    checkpoint_every: Optional[int] = None
    """Write RUN_DIR/checkpoints/step-N every N optimizer steps (and at the last); null = after each
    evaluation (epoch ends included) and the last step; 0 = only when stopped by Ctrl-C / SIGTERM.
    `tunelab resume RUN_DIR` goes on from the newest."""
    keep_checkpoints: int = 1
    """Keep the newest K checkpoints plus the one with the best validation weights (>= 1)."""
    distributed: Literal["auto", "ddp", "fsdp", "pipeline"] = "auto"
    """Under torchrun with more than one process: ddp (a full copy per process, gradients averaged), fsdp
    (weights, gradients and optimizer state sharded: FSDP2), pipeline (the layers split across processes;
    scratch GPT pretraining). auto = ddp. Ignored in a single process."""
    distributed_timeout: float = 600
    """Seconds a process waits for the others at an exchange before the job ends with an error (a process
    that died or hangs); > 0."""


@dataclass
class GenerateConfig:
    max_new_tokens: int = 128
    """Generation: most new tokens per answer (>= 1)."""
    temperature: float = 0.0
    """0 = greedy (>= 0)."""
    top_p: float = 1.0
    """Generation: nucleus sampling (with temperature > 0); in (0, 1]."""
    top_k: int = 0
    """Generation: sample from the k most likely tokens (0 = off; >= 0)."""
    repetition_penalty: float = 1.0
    """Generation: > 1 discourages repeating tokens (> 0; 1 = off)."""
    samples_in_eval: int = 64
    """causal_lm, seq2seq: test examples generated for the generation metrics (seq2seq: also the validation
    sample generated at each evaluation; 0 = skip; >= 0)."""
    num_beams: int = 1
    """seq2seq: beam search width (1 = greedy, exactly)."""
    length_penalty: float = 1.0
    """seq2seq beam search: exponent on the length a beam's log-probability is divided by (> 1 favours longer
    outputs)."""
    no_repeat_ngram_size: int = 0
    """seq2seq: never repeat an n-gram of this size in an output (0 = off)."""


@dataclass
class QAConfig:
    max_answer_length: int = 30
    """extractive_qa: longest answer span in tokens (>= 1)."""
    n_best: int = 20
    """extractive_qa: start and end candidates per window searched for the best span (>= 1)."""
    no_answer_threshold: Optional[float] = None
    """extractive_qa: answer "no answer" when its score beats the best span's by more than this; null = the
    threshold that scores best on validation (saved with the run)."""


@dataclass
class RetrievalConfig:
    temperature: float = 0.05
    """retrieval: contrastive loss temperature (cosine similarities are divided by it; > 0)."""
    pooling: Literal["mean", "cls"] = "mean"
    """retrieval: how token vectors become one embedding (mean over real tokens, or the first token);
    embeddings are L2-normalised."""


@dataclass
class PredictConfig:
    constrained: bool = False
    """token_classification: decode with invalid tag transitions forbidden (no I-X after O or after another
    type), the best valid sequence by the tag scores; false = the best tag per word."""


@dataclass
class RunConfig:
    task: str = "classification"
    """What to train for: one of the registered tasks (tunelab.tasks)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    output_dir: str = "runs/run"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Strict conversion of plain YAML data into the dataclasses above


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {' to '.join(_type_name(a) for a in typing.get_args(tp))}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Check `value` against type `tp`; return the converted value or record a problem."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, problems)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        problems.append(f"{key}: got {value!r}; allowed: {_type_name(tp)}")
        return None
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            trial: list[str] = []
            out = _convert(value, arg, key, trial)
            if not trial:
                return out
        problems.append(f"{key}: got {value!r}; expected {_type_name(tp)}")
        return None
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{key}: got {value!r}; expected {_type_name(tp)}")
            return None
        return {_convert(k, key_tp, key, problems): _convert(v, value_tp, f"{key}.{k}", problems)
                for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: got {value!r}; expected {_type_name(tp)}")
            return None
        return [_convert(v, typing.get_args(tp)[0], f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `5e-5` as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    problems.append(f"{key}: got {value!r}; expected {_type_name(tp)}")
    return None


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            problems.append(f"unknown key '{full}' (got {value!r}); allowed: {', '.join(names)}")
            continue
        kwargs[key] = _convert(value, hints[key], full, problems)
    return cls(**kwargs)


# The fewest tokens an example can have: up to 3 special tokens ([CLS] a [SEP] b [SEP]) plus one token of
# text. Below that, Hugging Face tokenizers silently ignore max_length and do not truncate at all.
MIN_MAX_LENGTH = 4


def _check_ranges(cfg: RunConfig, problems: list[str]) -> None:
    """Range problems of the fields that are well typed (a field with a type problem holds None here)."""
    t, d, m = cfg.train, cfg.data, cfg.method
    _check_max_length(cfg.model.max_length, problems)
    _check_generate(cfg.generate, problems)
    positive = {"train.batch_size": t.batch_size,
                "train.grad_accum": t.grad_accum, "method.r": m.r, "train.log_every": t.log_every,
                "train.keep_checkpoints": t.keep_checkpoints,
                "model.layers": cfg.model.layers, "model.hidden_size": cfg.model.hidden_size,
                "model.heads": cfg.model.heads, "qa.max_answer_length": cfg.qa.max_answer_length,
                "qa.n_best": cfg.qa.n_best}
    for key, v in positive.items():
        if isinstance(v, int) and v < 1:
            problems.append(f"{key}: got {v}; must be >= 1")
    for key, v in {"train.max_steps": t.max_steps, "data.limit": d.limit, "train.eval_every": t.eval_every,
                   "train.eval_batch_size": t.eval_batch_size, "method.trainable_layers": m.trainable_layers}.items():
        if isinstance(v, int) and v < (0 if key == "method.trainable_layers" else 1):
            problems.append(f"{key}: got {v}; must be a positive integer or null")
    for key, v in {"data.val_fraction": d.val_fraction, "data.test_fraction": d.test_fraction,
                   "train.warmup_ratio": t.warmup_ratio, "train.label_smoothing": t.label_smoothing,
                   "method.dropout": m.dropout}.items():
        if isinstance(v, float) and not 0.0 <= v < 1.0:
            problems.append(f"{key}: got {v}; must be in [0, 1)")
    if isinstance(d.near_duplicate_threshold, float) and not 0.0 < d.near_duplicate_threshold <= 1.0:
        problems.append(f"data.near_duplicate_threshold: got {d.near_duplicate_threshold}; must be in (0, 1]")
    a = d.augment
    if isinstance(a.copies, int) and a.copies < 0:
        problems.append(f"data.augment.copies: got {a.copies}; must be >= 0 (0 = no edited copies)")
    if isinstance(a.rate, float) and not 0.0 < a.rate < 1.0:
        problems.append(f"data.augment.rate: got {a.rate}; must be in (0, 1)")
    if isinstance(a.edits, list) and isinstance(a.copies, int) and a.copies > 0 and not a.edits:
        problems.append("data.augment.edits: empty while data.augment.copies > 0; name at least one edit")
    if isinstance(d.doc_stride, int) and d.doc_stride < 0:
        problems.append(f"data.doc_stride: got {d.doc_stride}; must be >= 0 (0 = windows do not overlap) or null")
    if isinstance(cfg.retrieval.temperature, float) and cfg.retrieval.temperature <= 0:
        problems.append(f"retrieval.temperature: got {cfg.retrieval.temperature}; must be > 0")
    if isinstance(t.lr, float) and t.lr <= 0:
        problems.append(f"train.lr: got {t.lr}; must be > 0")
    if isinstance(t.checkpoint_every, int) and t.checkpoint_every < 0:
        problems.append(f"train.checkpoint_every: got {t.checkpoint_every}; must be >= 0 (0 = only when "
                        "stopped) or null (after each evaluation)")
    if isinstance(t.distributed_timeout, (int, float)) and t.distributed_timeout <= 0:
        problems.append(f"train.distributed_timeout: got {t.distributed_timeout}; must be > 0 seconds")
    if isinstance(t.epochs, float) and t.epochs <= 0:
        problems.append(f"train.epochs: got {t.epochs}; must be > 0")
    if isinstance(d.val_fraction, float) and isinstance(d.test_fraction, float) \
            and d.val_fraction + d.test_fraction >= 0.9:
        problems.append("data.val_fraction + data.test_fraction must leave some training data (sum < 0.9)")


def _check_task(task: Any, problems: list[str]) -> None:
    """`task` must name a registered task (a wrong type was reported already)."""
    from tunelab.errors import TunelabError
    from tunelab.tasks import get_task

    if isinstance(task, str):
        try:
            get_task(task)
        except TunelabError as e:
            problems.append(f"task: {e}")


# Keys of `model:` that shape a model built from scratch; a pretrained model brings its own shape.
SCRATCH_ONLY = ("layers", "hidden_size", "heads", "ffn_size", "bidirectional", "position")


def _check_choices(cfg: RunConfig, problems: list[str]) -> None:
    """Options that belong to another choice are errors that say why: a method's options under another
    method, a task's data keys under another task, scratch-model keys on a pretrained model.

    Only a value different from the default counts as set, so a dumped config.yaml (every key, defaults
    included) always reloads.
    """
    from tunelab.methods import METHODS
    from tunelab.tasks import tasks

    seen = {p.split(":", 1)[0] for p in problems}  # keys with a problem already (a bad value is not "set")
    for registry, choice_key, chosen in ((METHODS, "method.name", cfg.method.name), (tasks(), "task", cfg.task)):
        if chosen not in registry:
            continue
        keys = dict.fromkeys(k for name in registry.names() for k in registry.options(name))
        for key in keys:
            owners = registry.owners(key)
            if chosen not in owners and key not in seen and _is_set(cfg, key):
                problems.append(f"{key} applies to {' and '.join(owners)}; {choice_key} is {chosen}")
    _check_task_method(cfg, problems)
    _check_pair_refs(cfg, problems)
    if isinstance(cfg.model.name, str) and _is_pretrained(cfg.model.name):
        for name in SCRATCH_ONLY:
            if f"model.{name}" not in seen and _is_set(cfg, f"model.{name}"):
                problems.append(f"model.{name} applies to scratch models (model.name: scratch:KIND); model.name "
                                f"is {cfg.model.name}, which brings its own shape")


def _check_pair_refs(cfg: RunConfig, problems: list[str]) -> None:
    """A {source, target} mapping in data.train / validation / test: exactly those two keys, and only under a
    task that reads source -> target pairs (one whose options include data.source_field)."""
    from tunelab.tasks import tasks

    registry = tasks()
    pair_tasks = registry.owners("data.source_field")
    for name in ("train", "validation", "test"):
        ref = getattr(cfg.data, name)
        if not isinstance(ref, dict):
            continue
        if sorted(ref) != sorted(PAIR_KEYS):
            problems.append(f"data.{name}: a mapping names two aligned text files as {{source: PATH, target: PATH}}; "
                            f"got the keys {', '.join(map(str, ref)) or 'none'}")
        elif isinstance(cfg.task, str) and "data.source_field" not in registry.options(cfg.task):
            problems.append(f"data.{name}: a {{source, target}} mapping of aligned files applies to "
                            f"{' and '.join(pair_tasks)}; task is {cfg.task}")


def _check_task_method(cfg: RunConfig, problems: list[str]) -> None:
    """`method.name` must be one the task (after routing: causal_lm on a scratch GPT is pretraining) trains with."""
    from tunelab.errors import TunelabError
    from tunelab.tasks import task_for

    if not isinstance(cfg.task, str) or not isinstance(cfg.model.name, str) or not isinstance(cfg.method.name, str):
        return  # a wrong type was reported already
    try:
        task = task_for(cfg)
    except TunelabError:
        return  # an unknown task was reported already
    if cfg.method.name not in task.methods:
        problems.append(f"method.name: {cfg.method.name!r} does not apply to task {task.name}; use "
                        f"{', '.join(task.methods[:-1])} or {task.methods[-1]}")


def _is_set(cfg: RunConfig, key: str) -> bool:
    """True when the config's value at `key` (e.g. "method.r") differs from the default.

    A method option that several methods share (method.alpha) defaults to null; a value equal to one of its
    methods' own defaults is not "set" either: configs dumped before the option was shared carry lora's
    alpha 16.0 under every method, and must reload.
    """
    *sections, name = key.split(".")
    node = cfg
    for section in sections:
        node = getattr(node, section)
    value = getattr(node, name)
    if value == getattr(type(node)(), name):
        return False
    if sections == ["method"]:
        from tunelab.methods import own_defaults

        return value not in own_defaults(name)
    return True


def _is_pretrained(name: str) -> bool:
    """A model reference that is surely not a scratch model: builtin:, gguf: or a folder with config.json."""
    if name.startswith(("builtin:", "gguf:")):
        return True
    try:
        return (Path(name).expanduser() / "config.json").is_file()
    except OSError:  # unreadable: cannot tell here (loading the model will say what is wrong)
        return False


def _check_max_length(value: Any, problems: list[str]) -> None:
    if isinstance(value, int) and value < MIN_MAX_LENGTH:
        problems.append(f"model.max_length: got {value}; must be >= {MIN_MAX_LENGTH} (room for the model's "
                        "special tokens, such as [CLS] and [SEP], plus one token of text; below that the "
                        "tokenizer would not truncate at all)")


def _check_generate(g: GenerateConfig, problems: list[str]) -> None:
    """generate.* ranges, checked at load so that a bad value cannot fail after training, at test generation."""
    rules = (("max_new_tokens", g.max_new_tokens, int, lambda v: v >= 1, ">= 1"),
             ("temperature", g.temperature, float, lambda v: v >= 0, ">= 0 (0 = greedy)"),
             ("top_p", g.top_p, float, lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
             ("top_k", g.top_k, int, lambda v: v >= 0, ">= 0 (0 = off)"),
             ("repetition_penalty", g.repetition_penalty, float, lambda v: v > 0, "> 0 (1 = off)"),
             ("samples_in_eval", g.samples_in_eval, int, lambda v: v >= 0, ">= 0 (0 = skip)"),
             ("num_beams", g.num_beams, int, lambda v: v >= 1, ">= 1 (1 = greedy)"),
             ("no_repeat_ngram_size", g.no_repeat_ngram_size, int, lambda v: v >= 0, ">= 0 (0 = off)"))
    for key, value, tp, ok, allowed in rules:
        if isinstance(value, tp) and not isinstance(value, bool) and not ok(value):
            problems.append(f"generate.{key}: got {value}; must be {allowed}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (['train', 'lr'], 0.0001). Values are read as YAML."""
    if "=" not in text:
        raise ConfigError([f"override {text!r} is not KEY=VALUE (e.g. train.lr=1e-4)"])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError([f"override {text!r}: the value is not valid YAML ({getattr(e, 'problem', e)}); "
                           "quote it, e.g. key='value'"]) from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


def config_from_dict(data: Any, source: str | None = None) -> RunConfig:
    problems: list[str] = []
    cfg = _build(RunConfig, data, "", problems)
    _check_task(cfg.task, problems)
    _check_ranges(cfg, problems)  # also after type problems: every problem at once
    _check_choices(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply `a.b=value` overrides, validate everything, return a RunConfig."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(["config file not found; check the path"], str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError([f"not valid YAML{line}: {getattr(e, 'problem', e)}"], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping (task:, model:, data:, ...)"], str(path))
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, str(path))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field (used by `tunelab config` / the README reference)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    docs, body = {}, tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # one line, single spaces
    return docs


SECTIONS = (("model", ModelConfig), ("data", DataConfig), ("data.augment", AugmentConfig), ("method", MethodConfig),
            ("train", TrainConfig), ("train.early_stopping", EarlyStoppingConfig), ("generate", GenerateConfig),
            ("qa", QAConfig), ("retrieval", RetrievalConfig), ("predict", PredictConfig))


def reference_markdown() -> str:
    """Every config key with its type, default and meaning, as a Markdown table (README / `tunelab config`)."""
    from tunelab.tasks import tasks

    registry = tasks()
    task_choices = " \\| ".join(repr(name) for name in registry.names())
    task_docs = "; ".join(f"{name}: {registry.get(name).summary}" for name in registry.names())
    rows = ["| key | type | default | meaning |", "|---|---|---|---|",
            f"| `task` | {task_choices} | `classification` | what to train for: {task_docs} |",
            "| `output_dir` | str | `runs/run` | the run directory (`--output-dir` overrides) |"]
    for prefix, cls in SECTIONS:
        hints, default = typing.get_type_hints(cls), cls()
        docs = method_docs() if cls is MethodConfig else field_docs(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            value = getattr(default, f.name)
            shown = "null" if value is None else value
            kind = _type_name(hints[f.name]).replace("|", "\\|")
            doc = docs.get(f.name, "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{prefix}.{f.name}` | {kind} | `{shown}` | {doc} |")
    return "\n".join(rows)


README_START, README_END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def readme_with_reference(readme: str) -> str:
    """The README text with the config reference block replaced by the current table."""
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{reference_markdown()}\n{README_END}{tail}"
