"""Head-only ("replace the last layer"): the body is frozen; only the task head trains."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the model, not with the config that names the method
    from torch import nn

from tunelab.errors import TunelabError
from tunelab.methods import register_method
from tunelab.methods.common import freeze_all_but, head_parameters


def apply(model: nn.Module, head: set[str], **_: object) -> nn.Module:
    head = head_parameters(model, head)
    if not head:
        raise TunelabError(f"method.name: 'head' found no task head to train in {type(model).__name__}; "
                           "use method full, freeze or lora")
    freeze_all_but(model, head)
    return model


register_method("head", apply, "head (new head only)")
