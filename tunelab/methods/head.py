"""Head-only ("replace the last layer"): the body is frozen; only the newly initialised head trains."""
from __future__ import annotations

from torch import nn

from tunelab.methods.common import freeze_all_but


def apply(model: nn.Module, head: set[str], **_: object) -> nn.Module:
    if not head:
        raise ValueError("method 'head' found no newly initialised head parameters to train")
    freeze_all_but(model, head)
    return model
