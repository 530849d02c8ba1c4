"""What a task is: a `Task` record (registered in tunelab.tasks.TASKS) and the `TaskJob` the driver runs.

A task module builds one `Task` and registers it (see CONTRIBUTING.md, "Add a task"). Everything that
differs between tasks goes through these two contracts, so the driver (tunelab.run), the config loader,
`tunelab validate`, `tunelab eval` and `tunelab predict` never ask which task they hold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

if TYPE_CHECKING:  # torch loads with the task modules, not with the registry
    import torch
    from torch import nn


class TaskJob(Protocol):
    """One run of one task. Built from the config; `prepare()` loads data, tokenizer and model."""

    model: nn.Module
    default_metric: str
    metric_names: tuple[str, ...]

    def prepare(self) -> None: ...
    def micro_batches_per_epoch(self) -> int: ...
    def epoch_batches(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]: ...
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...
    def validate(self, model: nn.Module) -> dict | None: ...
    def test(self) -> dict: ...
    def save(self, model_dir: Path, run_dir: Path) -> None: ...
    def finish(self, run_dir: Path) -> dict: ...
    def report_sections(self, test_metrics: dict) -> list[tuple[str, str]]: ...
    def summary(self, test_metrics: dict) -> str: ...


def _no_problems(cfg) -> list[str]:
    return []


@dataclass(frozen=True)
class Task:
    """A task as the rest of tunelab sees it. Only `name` .. `predict` are required."""

    name: str
    summary: str
    """One line: what the task trains (the config reference and `tunelab validate` show it)."""
    job: Callable[..., TaskJob]
    """job(cfg, device, log) -> the TaskJob that `tunelab train` runs."""
    metrics: tuple[str, ...]
    """Validation metrics, any of which may pick the best checkpoint (train.early_stopping.metric)."""
    methods: tuple[str, ...]
    """The methods (tunelab.methods) this task can train with; the test matrix runs each of them."""
    load: Callable[..., tuple[Any, Any, dict]]
    """load(run_dir, cfg) -> (model in eval mode, tokenizer, task metadata) of a finished run."""
    evaluate: Callable[..., dict]
    """evaluate(run, records or None, source, log) -> metrics; None = the run's own test split."""
    predict: Callable[..., list[dict]]
    """predict(run, records, source, log) -> each record with the task's prediction added."""
    metrics_line: Callable[[dict], str] = str
    """One line of metrics, as `tunelab eval` prints them."""
    outputs: str = "predictions"
    """What `predict` adds to each record, in words ("3 predictions written to ...")."""
    settings: tuple[str, ...] = ("data.text_field",)
    """Settings of a finished run that eval / predict may change (a key, or a prefix ending in '.')."""
    refused_settings: dict[str, str] = field(default_factory=dict)
    """Why a run setting other tasks accept does not apply here (setting -> reason)."""
    text_records: Callable[[list[str], dict], list[dict]] | None = None
    """`predict --text` inputs as records, given the run's metadata (default: {text_field: text})."""
    check_config: Callable[[Any], list[str]] = _no_problems
    """Problems of a config for this task beyond the schema (all at once)."""
    check_data: Callable[..., None] | None = None
    """check_data(ref, data_cfg): read one data file the way training will and raise a DataError for what
    cannot be read (`tunelab validate`); None = tunelab.data.sources.load_records + `check_records`."""
    read_data: Callable[..., list[dict]] | None = None
    """read_data(ref, cfg, log): the records of a file given to `eval --data` / `predict --input`, read as this
    task reads data (e.g. CoNLL sentences); None = tunelab.data.sources.load_records."""
    check_records: Callable[..., None] | None = None
    """check_records(records, source, data_cfg): raise a DataError for the first record this task
    cannot read (`tunelab validate` calls it on the first records of each data file)."""
    scratch_kinds: tuple[str, ...] = ()
    """The scratch:KIND models this task builds."""
    route: Callable[[Any], str | None] | None = None
    """route(cfg) -> the name of another task that runs this config, or None (causal_lm on a scratch GPT is
    pretraining)."""
    verbs: dict[str, Callable] = field(default_factory=dict)
    """Task-specific commands on a finished run (e.g. chat, merge), name -> function(run_dir, ...)."""
    splits: Callable[..., dict[str, tuple[list[dict], str]]] | None = None
    """splits(cfg, log) -> {"train" | "validation" | "test": (records, source)}: the records of each split as this
    task reads and splits them, before data.dedup / data.redact_pii / data.augment change them (what `tunelab data
    check` reports on); None = this task's data cannot be checked."""
    data_view: Callable[[Any], Any] | None = None
    """data_view(cfg) -> tunelab.data.prepare.DataView: where a record of this task holds its texts, label and
    conversation turns, how its texts are rewritten (PII redaction: all of them) and which of them augmentation
    may edit (the input side only, so a copy keeps its record's label)."""
    probabilities: Callable[..., list] | None = None
    """probabilities(run, records, source, log) -> one numpy array per record (records None: the run's own test
    split), in the order of run.meta["labels"]: [labels] for a text, [words, labels] for a tagged sentence: what
    `tunelab ensemble` averages (tunelab.runs.run_probabilities); None = runs of this task cannot be ensembled."""
    api: tuple[str, ...] = ()
    """The `tunelab serve` endpoints (under /v1/) that serve this task's runs, by name: "chat.completions",
    "completions", "classify", "translate", "answer", "entities", "embeddings" (tunelab.serve); () = not
    served."""
