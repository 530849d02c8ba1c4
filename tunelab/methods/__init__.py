"""Fine-tuning methods, registered by name. Each is `apply(model, head=..., **method_args) -> model`.

`head` holds the names of the parameters that were newly initialised for the task (the head); every
method trains them.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from tunelab.errors import TunelabError
from tunelab.methods import freeze, full, head, lora

METHODS: dict[str, Callable[..., nn.Module]] = {}


def register_method(name: str, apply: Callable[..., nn.Module]) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = apply


for _name, _module in (("full", full), ("head", head), ("freeze", freeze), ("lora", lora)):
    register_method(_name, _module.apply)


def apply_method(name: str, model: nn.Module, head: set[str], **kwargs: object) -> nn.Module:
    if name not in METHODS:
        raise TunelabError(f"method.name: unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name](model, head=head, **kwargs)
