"""How the loop's work is spread over processes: one `Engine` per mode, each answering the same few questions.

The loop (tunelab.train.loop) never asks which mode it runs in; it asks its engine to wrap the model, to
pick this process's rows of a global batch, to sum counts over processes, to evaluate, and to gather the
trainable weights and optimizer state for a checkpoint. `Single` is the one-process engine; the
torch.distributed engines (DDP, FSDP2, pipeline) are built by `setup` when torchrun started the process.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class Engine(Protocol):
    rank: int
    world: int
    name: str

    @property
    def is_main(self) -> bool: ...
    def wrap(self, model: nn.Module) -> nn.Module: ...
    def shard(self, batch: Batch) -> tuple[Batch, bool]: ...
    def sync(self, model: nn.Module, last: bool) -> ContextManager: ...
    def all_sum(self, values: list[float]) -> list[float]: ...
    def evaluate(self, model: nn.Module, fn: Callable[[nn.Module], dict | None]) -> dict | None: ...
    def full_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def load_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None: ...
    def local_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict: ...
    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None: ...
    def gather(self, obj) -> list:
        """Every process's `obj`, by rank, on every process."""
    def unwrap(self, model: nn.Module) -> nn.Module: ...
    def close(self) -> None: ...


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (shared ones once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class Single:
    """One process: every answer is the trivial one."""

    rank, world, name = 0, 1, "single"
    is_main = True

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def shard(self, batch: Batch) -> tuple[Batch, bool]:
        return batch, True

    def sync(self, model: nn.Module, last: bool) -> ContextManager:
        return contextlib.nullcontext()

    def all_sum(self, values: list[float]) -> list[float]:
        return values

    def evaluate(self, model: nn.Module, fn: Callable[[nn.Module], dict | None]) -> dict | None:
        return fn(model)

    def full_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: t.detach().to("cpu", copy=True) for n, t in weights.items()}

    def load_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        load_trainable(model, weights)

    def local_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in weights.items()}

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def gather(self, obj) -> list:
        return [obj]

    def close(self) -> None:
        pass


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights into `model`; the names must match its trainable parameters exactly."""
    from tunelab.errors import TunelabError

    params = trainable(model)
    missing, unknown = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unknown:
        raise TunelabError(f"the checkpoint's weights do not fit this model: missing {missing[:3]}, unknown "
                           f"{unknown[:3]}; resume with the config the run was trained with")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])


def setup(mode: str, device: torch.device, timeout_s: float) -> Engine:
    """The engine for this process: `Single` unless torchrun started more than one process."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Single()
    from tunelab.errors import TunelabError

    raise TunelabError("train.distributed: this build runs one process only; run without torchrun")
