"""What happens to a task's records between reading and encoding: checks, deduplication, PII redaction and
augmentation, the same for every task.

A task says where its records hold text through a `DataView` (`Task.data_view(cfg)`), and its job passes the
splits it read (`Task.splits(cfg, log)`) through `prepare_splits` before encoding them. In order:
  1. data.check: the checks of tunelab.data.checks on the splits as read, a short summary in the log;
  2. data.dedup: training records that repeat an earlier training record, or (nearly) equal a validation or
     test record, are dropped from train (validation and test stay whole, so scores compare);
  3. data.redact_pii: every split's texts get typed placeholders (tunelab.data.pii);
  4. data.augment: edited / back-translated copies of training records are added (tunelab.data.augment).
Validation and test are never augmented or deduplicated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable


@dataclass(frozen=True)
class DataView:
    """Where one task's records hold their texts. Built per config by `Task.data_view(cfg)`."""

    texts: Callable[[dict], list[str]]
    """The texts of a record, in reading order (what duplicates, leakage, lengths, charset and PII look at)."""
    label: Callable[[dict], Hashable] | None = None
    """The record's label, for label balance (classification); None = the task has no single label."""
    rewrite: Callable[[dict, Callable[[str], str]], dict] | None = None
    """rewrite(record, fn) -> a copy of the record with each text t replaced by fn(t) (redaction, augmentation);
    None = this task's texts cannot be rewritten (e.g. character offsets point into them)."""
    no_rewrite: str = ""
    """Why `rewrite` is None, for the error that refuses data.redact_pii / data.augment."""
    turns: Callable[[dict], list[tuple[str, str]]] | None = None
    """(role, content) of each turn of a conversation record (causal LMs), for turn checks; None = not chats."""
