"""Knowledge distillation: a student (model.name, every weight trains) learns from a finished run, the teacher.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * the task's own loss

summed over the items the task's loss sums over (examples for classification, labelled tokens for token
classification and causal LMs: padding and prompt tokens, IGNORE_INDEX, do not count), so the loop's
normalisation, gradient accumulation and distributed runs treat it as any task loss. T^2 keeps the soft
gradients' scale independent of T (Hinton et al., 2015).

How it plugs in (tunelab.methods, Method.wrap_job): the task builds its job as for any method; `DistillJob`
wraps it, loads the teacher after the task's prepare() and replaces only `loss`. The student's logits are
captured by forward hooks from the task's own forward (no second student forward): the model's output
`.logits` when the task calls the model, or, when it calls only the decoder (causal LMs: the loss projects
labelled positions alone), the decoder's hidden states at the labelled positions through the output layer.
The teacher is called with exactly the inputs the student got. Which positions count is read from the
batch as the tasks write it: `targets` (next-token ids, already shifted) or `labels`, IGNORE_INDEX elsewhere.

With `student_layers`, the student is the teacher's own model (merged if LoRA) keeping only those layers of
its stack, built in model.name's architecture (so model.dropout applies) and saved as a normal model.

With `cache_teacher`, the teacher's outputs for every training row are computed once before training and
kept in $TUNELAB_HOME/distill/, keyed by the teacher run's files and the encoded rows; outputs wider than
TOP_K (vocabularies) keep only their TOP_K largest logits, and the soft loss is then taken over those,
renormalised on both sides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from tunelab.errors import ConfigError, TunelabError
from tunelab.methods import register_method

if TYPE_CHECKING:  # torch loads with the model, not with the config that names the method
    import torch
    from torch import nn

TOP_K = 64  # logits kept per position in the cache when the outputs are wider (a vocabulary)
CACHE_VERSION = 1


@dataclass
class Options:
    teacher: Optional[str] = None
    """distill: the teacher, a finished run's folder (RUN_DIR) of the same task; required."""
    temperature: float = 2.0
    """distill: softmax temperature T of teacher and student in the soft loss (> 0)."""
    alpha: float = 0.5
    """distill: weight of the soft loss: alpha * T^2 * KL(teacher || student) + (1 - alpha) * the task's loss;
    in [0, 1]."""
    student_layers: Optional[list[int]] = None
    """distill: the student is the teacher's own model (merged if LoRA) keeping only these layers of its stack,
    e.g. [0, 2, 4] (model.name must be the teacher's base model); null = model.name as it is."""
    cache_teacher: bool = False
    """distill: compute the teacher's outputs once for the training data and keep them in $TUNELAB_HOME/distill
    (for vocabulary-sized outputs only the top 64 logits per token), reused by later runs and resume."""


def apply(model: nn.Module, head: set[str], teacher: str | None = None, student_layers: list[int] | None = None,
          **_: object) -> nn.Module:
    """The student: `model` (built from model.name), or with `student_layers` the teacher's layers in it;
    every parameter trains."""
    if student_layers is not None:
        model = student_from_teacher(model, teacher, student_layers)
    for p in model.parameters():
        p.requires_grad = True
    return model


# ---------------------------------------------------------------------------------------------
# Checks made before anything loads (tunelab.run.make_job, tunelab validate)


def check_config(cfg) -> list[str]:
    """The options' ranges and the teacher run (before anything loads, and in `tunelab validate`)."""
    from tunelab.methods import options_of

    opts = options_of(cfg.method)
    return option_problems(opts) + teacher_problems(opts["teacher"], cfg)


def wrap_job(job, cfg, log):
    """The task's job with the distillation loss (check_config has passed)."""
    from tunelab.methods import options_of

    return DistillJob(job, log, **options_of(cfg.method))


def option_problems(opts: dict) -> list[str]:
    problems = []
    if not opts["temperature"] > 0:
        problems.append(f"method.temperature: got {opts['temperature']}; must be > 0")
    if not 0.0 <= opts["alpha"] <= 1.0:
        problems.append(f"method.alpha: got {opts['alpha']}; distill's alpha weighs the soft loss and must be "
                        "in [0, 1]")
    layers = opts["student_layers"]
    if layers is not None and (not layers or any(i < 0 for i in layers)
                               or any(a >= b for a, b in zip(layers, layers[1:]))):
        problems.append(f"method.student_layers: got {layers}; give layer indices of the teacher's stack in "
                        "increasing order, e.g. [0, 2, 4], or null")
    return problems


def teacher_problems(teacher: str | None, cfg) -> list[str]:
    """Why `teacher` cannot teach this config: missing, not a finished run, or a run of another task."""
    from tunelab.runs import run_task
    from tunelab.tasks import task_for

    if teacher is None:
        return ["method.teacher: distill needs a teacher: set it to the folder of a finished run of the same "
                "task (the output_dir of `tunelab train`)"]
    try:
        teacher_task = run_task(teacher)
    except TunelabError as e:
        return [f"method.teacher: {e}"]
    student_task = task_for(cfg)
    if teacher_task.name != student_task.name:
        return [f"method.teacher: {teacher} is a {teacher_task.name} run and this run trains "
                f"{student_task.name}; distil from a run of the same task"]
    return []


# ---------------------------------------------------------------------------------------------
# The teacher


def load_teacher(run_dir: str):
    """The teacher run (tunelab.runs.Run), model in eval mode."""
    from tunelab.runs import load_run

    return load_run(run_dir)


def check_compatible(teacher_run, job) -> None:
    """The teacher must score the student's outputs: the same labels in the same order, the same vocabulary
    (the teacher reads the student's token ids; causal LMs compare next-token distributions over it)."""
    student_labels = getattr(job, "labels", None)
    teacher_labels = teacher_run.meta.get("labels")
    if (student_labels is not None or teacher_labels is not None) and \
            list(student_labels or []) != list(teacher_labels or []):
        raise TunelabError(f"method.teacher: the teacher's labels {list(teacher_labels or [])} differ from the "
                           f"student's {list(student_labels or [])}: distillation needs the same labels in the "
                           "same order; distil from a run trained on the same labels (data.train, "
                           "data.label_field)")
    ours, theirs = job.tokenizer.get_vocab(), teacher_run.tokenizer.get_vocab()
    if ours != theirs:
        differ = sorted(set(ours.items()) ^ set(theirs.items()))[:3]
        raise TunelabError(f"method.teacher: the teacher's and the student's tokenizers differ ({len(theirs)} "
                           f"and {len(ours)} tokens; e.g. {', '.join(f'{t!r}={i}' for t, i in differ)}): "
                           "distillation of causal LMs needs a shared vocabulary, and in every task the teacher "
                           "reads the student's token ids; use a model.name with the teacher's tokenizer (a "
                           f"scratch model: model.tokenizer: {teacher_run.dir / 'model'})")


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return model


def merged(model: nn.Module) -> nn.Module:
    """A LoRA model with its adapters merged into the weights (a plain transformers model); others as they are."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


# ---------------------------------------------------------------------------------------------
# A student made of the teacher's layers (method.student_layers)


def student_from_teacher(model: nn.Module, teacher: str, layers: list[int]) -> nn.Module:
    """`model` (model.name, the teacher's architecture) cut to `layers` of its stack and loaded with the
    teacher's fine-tuned weights of those layers (and of everything outside the stack, head included)."""
    from tunelab.methods.common import layer_stack

    run = load_teacher(teacher)
    source = merged(run.model)
    want = getattr(getattr(source, "config", None), "model_type", None)
    have = getattr(getattr(model, "config", None), "model_type", None)
    if want is None or want != have:
        raise ConfigError([f"model.name: a {have or type(model).__name__} model is not the teacher's "
                           f"architecture ({want or type(source).__name__}); "
                           "method.student_layers builds the student from the teacher's layers: set model.name "
                           f"to the teacher's base model ({run.cfg.model.name})"])
    teacher_stack, stack = layer_stack(source), layer_stack(model)
    if max(layers) >= len(teacher_stack[1]):
        raise ConfigError([f"method.student_layers: got {layers}; the teacher has {len(teacher_stack[1])} layers "
                           f"(0 to {len(teacher_stack[1]) - 1})"])
    keep_layers(model, stack, layers)
    state = renumbered(source.state_dict(), teacher_stack[0], layers)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()[:200]
        raise ConfigError([f"model.name: its weights do not fit the teacher's ({first}); method.student_layers "
                           f"needs model.name to be the teacher's base model ({run.cfg.model.name})"]) from None
    return model


def keep_layers(model: nn.Module, stack: tuple[str, nn.ModuleList], layers: list[int]) -> None:
    """Replace the stack by its `layers`, renumbered 0..n-1 (config.num_hidden_layers, per-layer `layer_idx`
    as Llama attention has, config.layer_types), so that plain transformers rebuilds the saved model."""
    from torch import nn

    if max(layers) >= len(stack[1]):
        raise ConfigError([f"method.student_layers: got {layers}; model.name has {len(stack[1])} layers: set "
                           "model.name to the teacher's base model"])
    name, modules = stack
    kept = nn.ModuleList([modules[i] for i in layers])
    for j, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j  # indexes the KV cache at generation
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, kept)
    config = model.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in layers]
    config.num_hidden_layers = len(layers)


def renumbered(state: dict[str, torch.Tensor], stack_name: str, layers: list[int]) -> dict[str, torch.Tensor]:
    """The teacher's weights with layer `layers[j]` of the stack renamed to layer j and the others left out."""
    prefix, new_index = f"{stack_name}.", {old: j for j, old in enumerate(layers)}
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        index, rest = key[len(prefix):].split(".", 1)
        if int(index) in new_index:
            out[f"{prefix}{new_index[int(index)]}.{rest}"] = value
    return out


# ---------------------------------------------------------------------------------------------
# The outputs the soft loss compares


def soft_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The items the task's loss sums over, as a mask: (B,) for a label per row, (B, T) for labelled tokens."""
    from tunelab.data.tokens import IGNORE_INDEX

    target = batch.get("targets", batch.get("labels"))
    if target is None:
        raise TunelabError("method.name: distill needs a task whose batches carry labels or next-token targets")
    return target != IGNORE_INDEX


def decoder_of(model: nn.Module) -> nn.Module | None:
    """The decoder a task may call alone (causal LMs' loss projects only labelled positions), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not (hasattr(base, "get_decoder") and hasattr(base, "get_output_embeddings")):
        return None
    try:
        decoder = base.get_decoder()
    except (AttributeError, ValueError, NotImplementedError):
        return None
    return decoder if decoder is not base else None


class Capture:
    """`with Capture(model) as seen:` records the first call of the model and of its decoder (inputs and
    output) made inside; `seen.logits(keep)` gives the (N, V) logits at the kept positions."""

    def __init__(self, model: nn.Module):
        self.model, self.decoder = model, decoder_of(model)
        self.calls: dict[str, tuple] = {}

    def __enter__(self) -> "Capture":
        targets = [("model", self.model)] + ([("decoder", self.decoder)] if self.decoder is not None else [])
        self.handles = [m.register_forward_hook(self._hook(role), with_kwargs=True) for role, m in targets]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, role: str):
        def record(module, args, kwargs, output):
            self.calls.setdefault(role, (args, kwargs, output))
        return record

    def logits(self, keep: torch.Tensor) -> torch.Tensor:
        """(N, V) logits at the positions of `keep` (row-major), from the model's output or its decoder's."""
        if "model" in self.calls:
            logits = getattr(self.calls["model"][2], "logits", None)
            if logits is None:
                raise TunelabError("method.name: distill needs a model whose output has logits")
            return logits[keep]
        if "decoder" in self.calls:
            return project(self.model, self.calls["decoder"][2].last_hidden_state[keep])
        raise TunelabError("method.name: distill could not see the model's outputs in the task's loss")

    def replay(self, teacher: nn.Module, keep: torch.Tensor) -> torch.Tensor:
        """The teacher's (N, V) logits, called exactly as the captured module was (no_grad by the caller)."""
        if "model" in self.calls:
            args, kwargs, _ = self.calls["model"]
            return teacher(*args, **kwargs).logits[keep]
        args, kwargs, _ = self.calls["decoder"]
        return project(teacher, decoder_of(teacher)(*args, **kwargs).last_hidden_state[keep])


def project(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The output layer on (N, H) hidden states -> (N, V), soft-capped as the model's own forward does."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    logits = base.get_output_embeddings()(hidden)
    cap = getattr(base.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
              indices: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over N positions of KL(softmax(teacher / T) || softmax(student / T)); student (N, V), teacher (N, V)
    or, from the cache, (N, k) logits of the vocabulary ids `indices` (N, k): both renormalised over those k."""
    import torch.nn.functional as F

    s = student.float() / temperature
    if indices is not None:
        s = s.gather(-1, indices)
    elif s.shape != teacher.shape:
        raise TunelabError(f"method.teacher: the teacher gives {tuple(teacher.shape)} outputs where the student "
                           f"gives {tuple(s.shape)}; distil from a teacher with the same labels or vocabulary")
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(F.log_softmax(s, dim=-1), log_t, log_target=True, reduction="sum")


# ---------------------------------------------------------------------------------------------
# The job


class DistillJob:
    """The task's job with the distillation loss; everything else (batches, validate, test, save, report) is
    the task job's, reached through attribute delegation."""

    def __init__(self, job, log, *, teacher: str, temperature: float, alpha: float, cache_teacher: bool,
                 **_: object):
        self.__dict__.update(job=job, log=log, teacher_dir=teacher, temperature=temperature, alpha=alpha,
                             cache_teacher=cache_teacher, teacher=None, cache=None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["job"], name)

    @property
    def model(self):
        return self.job.model

    @model.setter
    def model(self, value) -> None:
        self.job.model = value

    def prepare(self) -> None:
        """The task's prepare (data, tokenizer, the student), then the teacher, frozen on the student's device."""
        from tunelab.methods.common import count_parameters

        self.job.prepare()
        run = load_teacher(self.teacher_dir)
        check_compatible(run, self.job)
        device = next(self.job.model.parameters()).device
        self.__dict__["teacher"] = frozen(run.model).to(device)
        _, n_teacher = count_parameters(self.teacher)
        _, n_student = count_parameters(self.job.model)
        self.log(f"distill: teacher {self.teacher_dir} ({n_teacher:,} parameters) -> student ({n_student:,}, "
                 f"{100 * n_student / n_teacher:.0f}%); T {self.temperature}, alpha {self.alpha}")
        if self.cache_teacher:
            from tunelab.methods.distill_cache import teacher_cache

            self.__dict__["cache"] = teacher_cache(self.job, self.teacher, self.teacher_dir, device, self.log)

    def loss(self, model, batch):
        """(alpha * T^2 * soft + (1 - alpha) * hard, n): both sums over the n items of the task's loss."""
        import torch

        with Capture(model) as seen:
            hard, n = self.job.loss(model, batch)
        if self.alpha == 0:
            return hard, n
        keep = soft_positions(batch)
        student = seen.logits(keep)
        if self.cache is not None:
            teacher, indices = self.cache.lookup(batch, keep)
        else:
            with torch.no_grad():
                teacher, indices = seen.replay(self.teacher, keep), None
        if student.shape[0] != n:
            raise TunelabError(f"method.name: distill counts {student.shape[0]} soft targets where the task's "
                               f"loss counts {n} items; this task cannot be distilled")
        soft = soft_loss(student, teacher, self.temperature, indices)
        return self.alpha * self.temperature ** 2 * soft + (1 - self.alpha) * hard, n


register_method("distill", apply, "distill (a student learns from a teacher run)", Options, wrap_job=wrap_job,
                check_config=check_config)
