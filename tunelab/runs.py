"""A finished run, loaded once: its config, model, tokenizer, task and the task's metadata.

`load_run(RUN_DIR)` serves every command that uses a run (`eval`, `predict`, `chat`, `merge`) and every
task: the task (tunelab.tasks) loads its own model kind. `evaluate_run` / `predict_records` are those
commands' API: they apply the settings a finished run may change, then hand over to the task.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError


@dataclass
class Run:
    """A finished run, model in eval mode. `meta` is the task's own (labels, data format, ...)."""

    dir: Path
    cfg: Any  # tunelab.config.RunConfig
    task: Any  # tunelab.tasks.base.Task
    model: Any
    tokenizer: Any
    meta: dict


def run_config(run_dir: str | Path, overrides: list[str] | None = None):
    """The config of a finished run (with `overrides` applied and validated), or one clear error."""
    from tunelab.config import load_config

    from tunelab.resume import marker_status

    run_dir = Path(run_dir)
    if marker_status(run_dir) == "training":
        raise TunelabError(f"{run_dir} has not finished training (it is training now, or was interrupted): "
                           f"finish it with `tunelab resume {run_dir}`, then use it")
    if not is_run(run_dir):
        raise TunelabError(f"{run_dir} is not a finished tunelab run (needs config.yaml and model/); "
                           "pass the output_dir of `tunelab train`")
    return load_config(run_dir / "config.yaml", overrides)


def run_task(run_dir: str | Path):
    """The task (tunelab.tasks.base.Task) of a finished run, without loading its model."""
    from tunelab.tasks import task_for

    return task_for(run_config(run_dir))


def is_run(path: str | Path) -> bool:
    """True for a folder that holds a finished run's config.yaml and model/ (what load_run needs)."""
    from tunelab.resume import marker_status

    return ((Path(path) / "config.yaml").is_file() and (Path(path) / "model").is_dir()
            and marker_status(path) != "training")


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> Run:
    """Load a finished run of any task; its task (tunelab.tasks) loads the model.

    `overrides` are `a.b=value` settings for this use, applied to a fresh copy of the config: nothing is
    written back to the run. An ensemble (`tunelab ensemble`: RUN_DIR/model/ensemble.json) loads its members
    instead, and its model is a tunelab.ensemble.Ensemble, whose probabilities `run_probabilities` averages.
    """
    from tunelab.ensemble import is_ensemble, load_ensemble
    from tunelab.tasks import task_for

    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    task = task_for(cfg)
    if is_ensemble(run_dir):
        model, tokenizer, meta = load_ensemble(run_dir, cfg, task)
    else:
        model, tokenizer, meta = task.load(run_dir, cfg)
    return Run(run_dir, cfg, task, model, tokenizer, meta)


def run_probabilities(run: Run, records: list[dict] | None, source: str, log) -> list:
    """The label probabilities of a loaded run on `records` (None: its own test split), one array per record in
    the order of run.meta["labels"]: its task's `Task.probabilities`, or for an ensemble the weighted mean of its
    members' own. A task's evaluate / predict get their probabilities here, so an ensemble is scored and used
    by the same code as a single run."""
    from tunelab.ensemble import Ensemble

    if isinstance(run.model, Ensemble):
        return run.model.probabilities(records, source, log)
    if run.task.probabilities is None:
        raise TunelabError(f"{run.dir} is a {run.task.name} run, which gives no label probabilities")
    return run.task.probabilities(run, records, source, log)


def task_verb(run_dir: str | Path, verb: str):
    """The function behind `tunelab VERB RUN_DIR` (e.g. merge, chat) for the run's task, or one clear error."""
    from tunelab.tasks import tasks

    task = run_task(run_dir)
    if verb not in task.verbs:
        registry = tasks()
        offering = [name for name in registry.names() if verb in registry.get(name).verbs]
        raise TunelabError(f"{run_dir} is a {task.name} run; {verb} works on {' and '.join(offering)} runs")
    return task.verbs[verb]


def load_model_dir(model_dir: Path, auto_class) -> tuple:
    """(model in eval mode, tokenizer) of a run's RUN_DIR/model: a tunelab scratch model, a LoRA adapter on
    RUN_DIR/base, or a plain transformers folder loaded with `auto_class` (e.g. AutoModelForTokenClassification);
    a compressed model (compression.json) is rebuilt by tunelab.compress.store."""
    from tunelab.compress.store import is_compressed, load_compressed

    model_dir = Path(model_dir)
    if is_compressed(model_dir):
        return load_compressed(model_dir)
    if (model_dir / "scratch_config.json").exists():
        from tunelab.models.scratch import load_scratch

        model, tokenizer = load_scratch(model_dir)
    else:
        from transformers import AutoTokenizer

        if (model_dir / "adapter_config.json").exists():
            model = load_adapter(model_dir, auto_class)
        else:
            model = auto_class.from_pretrained(str(model_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model.eval()
    return model, tokenizer


def load_adapter(model_dir: Path, auto_class):
    """A run's LoRA adapter (RUN_DIR/model) on the run's own base model, RUN_DIR/base beside it.

    Never the base path recorded in adapter_config.json: that is absolute, so a copied or moved run would
    load (or miss) the base of the folder it was copied from. `auto_class` is e.g. AutoModelForCausalLM.
    """
    import warnings

    import torch
    from peft import PeftModel

    base_dir = model_dir.parent / "base"
    if not (base_dir / "config.json").is_file():
        raise TunelabError(f"{model_dir} is a LoRA adapter but its base model {base_dir} is missing; copy or "
                           "move the whole run folder (model/ and base/ together)")
    broken = sorted(p.name for p in base_dir.iterdir() if p.is_symlink() and not p.exists())
    if broken:  # runs of tunelab 0.1.0 linked to the base weights instead of holding them
        raise TunelabError(f"{base_dir} links to base weights that are gone ({', '.join(broken)}); runs of "
                           "earlier tunelab versions are only links: put the base model back where it was, or "
                           "train the run again")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated for v6
        warnings.simplefilter("ignore", FutureWarning)
        # fp32 as in training, whatever dtype the base files hold (transformers 5 loads their own by default)
        base = auto_class.from_pretrained(str(base_dir), dtype=torch.float32)
        return PeftModel.from_pretrained(base, str(model_dir))


def evaluate_run(run_dir: str | Path, data: str | None = None, log=print, *,
                 overrides: list[str] | None = None) -> tuple[dict, Path]:
    """The task's metrics of a run's model on labelled `data` (default: the run's own test split).

    `overrides` (`data.text_field=body`, `generate.max_new_tokens=32`, ...) apply to this evaluation only
    (see `load_run`). Written to RUN_DIR/eval-<data name>.json (the run's own eval.json is left as it is).
    """
    from tunelab.io import atomic_write_json

    run = load_run(run_dir, overrides)
    records, source, name = (None, "", "test") if data is None else \
        (read_records(run_dir, data, overrides), data, Path(data).stem)
    metrics = run.task.evaluate(run, records, source, log)
    out = Path(run_dir) / f"eval-{name}.json"
    atomic_write_json(out, metrics)
    return metrics, out


def read_records(run_dir: str | Path, path: str, overrides: list[str] | None = None, log=None) -> list[dict]:
    """The records of a data file given to `eval --data` / `predict --input`, read the way the run's task reads
    data (its `read_data`; default tunelab.data.sources.load_records). Loads no model."""
    from tunelab.tasks import task_for

    cfg = run_config(run_dir, overrides)
    task = task_for(cfg)
    if task.read_data is not None:
        return task.read_data(path, cfg, log)
    from tunelab.data.sources import load_records

    return load_records(path, log)


def predict_records(run_dir: str | Path, records: list[dict] | None, source: str, *,
                    texts: list[str] | None = None, overrides: list[str] | None = None,
                    log=None) -> list[dict]:
    """Each record plus the task's prediction (classification: `prediction` and `scores`; causal_lm:
    `generated`). `texts` (predict --text) become records the way the run's task reads them.

    `log` (default: standard error, as standard output may carry the JSONL) takes the task's notes.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    run = load_run(run_dir, overrides)
    if texts:
        records = records_of_texts(run, texts)
    return run.task.predict(run, records, source, log)


def records_of_texts(run: Run, texts: list[str]) -> list[dict]:
    """One record per text, the way the run's task reads a bare text (`predict --text`, `tunelab serve`)."""
    if run.task.text_records:
        return run.task.text_records(texts, run)
    return [{run.cfg.data.text_field: t} for t in texts]
