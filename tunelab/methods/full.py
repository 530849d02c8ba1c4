"""Full fine-tuning: every parameter trains."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the model, not with the config that names the method
    from torch import nn

from tunelab.methods import register_method


def apply(model: nn.Module, head: set[str], **_: object) -> nn.Module:
    for p in model.parameters():
        p.requires_grad = True
    return model


register_method("full", apply, "full")
