"""Partial freezing: the top `trainable_layers` blocks of the layer stack and the head train."""
from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the model, not with the config that names the method
    from torch import nn

from tunelab.errors import TunelabError
from tunelab.methods import register_method
from tunelab.methods.common import freeze_all_but, head_parameters, layer_stack


@dataclass
class Options:
    trainable_layers: int = 2
    """freeze: how many of the top encoder/decoder layers to train (the head is always trained)."""


def apply(model: nn.Module, head: set[str], trainable_layers: int = 2, **_: object) -> nn.Module:
    stack_name, stack = layer_stack(model)
    n = len(stack)
    if trainable_layers > n:
        raise TunelabError(f"method.trainable_layers: got {trainable_layers}; the model has only {n} layers")
    top = [f"{stack_name}.{i}." for i in range(n - trainable_layers, n)]
    # Norms after the stack (e.g. a decoder's final norm) feed the head directly, so they train too.
    after = [name for name, _ in model.named_parameters()
             if not name.startswith(stack_name) and _is_final_norm(name)]
    trainable = {name for name, _ in model.named_parameters() if name.startswith(tuple(top))}
    freeze_all_but(model, trainable | head_parameters(model, head) | set(after))
    return model


def _is_final_norm(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in ("norm", "final_layernorm", "ln_f")


register_method("freeze", apply, "freeze (top layers + head)", Options)
