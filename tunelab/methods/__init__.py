"""Fine-tuning methods, registered by name in METHODS. Each module tunelab/methods/<name>.py defines
`apply(model, head=..., **options) -> model`, its options (a dataclass `Options` whose fields become
`method.<field>` config keys, documented under each field) and registers itself with `register_method`.

`head` holds the names of the parameters that were newly initialised for the task (the head); every
method trains them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

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


METHODS: Registry[Method] = Registry("method", order=("full", "head", "freeze", "lora"))


def register_method(name: str, apply: Callable[..., Any], summary: str, options: type | None = None) -> None:
    """Register a method; its options (fields of the `options` dataclass) belong to it alone."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise ValueError(f"method {name!r}: options must be a dataclass of the method's settings")
    keys = [f"method.{f.name}" for f in dataclasses.fields(options)] if options is not None else []
    taken = [k for k in keys if METHODS.owners(k)]
    if taken:
        raise ValueError(f"method {name!r}: options {taken} belong to {METHODS.owners(taken[0])}; "
                         "give the method's own options their own names")
    METHODS.register(name, Method(apply, summary, options), options=keys)


def options_of(method_cfg) -> dict[str, Any]:
    """The settings of the chosen method, read from the config's method section (keyword arguments)."""
    method = METHODS.get(method_cfg.name)
    if method.options is None:
        return {}
    return {f.name: getattr(method_cfg, f.name) for f in dataclasses.fields(method.options)}


def apply_method(name: str, model: nn.Module, head: set[str], **kwargs: object) -> nn.Module:
    if name not in METHODS:
        raise TunelabError(f"method.name: unknown method {name!r}; known: {', '.join(METHODS.names())}")
    return METHODS.get(name).apply(model, head=head, **kwargs)


from tunelab.methods import freeze, full, head, lora  # noqa: E402,F401 - each registers itself
