"""`tunelab compress`: a finished run's model through the compression steps, written as a run of its own.

The steps run in one order whatever order the options came in (see tunelab.compress): prune -> low rank ->
retrain (once, after both) -> int8. Retraining is the run's own training: `tunelab.run.train` on the run's
config (method full, train.max_steps = N, output_dir = RUN_DIR/compressed/NAME) with a job factory that
hands the task's own TaskJob the compressed model after `prepare()` and saves it with
`store.save_compressed`. So the result is a run like any other (config.yaml, model/, eval.json,
metrics.jsonl, report.html) that eval / predict / chat take. Without retraining the same layout is written
here, in a staging folder swapped in when complete. Then the result is evaluated on the run's test split and
RUN_DIR/compressed/NAME/compress.json records what was done and what it cost.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from tunelab.errors import TunelabError

COMPRESSED = "compressed"  # RUN_DIR/compressed/NAME
RECORD = "compress.json"  # beside eval.json: the steps, sizes, times and metrics of one compression
IMPORTANCE_BATCHES = 8  # training batches the structured-pruning importance is summed over
SIDE_FILES = ("data_format.json",)  # files a task's save() writes beside model/ (causal_lm: the data format)
PRUNE_KINDS = ("structured", "magnitude")
SCHEMES = ("int8-dynamic", "int8-weight-only")


@dataclass
class Request:
    """What `tunelab compress` was asked to do (its options, unchecked)."""

    prune: str | None = None
    sparsity: float | None = None
    low_rank: int | None = None
    low_rank_energy: float | None = None
    retrain_steps: int | None = None
    quantize: str | None = None
    name: str | None = None
    overwrite: bool = False
    overrides: list[str] = field(default_factory=list)
    """train.* KEY=VALUE settings for the retraining."""

    @property
    def compresses(self) -> bool:
        return bool(self.prune or self.low_rank is not None or self.low_rank_energy is not None or self.quantize)


def check_request(req: Request) -> None:
    """Refuse option combinations that cannot work, one line each, before anything loads."""
    if req.prune is not None and req.prune not in PRUNE_KINDS:
        raise TunelabError(f"--prune: {req.prune!r} is not a pruning kind; use structured or magnitude")
    if req.sparsity is not None and req.prune is None:
        raise TunelabError("--sparsity applies to pruning; add --prune structured or --prune magnitude")
    if req.prune is not None and req.sparsity is None:
        raise TunelabError(f"--prune {req.prune} needs --sparsity S, the share to remove, e.g. --sparsity 0.5")
    if req.sparsity is not None and not 0 < req.sparsity < 1:
        raise TunelabError(f"--sparsity: {req.sparsity} is outside (0, 1); give the share to remove, e.g. 0.5")
    if req.low_rank is not None and req.low_rank_energy is not None:
        raise TunelabError("--low-rank and --low-rank-energy exclude each other: give a rank R or an energy E")
    if req.low_rank is not None and req.low_rank < 1:
        raise TunelabError(f"--low-rank: {req.low_rank} is not a rank; give a positive integer such as 64")
    if req.low_rank_energy is not None and not 0 < req.low_rank_energy <= 1:
        raise TunelabError(f"--low-rank-energy: {req.low_rank_energy} is outside (0, 1]; give e.g. 0.9")
    if req.quantize is not None and req.quantize not in SCHEMES:
        raise TunelabError(f"--quantize: {req.quantize!r} is not a scheme; use {' or '.join(SCHEMES)}")
    _check_retraining(req)
    if req.name is not None and (not req.name or "/" in req.name or req.name.startswith(".")):
        raise TunelabError(f"--name: {req.name!r} is not a folder name; give a plain name such as small-int8")


def _check_retraining(req: Request) -> None:
    reshapes = req.prune or req.low_rank is not None or req.low_rank_energy is not None
    if req.retrain_steps is not None:
        if req.retrain_steps < 1:
            raise TunelabError(f"--retrain-steps: {req.retrain_steps}; give a positive number of steps")
        if not reshapes:
            raise TunelabError("--retrain-steps retrains after pruning or low rank (int8 is not retrained); add "
                               "--prune or --low-rank, or drop --retrain-steps")
    for text in req.overrides:
        key = text.split("=", 1)[0]
        if not key.startswith("train."):
            raise TunelabError(f"compress: {text}: only train.* settings of the retraining can be changed here")
        if key in ("train.max_steps", "train.epochs"):
            raise TunelabError(f"compress: {text}: the retraining length is --retrain-steps N")
        if req.retrain_steps is None:
            raise TunelabError(f"compress: {text} applies to the retraining; add --retrain-steps N")


def default_name(req: Request) -> str:
    """The folder name the steps give, e.g. structured-50+retrain-200+int8-dynamic, lowrank-r64."""
    parts = []
    if req.prune:
        parts.append(f"{req.prune}-{round(100 * req.sparsity):g}")
    if req.low_rank is not None:
        parts.append(f"lowrank-r{req.low_rank}")
    if req.low_rank_energy is not None:
        parts.append(f"lowrank-e{round(100 * req.low_rank_energy):g}")
    if req.retrain_steps:
        parts.append(f"retrain-{req.retrain_steps}")
    if req.quantize:
        parts.append(req.quantize)
    return "+".join(parts)


def target_of(run_dir: Path, req: Request) -> Path:
    return Path(run_dir) / COMPRESSED / (req.name or default_name(req))


def check_target(target: Path, overwrite: bool) -> None:
    """An existing result is replaced only with --overwrite, and only when it is a tunelab run."""
    from tunelab.run import is_tunelab_run

    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not target.is_dir() or not is_tunelab_run(target):
        raise TunelabError(f"{target} exists and is not a compressed run; move it away or choose another --name")
    if not overwrite:
        from tunelab.resume import marker_status

        if marker_status(target) == "training":
            raise TunelabError(f"{target} holds an unfinished retraining; go on with `tunelab resume {target}`, or "
                               "pass --overwrite to start again")
        raise TunelabError(f"{target} already exists; pass --overwrite to replace it or choose another --name")


# ---------------------------------------------------------------------------------------------
# The config of the result (and of its retraining)


def result_config(cfg, target: Path, retrain_steps: int | None, overrides: list[str]):
    """The run's config for RUN_DIR/compressed/NAME: method full (every remaining weight trains; a LoRA run's
    options must not come along), output_dir the folder, train.max_steps the retraining length."""
    from tunelab.config import apply_overrides, config_from_dict

    data = cfg.to_dict()
    data["method"] = {"name": "full"}
    data["output_dir"] = str(target)
    data = apply_overrides(data, list(overrides))
    if retrain_steps:
        data["train"]["max_steps"] = retrain_steps
    return config_from_dict(data, f"{target}/config.yaml")


# ---------------------------------------------------------------------------------------------
# The steps


@dataclass
class Outcome:
    """What one compression did, for compress.json."""

    steps: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    parameters_before: int = 0
    parameters_after: int = 0
    sparsity: float | None = None
    """Zeros among the layer stack's Linear weights, before int8."""


@contextlib.contextmanager
def timed(outcome: Outcome, phase: str):
    t0 = time.perf_counter()
    yield
    outcome.seconds[phase] = round(time.perf_counter() - t0, 3)


def load_full_model(run_dir: Path, log):
    """(model, tokenizer, run) of a finished run as one plain model: a LoRA adapter is merged first."""
    import warnings

    from tunelab.models.build import is_peft
    from tunelab.runs import load_run

    run = load_run(run_dir)
    model = run.model
    if is_peft(model):
        log("merging the LoRA adapter into the weights: the merged model is compressed")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = model.merge_and_unload()
    return model.float(), run.tokenizer, run


def reshape(model, req: Request, job, outcome: Outcome, log) -> None:
    """Prune, then factorise, `model` in place; each step's dict goes to outcome.steps."""
    from tunelab.compress import store

    if req.prune == "structured":
        from tunelab.compress.prune import apply_prune_structured, plan_structured, structured_importance

        with timed(outcome, "importance"):
            batches = list(islice(job.epoch_batches(0), IMPORTANCE_BATCHES))
            log(f"importance: gradient x weight over {len(batches)} training batches")
            model.to(job.device)  # the job's batches are on its device (a GPU when train.device picks one)
            importance = structured_importance(model, batches, job.loss, job.device)
            model.cpu()
        with timed(outcome, "prune"):
            step = plan_structured(model, req.sparsity, importance)
            apply_prune_structured(model, step)
    elif req.prune == "magnitude":
        from tunelab.compress.prune import apply_prune_magnitude, plan_magnitude, sparsity_of

        with timed(outcome, "prune"):
            step = plan_magnitude(req.sparsity)
            apply_prune_magnitude(model, step)
        log(f"magnitude pruning: {100 * sparsity_of(model):.1f}% of the layers' Linear weights are zero (same "
            "shapes: no fewer parameters, no faster)")
    if req.prune:
        outcome.steps.append(step)
        log(f"pruned ({req.prune}, {req.sparsity:g}): {outcome.parameters_before:,} -> "
            f"{store.count_parameters(model):,} parameters")
    if req.low_rank is not None or req.low_rank_energy is not None:
        from tunelab.compress.low_rank import apply_low_rank, plan_low_rank

        with timed(outcome, "low_rank"):
            step = plan_low_rank(model, rank=req.low_rank, energy=req.low_rank_energy)
            apply_low_rank(model, step)
        outcome.steps.append(step)
        log(f"low rank: {len(step['modules'])} Linear layers factorised; now {store.count_parameters(model):,} "
            "parameters")


def quantize(model, scheme: str, outcome: Outcome, log) -> None:
    from tunelab.compress.quantize import apply_quantize

    step = {"op": "quantize", "scheme": scheme}
    with timed(outcome, "quantize"):
        apply_quantize(model, step)
    outcome.steps.append(step)
    log(f"quantized: {scheme}")


# ---------------------------------------------------------------------------------------------
# Retraining: the task's own job, training the compressed model


class CompressedJob:
    """The run's TaskJob with the compressed model in place of the one it builds, saved as a compressed model.

    Everything else (data, batches, loss, validation, test, report) is the task's own, so the loop, early
    stopping, checkpoints and progress work as for any run. An inner job prepared already (for the pruning
    importance) is not prepared again.
    """

    def __init__(self, inner, model, steps: list[dict], source_dir: Path, base_run: Path, prepared: bool):
        self.__dict__.update(inner=inner, compressed=model, steps=steps, source_dir=source_dir,
                             base_run=base_run, prepared=prepared)

    def prepare(self) -> None:
        if not self.prepared:
            self.inner.prepare()
        self.compressed.requires_grad_(True)  # every remaining weight trains (merged LoRA weights were frozen)
        self.inner.model = self.compressed.to(self.inner.device)
        self.inner.log(f"retraining the compressed model: {sum(p.numel() for p in self.compressed.parameters()):,} "
                       "parameters, all trainable")

    @property
    def model(self):
        return self.inner.model

    @model.setter
    def model(self, value) -> None:
        self.inner.model = value

    def save(self, model_dir: Path, run_dir: Path) -> None:
        save_result(unmasked(self.inner.model), self.inner.tokenizer, model_dir, self.steps, self.source_dir)
        copy_side_files(self.base_run, run_dir)

    def __getattr__(self, name):  # default_metric, epoch_batches, loss, validate, test, ...
        return getattr(self.inner, name)


def unmasked(model):
    """`model` itself, or inside `prune.keep_zeros` (weight = weight_orig * weight_mask) a copy with the masks
    made permanent, so the saved weights have the plain names the loader expects."""
    from torch.nn.utils import prune

    if not prune.is_pruned(model):
        return model
    plain = copy.deepcopy(model)
    for module in plain.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return plain


def save_result(model, tokenizer, model_dir: Path, steps: list[dict], source_dir: Path) -> None:
    from tunelab.compress.store import save_compressed

    save_compressed(model, tokenizer, model_dir, steps, source_dir=source_dir)


def copy_side_files(base_run: Path, run_dir: Path) -> None:
    for name in SIDE_FILES:
        if (Path(base_run) / name).is_file():
            shutil.copyfile(Path(base_run) / name, Path(run_dir) / name)


def retrain(cfg, model, job, steps: list[dict], run_dir: Path, req: Request, show_progress: bool, log,
            resume: bool = False) -> None:
    """Train the compressed model N steps with the run's loop into RUN_DIR/compressed/NAME (a run); `resume`:
    go on from its newest checkpoint (tunelab resume)."""
    from tunelab.run import make_job, train

    def factory(job_cfg, device, say):
        inner = job if job is not None else make_job(job_cfg, device, say)
        return CompressedJob(inner, model, steps, Path(run_dir) / "model", Path(run_dir), prepared=job is not None)

    keep = contextlib.nullcontext()
    if req.prune == "magnitude":
        from tunelab.compress.prune import keep_zeros

        keep = keep_zeros(model)  # the pruned weights stay zero while the others train
    with keep:
        train(cfg, job_factory=factory, overwrite=req.overwrite, resume=resume, show_progress=show_progress,
              log=log)


def write_untrained(cfg, model, tokenizer, steps: list[dict], run_dir: Path, target: Path, log) -> None:
    """The result's run layout without retraining (config.yaml, model/, eval.json, marker), written in a
    staging folder and swapped in whole; its test metrics are measured there, so it appears complete."""
    from tunelab.config import dump_config
    from tunelab.io import atomic_replace_dir, atomic_write_json, atomic_write_text, follow_umask, staging_dir
    from tunelab.run import write_marker

    stage = staging_dir(target)
    try:
        atomic_write_text(stage / "config.yaml", dump_config(cfg))
        save_result(model, tokenizer, stage / "model", steps, Path(run_dir) / "model")
        copy_side_files(run_dir, stage)
        atomic_write_json(stage / "eval.json", {"test": test_metrics(stage, log), "steps": 0})
        write_marker(stage, cfg, "finished")
        follow_umask(stage)
        atomic_replace_dir(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def test_metrics(folder: Path, log) -> dict:
    """The task's metrics of the saved result on the run's test split (the folder is loaded back: this also
    checks that it loads)."""
    from tunelab.runs import load_run

    run = load_run(folder)
    return run.task.evaluate(run, None, "", log)


# ---------------------------------------------------------------------------------------------
# The whole command


def compress_run(run_dir: str | Path, req: Request, *, log=print, show_progress: bool = True) -> Path:
    """Compress RUN_DIR's model as `req` asks into RUN_DIR/compressed/NAME; returns that folder."""
    import torch

    from tunelab.compress import store
    from tunelab.runs import run_config

    check_request(req)
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if store.is_compressed(run_dir / "model"):
        raise TunelabError(f"{run_dir} is already a compressed variant; compress the base run "
                           f"{run_dir.parent.parent} with all the steps in one call (e.g. --prune ... --quantize ...)")
    if not req.compresses:
        raise TunelabError("compress: nothing to do; give --prune, --low-rank, --quantize (or --report)")
    if req.prune == "structured" and str(cfg.model.name).startswith("scratch:"):
        raise TunelabError(f"--prune structured: {run_dir} trained a scratch model ({cfg.model.name}), whose "
                           "attention heads and FFN rows tunelab cannot slice; use --prune magnitude or --low-rank")
    target = target_of(run_dir, req)
    check_target(target, req.overwrite)
    out_cfg = result_config(cfg, target, req.retrain_steps, req.overrides)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    outcome = Outcome()
    log(f"compressing {run_dir} into {target}")
    model, tokenizer = load_counted(run_dir, outcome, log)
    job = prepared_job(out_cfg, log) if req.prune == "structured" else None
    reshape(model, req, job, outcome, log)
    return retrain_and_finish(run_dir, target, cfg, out_cfg, model, tokenizer, job, req, outcome, log,
                              show_progress)


def load_counted(run_dir: Path, outcome: Outcome, log) -> tuple:
    from tunelab.compress import store

    with timed(outcome, "load"):
        model, tokenizer, _ = load_full_model(run_dir, log)
    outcome.parameters_before = store.count_parameters(model)
    log(f"parameters: {outcome.parameters_before:,}")
    return model, tokenizer


def retrain_and_finish(run_dir: Path, target: Path, cfg, out_cfg, model, tokenizer, job, req: Request,
                       outcome: Outcome, log, show_progress: bool, resume: bool = False) -> Path:
    """After pruning / low rank: retrain (when asked), int8 (when asked), save, test, compress.json."""
    from tunelab.compress import store

    if req.retrain_steps:
        write_plan(target, req, outcome.steps)  # what `tunelab resume` rebuilds an interrupted retraining from
        try:
            with timed(outcome, "retrain"):
                retrain(out_cfg, model, job, outcome.steps, run_dir, req, show_progress, log, resume)
        except BaseException:
            from tunelab.resume import in_progress_homes

            if not in_progress_homes(target.resolve()):  # failed before a checkpoint: nothing to resume
                plan_path(target).unlink(missing_ok=True)
            raise
        model = model.cpu().eval()
    outcome.sparsity = measured_sparsity(model)
    if req.quantize:
        quantize(model.cpu().eval(), req.quantize, outcome, log)
    outcome.parameters_after = store.count_parameters(model)
    with timed(outcome, "save_and_test"):
        metrics = finish(out_cfg, model, tokenizer, outcome, run_dir, target, req, log)
    record(run_dir, target, cfg, outcome, metrics, req, log)
    return target


def plan_path(target: Path) -> Path:
    """RUN_DIR/compressed/.NAME.plan.json: the request and steps of a retraining under way (beside the folder,
    which `train` must find empty or holding a run; removed when compress.json is written)."""
    return target.parent / f".{target.name}.plan.json"


def write_plan(target: Path, req: Request, steps: list[dict]) -> None:
    from tunelab.io import atomic_write_json

    atomic_write_json(plan_path(target), {"request": dataclasses.asdict(req), "steps": steps})


def read_plan(target: Path) -> dict | None:
    """The request and steps of a compressed run (compress.json) or of its retraining under way; None for
    any other folder."""
    for path in (target / RECORD, plan_path(target)):
        if path.is_file():
            plan = json.loads(path.read_text())
            if isinstance(plan, dict) and "request" in plan and "steps" in plan:
                return plan
    return None


def resume_compressed(target: str | Path, overrides: list[str], *, show_progress: bool = True,
                      log=print) -> bool:
    """`tunelab resume RUN_DIR/compressed/NAME`: go on with its retraining (interrupted, or finished and trained
    further with e.g. train.max_steps=400), then int8, test and compress.json as `compress` would. The model is
    rebuilt from the base run RUN_DIR and the stored steps (the checkpoint then gives the weights). Returns
    False, doing nothing, for a folder that is no compressed run (the caller resumes it as usual)."""
    from tunelab.resume import resume_config
    from tunelab.runs import run_config

    target = Path(target)
    plan = read_plan(target)
    if plan is None:
        return False
    if not plan["request"].get("retrain_steps"):
        raise TunelabError(f"{target} was compressed without retraining: there is nothing to resume; to retrain "
                           "it, compress the base run again with --retrain-steps N --overwrite")
    base = target.parent.parent
    req = Request(**{**plan["request"], "overrides": list(overrides), "overwrite": False})
    out_cfg = resume_config(target, list(overrides))
    cfg = run_config(base)
    outcome = Outcome()
    log(f"resuming the retraining of {target} (compressed from {base})")
    model, tokenizer = load_counted(base, outcome, log)
    outcome.steps = [s for s in plan["steps"] if s["op"] != "quantize"]  # int8 comes after the retraining
    for step in outcome.steps:
        step_function(step)(model, step, weights=True)
    retrain_and_finish(base, target, cfg, out_cfg, model, tokenizer, None, req, outcome, log, show_progress,
                       resume=True)
    return True


def step_function(step: dict):
    """apply_<op> of a stored step (tunelab.compress.store.OP_MODULES)."""
    import importlib

    from tunelab.compress.store import OP_MODULES

    return getattr(importlib.import_module(OP_MODULES[step["op"]]), f"apply_{step['op']}")


def measured_sparsity(model) -> float | None:
    """The share of zero weights in the layer stack's Linear layers (None where there are none to count)."""
    from tunelab.compress.prune import sparsity_of

    try:
        return round(float(sparsity_of(model)), 6)
    except TunelabError:
        return None


def prepared_job(cfg, log):
    """The task's own job for the run's data (prepared: its training batches give the pruning importance)."""
    from tunelab.run import make_job, pick_device, seed_everything

    seed_everything(cfg.train.seed)
    job = make_job(cfg, pick_device(cfg.train.device), log)
    job.prepare()
    return job


def finish(cfg, model, tokenizer, outcome: Outcome, run_dir: Path, target: Path, req: Request, log) -> dict:
    """Save the final model (after retraining: model/ replaced atomically, quantized) and test it."""
    from tunelab.io import atomic_write_json

    if not req.retrain_steps:
        write_untrained(cfg, model, tokenizer, outcome.steps, run_dir, target, log)
        return json.loads((target / "eval.json").read_text())["test"]
    if req.quantize:  # the retrained run saved its model before int8: save it again, whole
        save_result(model, tokenizer, target / "model", outcome.steps, run_dir / "model")
    summary = json.loads((target / "eval.json").read_text())
    summary["test"] = test_metrics(target, log)
    atomic_write_json(target / "eval.json", summary)
    return summary["test"]


def base_metric(run_dir: Path, cfg) -> tuple[str, float | None]:
    """(the run's metric name, its test value from RUN_DIR/eval.json or None)."""
    from tunelab.tasks import task_for

    metric = cfg.train.early_stopping.metric or task_for(cfg).job.default_metric
    try:
        value = json.loads((Path(run_dir) / "eval.json").read_text()).get("test", {}).get(metric)
    except (OSError, ValueError):
        value = None
    return metric, value


def retained(metric: str, value: float | None, base: float | None) -> float | None:
    """The result's metric as a % of the base run's: value / base for scores, base / value for losses and
    perplexities (lower is better), so 100 means unchanged and less means worse either way."""
    if value is None or base is None or value == 0 or base == 0:
        return None
    lower_better = metric.endswith("loss") or metric.endswith("perplexity")
    return round(100 * (base / value if lower_better else value / base), 2)


def record(run_dir: Path, target: Path, cfg, outcome: Outcome, metrics: dict, req: Request, log) -> None:
    """Write compress.json and print the final lines (metrics, % of the base run's metric)."""
    from tunelab.compress.report import weight_bytes
    from tunelab.io import atomic_write_json
    from tunelab.tasks import task_for

    metric, base = base_metric(run_dir, cfg)
    value = metrics.get(metric)
    kept = retained(metric, value, base)
    data = {"base_run": str(run_dir), "steps": outcome.steps,
            "parameters": {"before": outcome.parameters_before, "after": outcome.parameters_after},
            "file_size": {"before": weight_bytes(run_dir), "after": weight_bytes(target)},  # a LoRA run: base/ too
            "sparsity": outcome.sparsity, "seconds": outcome.seconds,
            "metric": metric, "base_metric": base, "metric_value": value, "retained_percent": kept,
            "request": dataclasses.asdict(req)}
    atomic_write_json(target / RECORD, data)
    plan_path(target).unlink(missing_ok=True)
    log(f"parameters {outcome.parameters_before:,} -> {outcome.parameters_after:,}; weights "
        f"{data['file_size']['before'] / 1e6:.2f} MB -> {data['file_size']['after'] / 1e6:.2f} MB")
    log(f"test: {task_for(cfg).metrics_line(metrics)}")
    share = f"{kept:.1f}% of the run's {base:.4f}" if kept is not None else "the run has no test value to compare"
    log(f"{metric} {value if value is None else round(value, 4)} ({share}); written to {target}")
