"""Ensembles of finished runs (`tunelab ensemble`): the weighted mean of their label probabilities, written as
a run folder so that every command that takes a run takes it (`tunelab eval / predict / serve DIR`).

An ensemble folder holds config.yaml (the first member's config, output_dir the ensemble), the run marker
(finished), model/ensemble.json (the members: their paths relative to the folder and absolute, weights,
labels, when each finished), model/labels.json (the ensemble's label order: the first member's), eval.json
(the ensemble's test metrics, each member's beside them, the inference cost) and report.html.

`tunelab.runs.load_run` loads the members of such a folder, and its model is an `Ensemble`; the task's evaluate
and predict take their probabilities from `tunelab.runs.run_probabilities`, which for an ensemble is the
weighted mean of its members' own `Task.probabilities`: each member reads the records with its own tokenizer,
max_length and method, so runs with different tokenizers (MiniLM and a scratch model) combine, and the metrics
and decoding are the task's own. Token classification averages per-word tag probabilities.

Checks before a model loads, each a one-line error: two runs or more, finished, of one task that gives
probabilities (Task.probabilities), with the same labels (in any order: they are aligned), tested on one test
split (the same data.test file, or the same data.train, data.validation, fractions and train.seed it was
carved with) and reading records the same way (the task's data.* settings, e.g. data.text_field, and
data.redact_pii, which decides whether the test split is read redacted), because the ensemble's scores are
taken on that split and each record is read once for all members; --weights one
non-negative number per run, not all 0; --output a new or empty folder, or an ensemble with --overwrite. The
folder is written in a staging folder and swapped in (tunelab.io.staged_dir).

Written here rather than with a library: averaging aligned probability arrays is a few lines, and what matters
is the run-folder contract around it.
"""
from __future__ import annotations

import copy
import html
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tunelab.errors import TunelabError

ENSEMBLE_FILE = "ensemble.json"  # RUN_DIR/model/ensemble.json marks an ensemble and lists its members
LABELS_FILE = "labels.json"  # RUN_DIR/model/labels.json: a run's labels in its model's order (models.build)
FORMAT = 1


def is_ensemble(path: str | Path) -> bool:
    """True for a folder written by `tunelab ensemble` (it holds model/ensemble.json)."""
    return (Path(path) / "model" / ENSEMBLE_FILE).is_file()


# ---------------------------------------------------------------------------------------------
# The loaded ensemble: what tunelab.runs.load_run returns as an ensemble run's model


class NotOneModel:
    """Stands in for a model or tokenizer where an ensemble has none: any use is one clear error, so commands
    that need one model (explain, export, compress, a distillation teacher) say so instead of failing inside."""

    def __init__(self, message: str):
        self._message = message

    def __getattr__(self, name: str):
        if name.startswith("_"):  # Python's own protocols (copy, pickle) probe these: they must stay absent
            raise AttributeError(name)
        raise TunelabError(self._message)

    def __call__(self, *args, **kwargs):
        raise TunelabError(self._message)


@dataclass
class Member:
    """One loaded member: its run, its share of the mean, and where its labels sit in the ensemble's order."""

    run: Any  # tunelab.runs.Run
    weight: float
    order: Any  # numpy int array: order[i] = the member's index of the ensemble's label i


class Ensemble(NotOneModel):
    """The model of an ensemble run: its members (weights summing to 1; members of weight 0 are not loaded).

    `probabilities` is what tunelab.runs.run_probabilities returns for it; `to` / `eval` / `parameters` act on
    every member, so `tunelab serve --device cuda` moves them all. Anything else is a NotOneModel error.
    """

    def __init__(self, run_dir: Path, members: list[Member], labels: list[str]):
        names = ", ".join(str(m.run.dir) for m in members)
        super().__init__(f"{run_dir} is an ensemble of {len(members)} runs ({names}): use it with tunelab eval, "
                         "predict or serve; a command that needs one model takes one of its members")
        self.members, self.labels = members, labels

    def probabilities(self, records: list[dict] | None, source: str, log) -> list:
        """The weighted mean of the members' probabilities (float64 sums, returned in the members' dtype, so
        an ensemble of one run twice gives that run's arrays exactly), in the ensemble's label order."""
        import numpy as np

        from tunelab.runs import run_probabilities

        total: list | None = None
        for m in self.members:
            probs = run_probabilities(m.run, records, source, log)
            if total is None:
                dtype = probs[0].dtype if probs else np.float32
                total = [np.zeros(p.shape, dtype=np.float64) for p in probs]
            if [p.shape for p in probs] != [t.shape for t in total]:
                raise TunelabError(f"{m.run.dir} read {source or 'the test split'} into other records or words "
                                   f"than {self.members[0].run.dir}; an ensemble's members must read data alike: "
                                   "build the ensemble again from runs with the same data settings")
            for t, p in zip(total, probs):
                t += m.weight * p[..., m.order].astype(np.float64)
        return [t.astype(dtype) for t in total or []]

    def to(self, device) -> "Ensemble":
        for m in self.members:
            m.run.model.to(device)
        return self

    def eval(self) -> "Ensemble":
        for m in self.members:
            m.run.model.eval()
        return self

    def parameters(self) -> Iterator:
        for m in self.members:
            yield from m.run.model.parameters()

    def buffers(self) -> Iterator:
        for m in self.members:
            yield from m.run.model.buffers()


def label_order(ensemble_labels: list[str], member_labels: list[str]):
    """For each of the ensemble's labels, its index among the member's (the same set in another order)."""
    import numpy as np

    where = {lab: i for i, lab in enumerate(member_labels)}
    return np.array([where[lab] for lab in ensemble_labels], dtype=np.int64)


def assemble(run_dir: Path, labels: list[str], runs: list, weights: list[float]) -> Ensemble:
    """The Ensemble of loaded member runs with their (normalised) weights; members of weight 0 are left out."""
    members = [Member(run, w, label_order(labels, run.meta["labels"])) for run, w in zip(runs, weights) if w > 0]
    return Ensemble(run_dir, members, labels)


def load_ensemble(run_dir: Path, cfg, task) -> tuple:
    """(Ensemble, a NotOneModel tokenizer, meta) of an ensemble folder: its members found, checked unchanged
    and loaded with the ensemble's record-reading settings (so `eval --text-field body` reaches them)."""
    from tunelab.runs import load_run

    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    overrides = reading_overrides(cfg, task)
    runs, loaded = [], {}
    for i, entry in enumerate(spec["members"], start=1):
        if entry["weight"] <= 0:
            runs.append(None)
            continue
        path = locate_member(run_dir, entry, i)
        check_unchanged(run_dir, path, entry)
        key = path.resolve()
        if key not in loaded:
            loaded[key] = load_run(path, overrides)
        run = loaded[key]
        if run.task.name != spec["task"] or list(run.meta.get("labels") or []) != entry["labels"]:
            raise TunelabError(f"{run_dir}: member {path} is no longer the {spec['task']} run with the labels it "
                               f"was built from; build the ensemble again (tunelab ensemble ... --overwrite)")
        runs.append(run)
    model = assemble(run_dir, spec["labels"], runs, [e["weight"] for e in spec["members"]])
    meta = {**model.members[0].run.meta, "labels": list(spec["labels"])}
    return model, NotOneModel(model._message), meta


def read_spec(run_dir: Path) -> dict:
    """model/ensemble.json, checked for the fields this version reads."""
    path = run_dir / "model" / ENSEMBLE_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        ok = spec.get("format") == FORMAT and spec["members"] and all(
            {"path", "absolute", "weight", "labels"} <= set(m) for m in spec["members"])
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise TunelabError(f"{path} is not an ensemble description this tunelab version reads (format {FORMAT}); "
                           "build the ensemble again with `tunelab ensemble RUN_A RUN_B ... --output "
                           f"{run_dir} --overwrite`")
    return spec


def locate_member(run_dir: Path, entry: dict, number: int) -> Path:
    """A member's folder: its path relative to the ensemble first (the folders were moved together), then
    its absolute path (the ensemble alone was moved); one error naming both when neither is a finished run."""
    from tunelab.runs import is_run

    relative = Path(os.path.normpath(run_dir / entry["path"]))
    for place in (relative, Path(entry["absolute"])):
        if is_run(place):
            return place
    raise TunelabError(f"{run_dir}: member {number} is not at {relative} (its place relative to "
                       f"the ensemble) nor at {entry['absolute']}; move the member runs with the ensemble, keeping "
                       "their places beside it, or put them back")


def check_unchanged(run_dir: Path, path: Path, entry: dict) -> None:
    """A member trained again after the ensemble was built would change its scores silently: refuse it."""
    now = finished_time(path)
    if entry.get("finished") and now and now != entry["finished"]:
        raise TunelabError(f"{run_dir}: member {path} was trained again after the ensemble was built (it finished "
                           f"{now}, the ensemble was built on the run that finished {entry['finished']}); build "
                           "the ensemble again (tunelab ensemble ... --overwrite)")


def finished_time(path: Path) -> str | None:
    """When a run finished, from its run marker (runs of earlier versions have none)."""
    from tunelab.resume import RUN_MARKER

    try:
        return json.loads((Path(path) / RUN_MARKER).read_text(encoding="utf-8")).get("time")
    except (OSError, ValueError, AttributeError):
        return None


def reading_keys(task) -> list[str]:
    """The task's data.* settings that say how a record is read (data.text_field, data.tokens_field, ...)."""
    return [s for s in task.settings if s.startswith("data.") and not s.endswith(".")]


def setting(cfg, key: str):
    """The value of a dotted config key, e.g. setting(cfg, "data.text_field")."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def reading_overrides(cfg, task) -> list[str]:
    """key=value overrides that make a member read records as the ensemble's config says."""
    return [f"{key}={json.dumps(setting(cfg, key))}" for key in reading_keys(task)]


# ---------------------------------------------------------------------------------------------
# Checks before any model loads


@dataclass
class Candidate:
    """A run given to `tunelab ensemble`, read without loading its model."""

    path: Path
    cfg: Any
    task: Any
    labels: list[str]
    finished: str | None


def inspect_run(path: str) -> Candidate:
    """The config, task and labels of a finished run (model/labels.json), or one clear error."""
    from tunelab.runs import run_config
    from tunelab.tasks import task_for

    cfg = run_config(path)
    task = task_for(cfg)
    if task.probabilities is None:
        raise TunelabError(f"ensemble: {path} is a {task.name} run; an ensemble averages label probabilities, "
                           f"which {' and '.join(probability_tasks())} runs give")
    labels_path = Path(path) / "model" / LABELS_FILE
    try:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        labels = None
    if not isinstance(labels, list) or not labels:
        raise TunelabError(f"{path}: {labels_path} is missing or unreadable, so its labels are unknown; train the "
                           "run again with this tunelab version")
    return Candidate(Path(path), cfg, task, [str(x) for x in labels], finished_time(Path(path)))


def check_count(runs: list[str]) -> None:
    """Two runs or more (one run twice counts as two)."""
    if len(runs) < 2:
        raise TunelabError(f"ensemble: got {len(runs)} run ({', '.join(runs)}); give two or more finished runs "
                           "to combine")


def check_weights(weights: list[float] | None, n: int) -> list[float]:
    """One non-negative finite weight per run, not all 0, normalised to sum 1 (default: equal)."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise TunelabError(f"ensemble --weights: got {len(weights)} weights for {n} runs; give one per run, in "
                           "the order of the runs")
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad:
        raise TunelabError(f"ensemble --weights: got {bad[0]:g}; a weight is a share of the mean, a number of 0 "
                           "or more (e.g. --weights 2 1)")
    if sum(weights) <= 0:
        raise TunelabError("ensemble --weights: every weight is 0; give at least one run a positive weight")
    total = sum(weights)
    return [w / total for w in weights]


def probability_tasks() -> list[str]:
    """The tasks whose runs can be ensembled (they register Task.probabilities)."""
    from tunelab.tasks import tasks

    registry = tasks()
    return [name for name in registry.names() if registry.get(name).probabilities is not None]


def data_ref(ref):
    """A data reference as it will be read from here: a path made absolute, builtin:NAME as it is."""
    if isinstance(ref, str) and not ref.startswith("builtin:"):
        return os.path.abspath(ref)
    if isinstance(ref, dict):
        return {k: data_ref(v) for k, v in ref.items()}
    return ref


def split_settings(cfg) -> dict[str, Any]:
    """The settings that decide a run's test split: its data.test file, or how it was carved out of train."""
    d = cfg.data
    if d.test:
        return {"data.test": data_ref(d.test)}
    return {"data.train": data_ref(d.train), "data.validation": data_ref(d.validation),
            "data.val_fraction": d.val_fraction, "data.test_fraction": d.test_fraction, "train.seed": cfg.train.seed}


def check_members(cands: list[Candidate]) -> None:
    """One task, one label set, one test split, records read alike (see the module doc)."""
    first = cands[0]
    for c in cands:
        if c.task.name != first.task.name:
            raise TunelabError(f"ensemble: {first.path} is a {first.task.name} run and {c.path} a {c.task.name} "
                               "run; an ensemble combines runs of one task")
        if set(c.labels) != set(first.labels):
            raise TunelabError(f"ensemble: {c.path} and {first.path} have different labels "
                               f"({label_difference(c, first)}); an ensemble averages probabilities over one label "
                               "set: combine runs trained on the same labels")
    for c in cands:
        if not c.cfg.data.test and c.cfg.data.test_fraction == 0:
            raise TunelabError(f"ensemble: {c.path} has no test split (data.test_fraction is 0 and no data.test "
                               "file); an ensemble is scored on its members' test split")
        split, first_split = split_settings(c.cfg), split_settings(first.cfg)
        if split != first_split:
            key = next(k for k in sorted(set(split) | set(first_split)) if split.get(k) != first_split.get(k))
            raise TunelabError(
                f"ensemble: {first.path} and {c.path} were tested on different test splits ({key}: "
                f"{first_split.get(key, '(unused)')!r} and {split.get(key, '(unused)')!r}); the ensemble is scored "
                "on one test split none of its members trained on: give the members one data.test file (their "
                "train.seed may then differ), or the same data.train, data.validation, fractions and train.seed")
        for key in reading_keys(first.task):
            if setting(c.cfg, key) != setting(first.cfg, key):
                raise TunelabError(f"ensemble: {key} is {setting(first.cfg, key)!r} in {first.path} and "
                                   f"{setting(c.cfg, key)!r} in {c.path}; an ensemble reads each record once for "
                                   "all its members: combine runs that read the same fields")
        if c.cfg.data.redact_pii != first.cfg.data.redact_pii:
            raise TunelabError(f"ensemble: data.redact_pii is {str(first.cfg.data.redact_pii).lower()} in "
                               f"{first.path} and {str(c.cfg.data.redact_pii).lower()} in {c.path}; an ensemble "
                               "reads its test split once for all its members, redacted or not: combine runs "
                               "trained with the same data.redact_pii")


def label_difference(a: Candidate, b: Candidate) -> str:
    """'runs/a has x, y that runs/b lacks; runs/b has z that runs/a lacks' (the parts that apply)."""
    parts = []
    for one, other in ((a, b), (b, a)):
        extra = [lab for lab in one.labels if lab not in set(other.labels)]
        if extra:
            parts.append(f"{one.path} has {', '.join(map(repr, extra))}, which {other.path} lacks")
    return "; ".join(parts)


def check_output(output: Path, members: list[Path], overwrite: bool) -> None:
    """--output: a new or empty folder, or an ensemble with --overwrite; never a member or a folder holding one."""
    from tunelab.io import nearest_existing, not_a_folder

    why = not_a_folder(output)
    if why:
        raise TunelabError(f"ensemble --output {output} {why}; give a folder")
    existing = nearest_existing(output)
    target = output.resolve()
    for m in members:
        if m.resolve() == target or target in m.resolve().parents:
            raise TunelabError(f"ensemble --output {output} is or holds the run {m}, which writing the ensemble "
                               "would replace; choose another folder")
    if output.is_dir() and any(output.iterdir()):
        if not is_ensemble(output):
            raise TunelabError(f"ensemble --output {output} is not empty and is not an ensemble; --overwrite "
                               "replaces only an ensemble: choose another folder, or move or delete that one")
        if not overwrite:
            raise TunelabError(f"ensemble --output {output} already holds an ensemble; pass --overwrite to "
                               "replace it, or choose another folder")
    folder = existing.parent if existing == output.absolute() else existing  # the staging folder goes beside
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TunelabError(f"ensemble --output {output}: the folder {folder} is not writable; choose another")


# ---------------------------------------------------------------------------------------------
# Building: load, score the members and the ensemble on the test split, write the folder


@dataclass
class Scored:
    """One evaluation on the test split: metrics, seconds, parameters of the model(s) it ran."""

    metrics: dict
    seconds: float
    parameters: int


def _quiet(_line: str) -> None:
    """The log of a member's second, timed evaluation: its first one has said it all."""


def timed_evaluate(run, log) -> Scored:
    """The run's task evaluate on its own test split, timed (seconds after loading)."""
    started = time.perf_counter()
    metrics = run.task.evaluate(run, None, "", log)
    seconds = time.perf_counter() - started
    return Scored(metrics, seconds, sum(p.numel() for p in run.model.parameters()))


def build_ensemble(runs: list[str], output: str | Path, weights: list[float] | None = None,
                   overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Check, load, score and write an ensemble of `runs` at `output`; returns what eval.json holds."""
    from tunelab.runs import Run, load_run

    output = Path(output)
    check_count(runs)
    shares = check_weights(weights, len(runs))
    cands = [inspect_run(r) for r in runs]
    check_members(cands)
    check_output(output, [c.path for c in cands], overwrite)

    first = cands[0]
    loaded: dict[Path, Any] = {}
    for c in cands:  # a run given twice is loaded and scored once
        key = c.path.resolve()
        if key not in loaded:
            loaded[key] = load_run(c.path)
            timed_evaluate(loaded[key], log)  # a first pass, untimed: see below
    member_runs = [loaded[c.path.resolve()] for c in cands]
    cfg = copy.deepcopy(first.cfg)
    cfg.output_dir = str(output)
    model = assemble(output, first.labels, member_runs, shares)
    meta = {**model.members[0].run.meta, "labels": list(first.labels)}
    ensemble = timed_evaluate(Run(output, cfg, first.task, model, NotOneModel(model._message), meta), log)
    # Each member is timed after that first pass, as the ensemble is: a run's first evaluation pays for lazy
    # imports, allocations and cold caches that the ensemble, run after it, does not, and a cold member against
    # a warm ensemble made two members look cheaper than one ("0.1x the time of one member").
    scored = {key: timed_evaluate(run, _quiet) for key, run in loaded.items()}

    active = [scored[c.path.resolve()] for c, w in zip(cands, shares) if w > 0]
    summary = {"test": ensemble.metrics,
               "members": [{"run": str(c.path), "weight": w, "test": scored[c.path.resolve()].metrics,
                            "eval_seconds": round(scored[c.path.resolve()].seconds, 3),
                            "parameters": scored[c.path.resolve()].parameters} for c, w in zip(cands, shares)],
               "cost": cost(ensemble, active)}
    spec = {"format": FORMAT, "task": first.task.name, "labels": first.labels,
            "members": [member_entry(c, w, output) for c, w in zip(cands, shares)]}
    write_ensemble(output, cfg, spec, summary, report_page(output, first.task, cands, summary))
    return summary


def member_entry(c: Candidate, weight: float, output: Path) -> dict:
    """A member as model/ensemble.json records it: relative to the ensemble folder and absolute."""
    absolute = c.path.resolve()
    return {"path": os.path.relpath(absolute, output.resolve()), "absolute": str(absolute), "weight": weight,
            "labels": c.labels, "finished": c.finished}


def cost(ensemble: Scored, members: list[Scored]) -> dict:
    """The ensemble's inference cost against one member's: measured time of one evaluation over the test split
    (the members' mean), and parameters."""
    mean_seconds = sum(m.seconds for m in members) / len(members)
    mean_parameters = sum(m.parameters for m in members) / len(members)
    return {"members": len(members), "eval_seconds": round(ensemble.seconds, 3),
            "member_eval_seconds_mean": round(mean_seconds, 3),
            "time_multiple": round(ensemble.seconds / max(mean_seconds, 1e-9), 2),
            "parameters": ensemble.parameters,
            "parameter_multiple": round(ensemble.parameters / max(mean_parameters, 1), 2)}


def cost_line(c: dict) -> str:
    """The cost in one plain sentence."""
    return (f"{c['members']} members: {c['time_multiple']:.1f}x the time of one member "
            f"({c['eval_seconds']:.2f} s against {c['member_eval_seconds_mean']:.2f} s for one evaluation of the "
            f"test split), {c['parameters']:,} parameters ({c['parameter_multiple']:.1f}x one member's)")


def write_ensemble(output: Path, cfg, spec: dict, summary: dict, page: str) -> None:
    """The ensemble folder, written in a staging folder and swapped in whole."""
    from tunelab.config import dump_config
    from tunelab.io import atomic_write_json, atomic_write_text, staged_dir
    from tunelab.run import write_marker

    with staged_dir(output) as tmp:
        atomic_write_text(tmp / "config.yaml", dump_config(cfg))
        atomic_write_json(tmp / "model" / ENSEMBLE_FILE, spec)
        atomic_write_json(tmp / "model" / LABELS_FILE, spec["labels"])
        atomic_write_json(tmp / "eval.json", summary)
        atomic_write_text(tmp / "report.html", page)
        write_marker(tmp, cfg, "finished")


def score_columns(task, metrics: dict) -> list[str]:
    """The task's metrics that are single numbers, in the task's order, then n."""
    return [k for k in (*task.metrics, "n") if isinstance(metrics.get(k), (int, float))]


def report_page(output: Path, task, cands: list[Candidate], summary: dict) -> str:
    """report.html: members' test scores beside the ensemble's, and the inference cost."""
    from tunelab.evaluate.report import html_page

    columns = score_columns(task, summary["test"])

    def cells(metrics: dict) -> str:
        return "".join(f"<td>{metrics[k]:.4f}</td>" if isinstance(metrics.get(k), float)
                       else f"<td>{html.escape(str(metrics.get(k)))}</td>" for k in columns)

    head = "".join(f"<th>{html.escape(k)}</th>" for k in ("run", "weight", *columns))
    rows = "".join(f"<tr><td>{html.escape(m['run'])}</td><td>{m['weight']:.3f}</td>{cells(m['test'])}</tr>"
                   for m in summary["members"])
    rows += f"<tr><th>ensemble</th><th>1.000</th>{cells(summary['test'])}</tr>"
    member_cost = "".join(f"<li>{html.escape(m['run'])}: {m['eval_seconds']:.2f} s, {m['parameters']:,} parameters"
                          "</li>" for m in summary["members"])
    title = f"tunelab ensemble: {output.name}"
    body = (f"<h1>{html.escape(title)}</h1><p>{task.name}: the weighted mean of {len(cands)} runs' probabilities, "
            "scored on their common test split</p><h2>Test scores</h2>"
            f"<table><tr>{head}</tr>{rows}</table><h2>Inference cost</h2>"
            f"<p>{html.escape(cost_line(summary['cost']))}</p><ul>{member_cost}</ul>"
            "<p>times: one evaluation of the test split each, after loading and after each member's first, "
            "untimed evaluation (so no time includes first-call costs); the ensemble runs every member of "
            "positive weight</p>")
    return html_page(title, body)


def build_ensemble_cli(args) -> int:
    """`tunelab ensemble RUN_A RUN_B ... --output DIR [--weights ...] [--overwrite]`."""
    from tunelab.runs import run_task

    summary = build_ensemble(args.runs, args.output, args.weights, args.overwrite)
    task = run_task(args.runs[0])
    for m in summary["members"]:
        print(f"{m['run']} (weight {m['weight']:.3f}): {task.metrics_line(m['test'])}")
    print(f"ensemble: {task.metrics_line(summary['test'])}")
    print(f"inference cost: {cost_line(summary['cost'])}")
    print(f"ensemble written to {args.output} (eval.json, report.html); use it like a run: tunelab eval "
          f"{args.output}, tunelab predict {args.output}, tunelab serve {args.output}")
    return 0
