"""Helpers shared by the fine-tuning methods: freezing, finding the layer stack, counting parameters."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the model, not with the config that names the method
    from torch import nn


def freeze_all_but(model: nn.Module, trainable: set[str]) -> None:
    """Set requires_grad on exactly the parameters whose names are in `trainable`."""
    for name, p in model.named_parameters():
        p.requires_grad = name in trainable


# Task heads transformers puts on a body: `classifier` (BERT-style encoders), `score` (decoders).
HEAD_MODULES = ("classifier", "score")


def head_parameters(model: nn.Module, head: set[str]) -> set[str]:
    """The task head to train: the newly initialised parameters or, when the checkpoint already had a head
    for these labels (e.g. continuing from a run's model/ folder), the parameters of its classifier/score."""
    if head:
        return set(head)
    return {name for name, _ in model.named_parameters() if name.split(".")[0] in HEAD_MODULES}


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's main stack of repeated blocks (e.g. `bert.encoder.layer`, `model.layers`).

    Taken as the longest nn.ModuleList whose items all have the same class.
    """
    from torch import nn

    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 \
                and len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no stack of repeated layers; method 'freeze' needs one")
    return best


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
