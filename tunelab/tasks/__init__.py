"""The task registry. Each module in MODULES builds a `Task` (tunelab.tasks.base) and registers it in TASKS
when imported; `tasks()` imports them on first use, so importing this package stays light.

Adding a task: write tunelab/tasks/<name>.py ending in `TASKS.register(...)` and add its name to MODULES
(CONTRIBUTING.md has the whole recipe).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tunelab.registry import Registry

if TYPE_CHECKING:
    from tunelab.tasks.base import Task

MODULES = ("classification", "causal_lm", "pretrain", "seq2seq", "extractive_qa", "retrieval", "token_classification")  # the one line to add a task to (also their order)
TASKS: Registry[Task] = Registry("task", order=MODULES)


def tasks() -> Registry[Task]:
    """The registry with every task in MODULES registered."""
    for name in MODULES:
        importlib.import_module(f"tunelab.tasks.{name}")
    return TASKS


def get_task(name: str) -> Task:
    """The task registered as `name`; a TunelabError lists the known ones."""
    return tasks().get(name)


def task_for(cfg) -> Task:
    """The task that runs `cfg`: cfg.task's, or the one it hands the config to (`Task.route`)."""
    task = get_task(cfg.task)
    other = task.route(cfg) if task.route else None
    return get_task(other) if other else task
