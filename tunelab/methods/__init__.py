"""Fine-tuning methods, registered by name in METHODS. Each module tunelab/methods/<name>.py defines
`apply(model, head=..., **options) -> model`, its options (a dataclass `Options` whose fields become
`method.<field>` config keys, documented under each field) and registers itself with `register_method`.

`head` holds the names of the parameters that were newly initialised for the task (the head); every
method trains them.

Two methods may share an option name when its type agrees (lora's and distill's `alpha`): the config field
is then Optional and null by default, and `options_of` fills in the chosen method's own default.

A method that changes the loss (distill) also gives `wrap_job(job, cfg, log) -> job`: tunelab.run.make_job
passes it the task's job, and the method returns a job that delegates everything but what it changes.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from tunelab.errors import TunelabError
from tunelab.registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Method:
    apply: Callable[..., Any]
    summary: str
    """How the config reference names it, e.g. "freeze (top layers + head)"."""
    options: type | None = None
    """A dataclass of the method's own options (method.<field>), or None."""
    wrap_job: Callable[..., Any] | None = None
    """wrap_job(job, cfg, log) -> the job that trains (e.g. with another loss), or None: the task's job as it is."""
    check_config: Callable[[Any], list[str]] | None = None
    """check_config(cfg) -> problems of the method's options the schema cannot express (all at once, each
    starting with the key to change): checked before the job is built, and by `tunelab validate`."""


METHODS: Registry[Method] = Registry("method", order=("full", "head", "freeze", "lora", "distill"))


def register_method(name: str, apply: Callable[..., Any], summary: str, options: type | None = None,
                    wrap_job: Callable[..., Any] | None = None,
                    check_config: Callable[[Any], list[str]] | None = None) -> None:
    """Register a method. Its options (fields of the `options` dataclass) are its own, except a name another
    method already has with the same type: the two share that key, each with its own default."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise ValueError(f"method {name!r}: options must be a dataclass of the method's settings")
    keys = [f"method.{f.name}" for f in dataclasses.fields(options)] if options is not None else []
    hints = typing.get_type_hints(options) if options is not None else {}
    clash = [(k, owner) for k in keys for owner in METHODS.owners(k)
             if _option_type(owner, k.split(".", 1)[1]) != hints[k.split(".", 1)[1]]]
    if clash:
        key, owner = clash[0]
        raise ValueError(f"method {name!r}: option {key} belongs to {owner} with another type; a shared option "
                         "needs the same type: give the method's option its own name")
    METHODS.register(name, Method(apply, summary, options, wrap_job, check_config), options=keys)


def _option_type(method: str, field_name: str) -> Any:
    return typing.get_type_hints(METHODS.get(method).options)[field_name]


def _own_default(method: str, field_name: str) -> Any:
    f = next(f for f in dataclasses.fields(METHODS.get(method).options) if f.name == field_name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def own_defaults(field_name: str) -> list[Any]:
    """The defaults the methods that share option `field_name` give it ([] for an option only one method has)."""
    return [_own_default(m, field_name) for m in shared_options().get(field_name, [])]


def shared_options() -> dict[str, list[str]]:
    """Option names (without `method.`) that more than one method has -> those methods, in registry order."""
    owners = {key.split(".", 1)[1]: METHODS.owners(key)
              for name in METHODS.names() for key in METHODS.options(name)}
    return {key: names for key, names in owners.items() if len(names) > 1}


def option_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, type, dataclasses.field) of every method option, once each, for the config's method section:
    a shared option is Optional with default None (= the chosen method's own default)."""
    shared, out, seen = shared_options(), [], set()
    for name in METHODS.names():
        options = METHODS.get(name).options
        for f in dataclasses.fields(options) if options is not None else ():
            if f.name in seen:
                continue
            seen.add(f.name)
            tp = _option_type(name, f.name)
            if f.name in shared:
                out.append((f.name, Optional[tp], dataclasses.field(default=None)))
            elif f.default is not dataclasses.MISSING:
                out.append((f.name, tp, dataclasses.field(default=f.default)))
            else:
                out.append((f.name, tp, dataclasses.field(default_factory=f.default_factory)))
    return out


def shared_option_doc(field_name: str, docs: dict[str, dict[str, str]]) -> str:
    """The reference line of a shared option: each method's meaning and default (`docs`: method -> field docs)."""
    parts = []
    for method in shared_options()[field_name]:
        doc = docs[method].get(field_name, "").removeprefix(f"{method}:").strip().rstrip(".")
        parts.append(f"{method}: {doc} (default {_own_default(method, field_name)})")
    return "; ".join(parts) + ". null = the chosen method's default."


def options_of(method_cfg) -> dict[str, Any]:
    """The settings of the chosen method, read from the config's method section (keyword arguments); a shared
    option left null takes the method's own default."""
    method = METHODS.get(method_cfg.name)
    if method.options is None:
        return {}
    out = {}
    for f in dataclasses.fields(method.options):
        value = getattr(method_cfg, f.name)
        out[f.name] = _own_default(method_cfg.name, f.name) if value is None else value
    return out


def method_problems(cfg: Any) -> list[str]:
    """The chosen method's own checks of a config (Method.check_config); [] for a method without any."""
    check = METHODS.get(cfg.method.name).check_config
    return [] if check is None else check(cfg)


def wrap_job(job: Any, cfg: Any, log: Callable[[str], None]) -> Any:
    """The job that trains `cfg`, after the method's own checks: the task's job, or the chosen method's wrapper
    around it (Method.wrap_job)."""
    from tunelab.errors import ConfigError

    problems = method_problems(cfg)
    if problems:
        raise ConfigError(problems)
    method = METHODS.get(cfg.method.name)
    return job if method.wrap_job is None else method.wrap_job(job, cfg, log)


def apply_method(name: str, model: nn.Module, head: set[str], **kwargs: object) -> nn.Module:
    if name not in METHODS:
        raise TunelabError(f"method.name: unknown method {name!r}; known: {', '.join(METHODS.names())}")
    return METHODS.get(name).apply(model, head=head, **kwargs)


from tunelab.methods import distill, freeze, full, head, lora  # noqa: E402,F401 - each registers itself
