"""`tunelab validate`'s checks beyond the config schema: what can go wrong at the start of a run, found
without training and without loading any weights.

`check_config(cfg)` returns every problem it finds (one line each, starting with the config key to change):
the data files exist and can be read, the model reference resolves (a known builtin name, a folder with
config.json, an existing GGUF file, a known scratch kind) and has positions for `model.max_length` (read from
its config.json), the first records of each data file have the fields the task needs, the early-stopping
metric is one the task computes, and `output_dir` can take a run. The config itself was checked by
`tunelab.config.load_config` before.
"""
from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError

RECORDS_CHECKED = 5  # records read per data file: a wrong field name shows in the first one


PARTS = ("model", "data", "metric", "output")


def check_config(cfg, parts: tuple[str, ...] = PARTS) -> list[str]:
    """Every problem found in `cfg` (a RunConfig) that would stop or spoil a run; [] when none.

    `parts` limits the checks to the model reference, the data files and/or the early-stopping metric
    (see `usable_parts`: a section with its own config problems is not checked further).
    """
    from tunelab.tasks import task_for

    problems = check_model(cfg.task, cfg.model.name, cfg.model.tokenizer) if "model" in parts else []
    if "model" in parts and not problems:
        problems += check_positions(cfg.model.name, cfg.model.max_length)
    for key in ("train", "validation", "test") if "data" in parts else ():
        ref = getattr(cfg.data, key)
        if ref is not None:
            problems += check_data_file(f"data.{key}", ref, task_for(cfg), cfg.data)
    if "metric" in parts:
        problems += check_metric(cfg)
    if "output" in parts:
        problems += check_output(cfg.output_dir)
    if set(parts) == set(PARTS):  # what the task itself asks of a whole config (e.g. pretraining's model)
        keys = {p.split(":", 1)[0] for p in problems}
        problems += [p for p in task_for(cfg).check_config(cfg) if p.split(":", 1)[0] not in keys]
        from tunelab.methods import method_problems  # e.g. distill's teacher: a finished run of this task

        problems += [p for p in method_problems(cfg) if p.split(":", 1)[0] not in keys]
    return problems


def usable_parts(path: str | Path, overrides: list[str]):
    """(RunConfig, parts) built from the sections of a config that load cleanly, for a config that does not
    as a whole: its own problems are reported anyway, and the deeper checks still run on the sections
    without any (task, model, data, train.early_stopping; defaults elsewhere). None when the file cannot be
    read as a mapping or `task` itself is wrong.
    """
    import yaml

    from tunelab.config import apply_overrides, config_from_dict
    from tunelab.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        data = apply_overrides(data, overrides) if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError):
        return None

    def loads(part: dict) -> bool:
        try:
            config_from_dict(part)
            return True
        except ConfigError:
            return False

    base = {"task": data["task"]} if data and "task" in data else {}
    if data is None or not loads(base):
        return None
    parts = []
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    for part, section in (("model", {"model": data.get("model", {})}), ("data", {"data": data.get("data", {})}),
                          ("metric", {"train": {"early_stopping": train.get("early_stopping", {})}}),
                          ("output", {"output_dir": data.get("output_dir", "runs/run")})):
        if loads({**base, **section}):
            base.update(section)
            parts.append(part)
    return config_from_dict(base), tuple(parts)


# ---------------------------------------------------------------------------------------------
# The model reference


def check_model(task: str, ref: str, tokenizer: str | None = None) -> list[str]:
    """Problems with `model.name` (and `model.tokenizer` for scratch models), found without loading weights.

    builtin:NAME must be registered and its package installed; gguf:PATH must be a file; scratch:KIND a
    kind the task can build; anything else a folder with config.json (or a saved scratch model).
    """
    try:
        if ref.startswith("builtin:"):
            _check_builtin(ref)
        elif ref.startswith("gguf:"):
            if not Path(ref.removeprefix("gguf:")).expanduser().is_file():
                raise TunelabError(f"model.name: GGUF file {ref.removeprefix('gguf:')!r} not found; give "
                                   "gguf:PATH to an existing .gguf file (relative paths start at the "
                                   "current folder)")
        elif ref.startswith("scratch:"):
            _check_scratch_kind(task, ref)
            return _check_tokenizer(tokenizer)
        elif not _is_scratch(ref):
            from tunelab.models.registry import resolve_model  # a folder: checks config.json, loads nothing

            resolve_model(ref)
    except TunelabError as e:
        return [str(e)]
    return []


def check_positions(ref: str, max_length: int) -> list[str]:
    """`model.max_length` against the positions in the model's config.json (read; no weights loaded).

    GGUF files, built-ins that are converted on first use, and scratch models are checked when training starts.
    """
    from types import SimpleNamespace

    from transformers import AutoConfig

    from tunelab.models.load import check_max_length

    folder = _config_folder(ref)
    if folder is None:
        return []
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError):  # an unreadable config.json: loading the model says what is wrong
        return []
    try:
        check_max_length(max_length, SimpleNamespace(config=config), ref)  # reads only `.config`
    except TunelabError as e:
        return [str(e)]
    return []


def _config_folder(ref: str) -> Path | None:
    """The folder holding the config.json of a model reference, where finding it converts nothing."""
    from tunelab.models.registry import BUILTIN_MODELS, resolve_model

    if ref.startswith("gguf:") or _is_scratch(ref):
        return None
    if ref.startswith("builtin:"):
        model = BUILTIN_MODELS[ref.removeprefix("builtin:")]
        return None if model.where else model.locate()  # `where` is set where locate() would convert
    return resolve_model(ref)


def _check_builtin(ref: str, key: str = "model.name") -> None:
    """A registered builtin model whose package is installed (its `where`, like `tunelab models`, converts
    nothing; MiniLM's `locate` only finds a folder)."""
    from tunelab.models.registry import BUILTIN_MODELS

    name = ref.removeprefix("builtin:")
    if name not in BUILTIN_MODELS:
        raise TunelabError(f"{key}: unknown built-in model {ref!r}; known: "
                           f"{', '.join('builtin:' + k for k in BUILTIN_MODELS)} (see `tunelab models`)")
    model = BUILTIN_MODELS[name]
    try:
        model.where() if model.where else model.locate()
    except TunelabError as e:
        raise TunelabError(f"{key}: {ref}: {e}") from None


def _is_scratch(ref: str) -> bool:
    from tunelab.models.scratch import PREFIX, is_scratch_dir

    return ref.startswith(PREFIX) or is_scratch_dir(ref)


def _check_scratch_kind(task: str, ref: str) -> None:
    from tunelab.config import ModelConfig, RunConfig
    from tunelab.tasks import task_for

    kinds = task_for(RunConfig(task=task, model=ModelConfig(name=ref))).scratch_kinds  # the routed task's
    kind = ref.removeprefix("scratch:")
    if kind not in kinds:
        raise TunelabError(f"model.name: unknown scratch model {ref!r} for task {task}; known: "
                           f"{', '.join('scratch:' + k for k in kinds)}")


def _check_tokenizer(ref: str | None) -> list[str]:
    """`model.tokenizer` of a scratch model: a tokenizer folder or a model reference (null: MiniLM's)."""
    if ref is None:
        return []
    path = Path(ref).expanduser()
    if path.is_dir() and any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return []
    if ref.startswith("builtin:"):
        try:
            _check_builtin(ref, "model.tokenizer")
        except TunelabError as e:
            return [str(e)]
        return []
    if ref.startswith("gguf:") and Path(ref.removeprefix("gguf:")).expanduser().is_file():
        return []
    if (path / "config.json").is_file():
        return []
    return [f"model.tokenizer: {ref!r} is neither a tokenizer folder nor a model reference; create one with "
            f"`tunelab tokenizer train --input DATA --vocab-size 8000 --output {ref}`, or use builtin:minilm-l6"]


# ---------------------------------------------------------------------------------------------
# Data files and their fields


def check_data_file(key: str, ref: str, task, data_cfg) -> list[str]:
    """Problems with one data file: missing, unreadable, or its first records lack the fields `task` (a
    tunelab.tasks.base.Task) reads."""
    from tunelab.data.sources import load_records

    try:
        if task.check_data is not None:  # the task reads its data its own way (a corpus folder, ...)
            task.check_data(ref, data_cfg)
            return []
        records = load_records(ref)
    except TunelabError as e:
        return [f"{key}: {e}"]
    check = task.check_records
    try:
        if check is not None:
            check(records[:RECORDS_CHECKED], ref, data_cfg)
    except TunelabError as e:
        return [f"{key}: {e}"]
    return []


def require_fields(records: list[dict], source: str, fields: list[str], key: str) -> None:
    """Raise a DataError (file:line) for the first record without one of `fields`."""
    from tunelab.data.formats import fields_of, where
    from tunelab.errors import DataError

    for i, rec in enumerate(records):
        for name in fields:
            if name not in rec:
                path, line = where(rec, source)
                raise DataError(path, f"record {i + 1} has no field {name!r} (fields here: {fields_of(rec)}); "
                                      f"set {key} to the field that holds it", line)


# ---------------------------------------------------------------------------------------------
# The early-stopping metric and the output folder


def check_metric(cfg) -> list[str]:
    """The metric must be one the task that runs `cfg` computes on validation data (null: its default).

    The task after routing, as training sees it: causal_lm on a scratch GPT is pretraining.
    """
    metric = cfg.train.early_stopping.metric
    if metric is None:
        return []
    from tunelab.tasks import task_for

    task = task_for(cfg)
    if metric in task.metrics:
        return []
    return [f"train.early_stopping.metric: got {metric!r}; task {task.name} computes {', '.join(task.metrics)} "
            "(null picks the task's default)"]


def check_output(output_dir: str) -> list[str]:
    """`output_dir` must be able to take a run (not a file, not under a file, writable, not a folder of
    other files); an existing run is fine here, as `train --overwrite` may replace it."""
    from tunelab.run import check_output_dir

    try:
        check_output_dir(Path(output_dir), overwrite=True)
    except TunelabError as e:
        return [str(e)]
    return []
