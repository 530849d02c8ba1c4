"""Pipeline parallelism for scratch GPT pretraining: the layers split across processes (`train.distributed:
pipeline` under torchrun), run with torch.distributed.pipelining's GPipe schedule.

The split. Process r of W is stage r. The GPT's `decoder.layers` are split as evenly as possible (the earlier
stages take the one left over when W does not divide them: the last stage also runs the head, the largest
single matmul); stage 0 also holds the embeddings, the last stage the final norm and the head. The activations
(B, T, C) are the only tensors that cross between stages: every process reads the same batches, so each hands
the padding mask to its own stage, and the last stage its labels.

The schedule. One optimizer step's `train.grad_accum` micro-batches of `train.batch_size` rows are the
pipeline's micro-batches, run by GPipe: every micro-batch forward through all stages, then every backward
(each stage idles while the pipeline fills and drains, about (W - 1) / (grad_accum + W - 1) of a step, so
grad_accum well above W keeps the stages busy). The pipeline needs one fixed shape, so every micro-batch is
padded to `train.batch_size` rows and `model.max_length` columns, and a window with fewer micro-batches (an
epoch's last) gets all-padding ones; padding carries no target, so it adds nothing to the loss or the
gradients. Losses are sums (the schedule does not scale the gradients), so the loop divides by the window's
target count as in one process.

The tied embedding. A GPT's head shares its matrix with the token embedding, which stage 0 owns; the last stage
keeps a copy of it, and after each window the two copies' gradients are summed (all-reduced between the two
stages), so both take the same update and stay equal. Gradient clipping uses the norm over every stage.

What each process holds in memory: the whole model's weights (every process builds the full GPT, so that
evaluation, checkpoints and the end of the run are those of one process); gradients and optimizer state only
for its own stage's parameters (plus, on the last stage, the copy of the tied matrix and its state); its
stage's activations of every micro-batch of a window (GPipe keeps them all until the backward); and a copy of
the best weights when validation chooses one. Before an evaluation and at the end of the run each stage
broadcasts its current weights, so every process's model is whole and current: evaluation then runs on the
full model in every process, as in one process (the same numbers everywhere, so the same decisions). A
checkpoint gathers each stage's own weights, named as one process names them (the tied matrix once), and each
stage's optimizer state, which a resume gives back to the stage that owns it.

Limits: scratch GPTs only (`task: pretrain`, or causal_lm with `model.name: scratch:gpt`); at least one layer
per process; weights are not sharded (use fsdp for that); with dropout each stage draws its own masks, so only
dropout-free runs match a single process number for number.

Written here rather than taken from a library: the split of this GPT, the tied copy and the engine seam are
tunelab's own; the schedule, the stages and their exchanges are torch's.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from tunelab.data.tokens import IGNORE_INDEX
from tunelab.errors import TunelabError
from tunelab.train.distributed import Batch, Distributed, load_trainable, trainable
from tunelab.train.precision import autocast


def refuse(what: str) -> TunelabError:
    """The one-line error for a run pipeline mode cannot train."""
    return TunelabError(f"train.distributed: pipeline is for scratch GPTs (task: pretrain, model.name: scratch:gpt "
                        f"or a scratch GPT folder); this run's model is {what}: use train.distributed: ddp or fsdp")


def check_config(cfg) -> None:
    """Refuse, before anything loads, a run whose model cannot be a scratch GPT."""
    from tunelab.models.scratch import is_scratch_dir

    if cfg.model.name != "scratch:gpt" and not is_scratch_dir(cfg.model.name):
        raise refuse(repr(cfg.model.name))


def layer_bounds(layers: int, stages: int) -> list[tuple[int, int]]:
    """[start, stop) of each stage's layers: as even as possible, the earlier stages taking one more."""
    base, extra = divmod(layers, stages)
    bounds, start = [], 0
    for s in range(stages):
        stop = start + base + (1 if s < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def stage_parts(gpt: nn.Module, stages: int) -> list[list[nn.Module]]:
    """The modules of the full GPT each stage runs, in order (the head is added by `build_stage`)."""
    layers = gpt.decoder.layers
    parts = [list(layers[start:stop]) for start, stop in layer_bounds(len(layers), stages)]
    parts[0].insert(0, gpt.embeddings)
    parts[-1].append(gpt.decoder.norm)
    return parts


def stage_parameters(gpt: nn.Module, stages: int) -> list[list[nn.Parameter]]:
    """Each stage's parameters (the full model's own objects), each parameter with exactly one stage: the tied
    matrix is the embedding's (stage 0), an untied head the last stage's."""
    placed, seen = [], set()
    for part in stage_parts(gpt, stages):
        params = [p for m in part for p in m.parameters() if id(p) not in seen]
        seen |= {id(p) for p in params}
        placed.append(params)
    if id(gpt.lm_head.weight) not in seen:  # untied
        placed[-1].append(gpt.lm_head.weight)
        seen.add(id(gpt.lm_head.weight))
    stray = [n for n, p in gpt.named_parameters() if id(p) not in seen]
    if stray:
        raise TunelabError(f"train.distributed: pipeline does not know which stage runs {stray[:3]}; use ddp")
    return placed


def build_stage(gpt: nn.Module, index: int, stages: int) -> "Stage":
    """Stage `index` of `stages` over the GPT's own modules; the last stage of a tied GPT gets a copy of the
    tied matrix as its head (stage 0 owns the matrix; the two gradients are summed after each window)."""
    part = stage_parts(gpt, stages)[index]
    first, last = index == 0, index == stages - 1
    embeddings = part.pop(0) if first else None
    norm = part.pop() if last else None
    head = gpt.lm_head if last else None
    if last and gpt.lm_head.weight is gpt.embeddings.token.weight:
        tied = gpt.embeddings.token.weight
        head = nn.Linear(tied.size(1), tied.size(0), bias=False, device=tied.device, dtype=tied.dtype)
        head.weight = nn.Parameter(tied.detach().clone(), requires_grad=tied.requires_grad)
    return Stage(embeddings, part, norm, head)


class Stage(nn.Module):
    """One process's slice of a GPT: [embeddings] -> its layers -> [final norm -> head].

    forward(x, padding): x is input_ids (B, T) on stage 0, else the previous stage's activations (B, T, C);
    padding (B, T) is True at padding. Returns activations (B, T, C), or logits (B, T, V) on the last stage.
    """

    def __init__(self, embeddings: nn.Module | None, layers: list[nn.Module], norm: nn.Module | None,
                 head: nn.Module | None):
        super().__init__()
        self.embeddings, self.norm, self.head = embeddings, norm, head
        self.layers = nn.ModuleList(layers)
        self.autocast: tuple[torch.device, torch.dtype | None] = (torch.device("cpu"), None)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        with autocast(*self.autocast):
            if self.embeddings is not None:
                x = self.embeddings(x)  # (B, T) -> (B, T, C)
            for layer in self.layers:
                x = layer(x, padding, None, True)  # key_padding_mask, attn_mask, causal
            if self.head is not None:
                x = self.head(self.norm(x))  # (B, T, V)
        return x


class GivenLogits:
    """A stand-in model for the task's loss: whatever it is called with, it answers with the last stage's
    logits (`.logits`), so the pipeline scores them with the task's own loss (label smoothing included).
    The pretraining loss reads only the logits and the batch's labels."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, *args, **kwargs) -> "GivenLogits":
        return self


class Pipeline(Distributed):
    """Each process trains one stage of a scratch GPT (see the module docstring)."""

    name = "pipeline"

    def __init__(self, device: torch.device, timeout_s: float):
        super().__init__(device, timeout_s)
        self.replicas = 1  # each stage owns its parameters: nothing is averaged over processes
        self._shape: tuple[int, int, int] | None = None  # (micro-batches, rows, columns) of a window

    @property
    def is_last(self) -> bool:
        return self.rank == self.world - 1

    def configure(self, cfg) -> None:
        """Keep the window's fixed shape; refuse a model that is not a scratch GPT before anything loads."""
        check_config(cfg)
        self._shape = (cfg.train.grad_accum, cfg.train.batch_size, cfg.model.max_length)

    # -- the stages ------------------------------------------------------------------------------

    def wrap(self, model: nn.Module, loss_fn: Callable) -> nn.Module:
        """Build this process's stage and the GPipe schedule; returns the stage module."""
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        from tunelab.nn.models import GPT

        if not isinstance(model, GPT):
            raise refuse(f"a {type(model).__name__}")
        if self._shape is None:
            raise RuntimeError("Pipeline.configure(cfg) must run before wrap")
        layers = len(model.decoder.layers)
        if layers < self.world:
            raise TunelabError(f"train.distributed: pipeline gives each of the {self.world} processes at least one "
                               f"layer, and model.layers is {layers}: start at most {layers} processes "
                               "(--nproc-per-node) or use more layers")
        self._loss_fn = loss_fn
        self._tied = model.lm_head.weight is model.embeddings.token.weight
        self._stage_params = stage_parameters(model, self.world)
        self._share_weights(model)  # every process starts from the same weights (as DDP's constructor)
        self.stage = build_stage(model, self.rank, self.world)
        self._tied_group = None
        if self._tied:  # the two holders of the tied matrix; every process must take part in new_group
            import torch.distributed as dist

            self._tied_group = dist.new_group([0, self.world - 1])
        self._schedule = ScheduleGPipe(PipelineStage(self.stage, self.rank, self.world, self.device),
                                       n_microbatches=self._shape[0], loss_fn=self._score,
                                       scale_grads=False)  # summed losses: no division by micro-batches
        return self.stage

    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """This stage's trainable parameters under the plain model's names; on the last stage of a tied GPT
        also the head's copy, as `lm_head.weight` (it trains, but checkpoints take the matrix from stage 0)."""
        mine = {id(p) for p in self._stage_params[self.rank]}
        params = {n: p for n, p in trainable(model).items() if id(p) in mine}
        if self.is_last and self._tied and self.stage.head.weight.requires_grad:
            params["lm_head.weight"] = self.stage.head.weight
        return params

    def _owned_names(self, model: nn.Module) -> set[str]:
        mine = {id(p) for p in self._stage_params[self.rank]}
        return {n for n, p in trainable(model).items() if id(p) in mine}

    # -- one window -------------------------------------------------------------------------------

    def forward_backward(self, net: nn.Module, window: list[Batch], device: torch.device,
                         autocast_dtype: torch.dtype | None) -> tuple[float, int, int]:
        """Forward and backward of a window's micro-batches through the pipeline; the window's (loss sum,
        target count, real tokens), the same on every process. Gradients are sums, the tied one over both holders."""
        ids, mask, labels = self._fixed_shape(window)  # (M x rows, columns) each
        padding = (mask == 0).to(self.device)
        self.stage.autocast = (device, autocast_dtype)
        self._items: list[int] = []
        losses: list[torch.Tensor] = []
        if self.rank == 0:
            self._schedule.step(ids.to(self.device), padding=padding, return_outputs=False)
        elif self.is_last:
            self._schedule.step(padding=padding, target=labels.to(self.device), losses=losses, return_outputs=False)
        else:
            self._schedule.step(padding=padding, return_outputs=False)
        self._sum_tied_gradient()
        counts = self._items[-self._shape[0]:]  # the first step also scores a micro-batch to infer shapes
        loss_sum, items = self._from_last_stage(sum(loss.detach().item() for loss in losses), sum(counts))
        return loss_sum, items, int(mask.sum())

    def _score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's loss of one micro-batch (a sum over its targets), on the last stage; counts its targets."""
        loss, n = self._loss_fn(GivenLogits(logits), {"input_ids": None, "attention_mask": None, "labels": labels})
        self._items.append(n)
        return loss

    def _fixed_shape(self, window: list[Batch]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask, labels of the window's micro-batches stacked, each padded to (rows,
        columns), with all-padding micro-batches up to the schedule's count: (M x rows, columns) each."""
        micro, rows, columns = self._shape
        ids = torch.zeros(micro * rows, columns, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for i, batch in enumerate(window):
            r, t = batch["input_ids"].shape
            if r > rows or t > columns or i >= micro:
                raise RuntimeError(f"a micro-batch of {r} x {t} does not fit the pipeline's {micro} x {rows} x "
                                   f"{columns} window")
            at = slice(i * rows, i * rows + r)
            ids[at, :t], mask[at, :t], labels[at, :t] = batch["input_ids"], batch["attention_mask"], batch["labels"]
        return ids, mask, labels

    def _sum_tied_gradient(self) -> None:
        """Stage 0's embedding gradient + the last stage's head gradient, on both (the tied matrix's gradient)."""
        import torch.distributed as dist

        if not self._tied or self.rank not in (0, self.world - 1):
            return
        weight = self.stage.embeddings.token.weight if self.rank == 0 else self.stage.head.weight
        if not weight.requires_grad:
            return
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        dist.all_reduce(weight.grad, group=self._tied_group)

    def _from_last_stage(self, loss_sum: float, items: int) -> tuple[float, int]:
        """The last stage's (loss sum, target count), on every process."""
        import torch.distributed as dist

        t = torch.tensor([loss_sum, items], dtype=torch.float64, device=self._comm_device())
        dist.broadcast(t, src=self.world - 1)
        return float(t[0]), int(t[1])

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip every stage's gradients by their global norm (the tied matrix counted once); the norm."""
        import torch.distributed as dist

        copy = self.stage.head.weight if self.is_last and self._tied else None
        grads = [p.grad for p in params if p.grad is not None and p is not copy]
        squares = torch.zeros((), dtype=torch.float32, device=self._comm_device())
        if grads:
            squares += torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) ** 2
        dist.all_reduce(squares)
        norm = squares.sqrt()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale.to(p.grad.device))
        return norm

    # -- whole weights: evaluation, checkpoints, the end -------------------------------------------

    def _share_weights(self, model: nn.Module) -> None:
        """Each stage broadcasts its parameters, so every process's model holds the current weights."""
        import torch.distributed as dist

        with torch.no_grad():
            for owner, params in enumerate(self._stage_params):
                flat = torch.cat([p.detach().reshape(-1) for p in params]).to(self._comm_device())
                dist.broadcast(flat, src=owner)
                if owner != self.rank:
                    for p, part in zip(params, flat.split([p.numel() for p in params])):
                        p.copy_(part.view_as(p))

    def evaluate(self, model: nn.Module, fn: Callable[[nn.Module], dict | None]) -> dict | None:
        """Every process evaluates the whole, current model (the same numbers everywhere)."""
        self._share_weights(model)
        return fn(model)

    def full_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full CPU tensors under the plain model's names: each stage contributes the ones it owns."""
        owned = self._owned_names(model)
        merged: dict[str, torch.Tensor] = {}
        for part in self.gather({n: t.detach().to("cpu", copy=True) for n, t in weights.items() if n in owned}):
            merged.update(part)
        return {n: merged[n] for n in trainable(model) if n in merged}

    def load_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Saved full weights into every process's model (and the last stage's copy of the tied matrix)."""
        load_trainable(model, weights)
        if self.is_last and self._tied:
            with torch.no_grad():
                self.stage.head.weight.copy_(model.embeddings.token.weight)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Every stage's optimizer state, by rank (CPU tensors)."""
        return {"stages": self.gather(_to_cpu(optimizer.state_dict()))}

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Give each stage back its own optimizer state."""
        stages = state.get("stages") if isinstance(state, dict) else None
        if not isinstance(stages, list) or len(stages) != self.world:
            raise TunelabError(f"the checkpoint's optimizer state was not written by a pipeline run of {self.world} "
                               "processes; resume with the train.distributed mode the run was trained with")
        optimizer.load_state_dict(stages[self.rank])

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The whole trained model (every process takes part in gathering it; every process gets it)."""
        self._share_weights(model)
        return model


def _to_cpu(obj):
    """`obj` (nested dicts and lists) with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
