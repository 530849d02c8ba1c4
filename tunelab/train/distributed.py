"""How the loop's work is spread over processes: one `Engine` per mode, each answering the same few questions.

The loop (tunelab.train.loop) never asks which mode it runs in. It asks its engine to wrap the model, for the
parameters this process updates, for this process's rows of a global batch, to sum counts over processes,
to evaluate, to clip, and to gather weights and optimizer state for a checkpoint. `setup` builds the engine:

- `Single`: one process (every answer is the trivial one).
- `DDP` (torch DistributedDataParallel): every process holds the whole model and trains on its rows of each
  global batch; gradients are averaged over processes on the last micro-batch of a window only (`no_sync`).
- `FSDP` (FSDP2, `torch.distributed.fsdp.fully_shard`): weights, gradients and optimizer state are sharded
  over the processes, each transformer block its own unit; everything else as DDP.
- `Pipeline` (tunelab.train.pipeline): the layers of a scratch GPT split across processes.

Every process reads the same global batch order (same seed) and takes its contiguous share of each batch's
rows, and the window's item count is summed over processes, so N processes x batch b take the same step
as one process with batch N*b. Checkpoints are gathered: the main process writes full tensors, in the same
format as a single process, so a checkpoint names its parameters the way the plain model does.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, ContextManager, Protocol

import torch
from torch import nn

from tunelab.errors import TunelabError

Batch = dict[str, torch.Tensor]


class Engine(Protocol):
    rank: int
    world: int
    name: str
    replicas: int
    """Processes whose gradients are averaged (DDP, FSDP: all; single and pipeline: 1)."""
    forward_backward: Callable | None
    """forward_backward(net, window, device, autocast_dtype) -> (loss sum, items, tokens), all global, for
    engines that run a window themselves (pipeline); None: the loop does, micro-batch by micro-batch."""

    @property
    def is_main(self) -> bool: ...
    def configure(self, cfg) -> None:
        """What the engine needs of the run config before the job is built (pipeline: its fixed shapes)."""
    def wrap(self, model: nn.Module, loss_fn: Callable) -> nn.Module:
        """What the loop calls: net(batch) -> (loss summed over n items, n)."""
    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]: ...
    def shard(self, batch: Batch) -> tuple[Batch, bool]: ...
    def sync(self, net: nn.Module, last: bool) -> ContextManager: ...
    def all_sum(self, values: list[float]) -> list[float]: ...
    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor: ...
    def evaluate(self, model: nn.Module, fn: Callable[[nn.Module], dict | None]) -> dict | None: ...
    def full_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def load_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None: ...
    def local_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict: ...
    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None: ...
    def gather(self, obj) -> list:
        """Every process's `obj`, by rank, on every process."""
    def heartbeat(self) -> None: ...
    def unwrap(self, model: nn.Module) -> nn.Module: ...
    def close(self) -> None: ...


class LossModule(nn.Module):
    """`model` with the task's loss as its forward: what the engines wrap, so that DDP's and FSDP's hooks see
    the forward that computes the loss (task losses may call parts of the model, not its own forward)."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Batch):
        return self.loss_fn(self.model, batch)  # (a sum over n items, n)


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters by name (shared ones once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights into `model`; the names must match its trainable parameters exactly."""
    params = trainable(model)
    missing, unknown = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unknown:
        raise TunelabError(f"the checkpoint's weights do not fit this model: missing {missing[:3]}, unknown "
                           f"{unknown[:3]}; resume with the config the run was trained with")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])


class Single:
    """One process: every answer is the trivial one."""

    rank, world, replicas, name = 0, 1, 1, "single"
    is_main = True
    forward_backward = None

    def configure(self, cfg) -> None:
        pass

    def wrap(self, model: nn.Module, loss_fn: Callable) -> nn.Module:
        return LossModule(model, loss_fn)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return trainable(model)

    def shard(self, batch: Batch) -> tuple[Batch, bool]:
        return batch, True

    def sync(self, net: nn.Module, last: bool) -> ContextManager:
        return contextlib.nullcontext()

    def all_sum(self, values: list[float]) -> list[float]:
        return values

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

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

    def heartbeat(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Several processes


def launched_processes() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Distributed(Single):
    """What DDP and FSDP share: the process group, batch shares, sums, gathering, heartbeats."""

    def __init__(self, device: torch.device, timeout_s: float):
        import torch.distributed as dist

        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.replicas = self.world
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            device = torch.device("cuda", self.local_rank)
        self.device = device
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": device} if device.type == "cuda" else {}))
        self._store = self._heartbeat_store()
        self._step = 0
        if self._store is not None:  # where this process runs, to tell later whether it is still alive
            self._store.set(f"tunelab/process/{self.rank}", f"{socket.gethostname()} {os.getpid()}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Batch) -> tuple[Batch, bool]:
        """This process's contiguous share of a global batch's rows, its padding-only columns cut off.

        A batch with fewer rows than processes leaves some without any: they get the first row as a stand-in
        whose loss the loop multiplies by 0, so every process still joins the gradient exchange."""
        rows = next(iter(batch.values())).size(0)
        share = torch.arange(rows).tensor_split(self.world)[self.rank]
        real = len(share) > 0
        if not real:
            share = torch.arange(1)
        part = {k: v[share] for k, v in batch.items()}
        mask = part.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            width = mask.size(1)
            used = int(mask.any(0).nonzero().max()) + 1 if mask.any() else width
            if used < width:  # trailing columns that are padding in every row of this share
                part = {k: v[:, :used] if v.dim() >= 2 and v.size(1) == width else v for k, v in part.items()}
        return part, real

    def all_sum(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _heartbeat_store(self):
        """torchrun's own key-value store: it lives in the launcher, so it outlives a process that died."""
        import torch.distributed as dist

        try:
            return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                 timeout=timedelta(seconds=5))
        except (KeyError, ValueError, RuntimeError):
            return None

    def heartbeat(self) -> None:
        """Note in the store that this process reached its next exchange (to name a process that stopped)."""
        self._step += 1
        if self._store is not None:
            self._store.set(f"tunelab/heartbeat/{self.rank}", f"{self._step} {time.time():.3f}")

    def stopped_processes(self) -> str:
        """Which processes are gone (on this machine) or fell behind this one: for the error of a failed
        exchange. Read from torchrun's store, which outlives the processes."""
        unknown = "see torchrun's summary for the process that failed"
        if self._store is None:
            return unknown
        stopped = []
        for r in range(self.world):
            if r == self.rank:
                continue
            gone = self._gone(r)
            behind = self._behind(r)
            if gone or behind:
                stopped.append(f"rank {r} ({'; '.join(filter(None, [gone, behind]))})")
        return ("stopped: " + ", ".join(stopped)) if stopped else unknown

    def _gone(self, rank: int) -> str | None:
        """'exited' for a process of this machine that no longer runs (or is a zombie), else None."""
        try:
            host, pid = self._store.get(f"tunelab/process/{rank}").decode().split()
        except Exception:  # noqa: BLE001 - never registered, or the store is gone too
            return None
        if host != socket.gethostname():
            return None
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return f"process {pid} exited"
        return f"process {pid} exited" if state in ("Z", "X") else None

    def _behind(self, rank: int) -> str | None:
        """How far behind this process `rank`'s last heartbeat is, when it is behind."""
        try:
            step, when = self._store.get(f"tunelab/heartbeat/{rank}").decode().split()
        except Exception:  # noqa: BLE001 - no heartbeat at all
            return "never reached the first exchange" if self._step > 1 else None
        if int(step) < self._step:
            return f"last at exchange {step}, {time.time() - float(when):.0f}s ago"
        return None

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class DDP(Distributed):
    """A full copy of the model per process (torch DistributedDataParallel)."""

    name = "ddp"

    def wrap(self, model: nn.Module, loss_fn: Callable) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # the constructor broadcasts the main process's weights to the others
        return DistributedDataParallel(LossModule(model, loss_fn), device_ids=ids)

    def sync(self, net: nn.Module, last: bool) -> ContextManager:
        return contextlib.nullcontext() if last else net.no_sync()


class FSDP(Distributed):
    """Weights, gradients and optimizer state sharded over the processes (FSDP2).

    Each transformer block is one unit (gathered for its forward and backward, then freed), the rest of the
    model the root unit. Evaluation runs in every process in step (each forward gathers the weights it needs).
    The main process keeps a plain CPU copy of the model, filled with the trained weights at the end, to test
    and save it like any model; gradients and optimizer state are never held in full anywhere.
    """

    name = "fsdp"

    def wrap(self, model: nn.Module, loss_fn: Callable) -> nn.Module:
        import copy

        from torch.distributed.fsdp import fully_shard

        self._plain = copy.deepcopy(model).to("cpu") if self.is_main else None
        blocks = _transformer_blocks(model)
        if not blocks:
            raise TunelabError("train.distributed: fsdp found no transformer blocks to shard in this model; use "
                               "ddp")
        # an explicit mesh of this run's device type: the default follows the machine's accelerator, so CPU
        # training on a machine that also has a GPU would shard onto CUDA
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(self.device.type, (self.world,))
        for block in blocks:
            fully_shard(block, mesh=mesh)
        self._root = fully_shard(LossModule(model, loss_fn), mesh=mesh)  # the rest: gathered around the loss
        return self._root

    def evaluate(self, model: nn.Module, fn: Callable[[nn.Module], dict | None]) -> dict | None:
        """Every process evaluates in step (the blocks gather their weights in their own forwards)."""
        self._root.unshard()  # the weights outside the blocks (embeddings, norms, head)
        try:
            return fn(model)
        finally:
            self._root.reshard()

    def sync(self, net: nn.Module, last: bool) -> ContextManager:
        net.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def full_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full CPU tensors (every process takes part; all get them)."""
        return {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().to("cpu", copy=True)
                for n, t in weights.items()}

    def local_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full tensors cut into this process's shards, like the parameters they belong to."""
        from torch.distributed.tensor import distribute_tensor

        params = trainable(model)
        return {n: distribute_tensor(w.to(params[n].device), params[n].device_mesh, params[n].placements)
                for n, w in weights.items()}

    def load_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        params = trainable(model)
        if set(params) != set(weights):
            load_trainable(model, weights)  # raises the one-line mismatch error
        with torch.no_grad():
            for n, shard in self.local_weights(model, weights).items():
                params[n].to_local().copy_(shard.to_local())

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        full = state if self.is_main else {}
        set_optimizer_state_dict(model, optimizer, full,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The trained model as a plain module on the main process (None elsewhere): every process gathers."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        self._plain.load_state_dict(full)
        return self._plain.to(self.device)


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer: the members of its longest ModuleList of modules with weights
    (a speed-up may have swapped one block for a subclass, so their types may differ)."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best) \
                and all(any(True for _ in m.parameters()) for m in module):
            best = list(module)
    return best


def setup(mode: str, device: torch.device, timeout_s: float) -> Engine:
    """The engine for this process: `Single` unless torchrun started more than one process."""
    world = launched_processes()
    if world <= 1:
        return Single()
    if mode in ("auto", "ddp"):
        return DDP(device, timeout_s)
    if mode == "fsdp":
        return FSDP(device, timeout_s)
    if mode == "pipeline":
        from tunelab.train.pipeline import Pipeline

        return Pipeline(device, timeout_s)
    raise TunelabError(f"train.distributed: unknown mode {mode!r}; known: auto, ddp, fsdp, pipeline")
