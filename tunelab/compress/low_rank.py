"""Low-rank factorisation: a Linear layer's weight W (out, in) replaced by two thinner layers from its SVD.

W = U S V^T; keeping the r largest singular values gives the best rank-r approximation in the Frobenius
norm (Eckart-Young). The factors are split evenly, `up` = U_r sqrt(S_r) (out, r) and `down` = sqrt(S_r) V_r^T
(r, in), so neither layer holds all the scale (retraining then moves both at similar rates). A layer is
factorised only where r * (in + out) < in * out: otherwise the two layers are no smaller than the one.
Only the Linear layers inside the model's layer stack are planned: embeddings and the task head stay whole.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tunelab.errors import TunelabError

OP = "low_rank"


class LowRankLinear(nn.Module):
    """y = up(down(x)): `down` Linear(in, r, bias=False), `up` Linear(r, out) with the original bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))  # (..., in) -> (..., r) -> (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def stack_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """{qualified name: nn.Linear} of every Linear layer inside the model's layer stack."""
    from tunelab.methods.common import layer_stack

    try:
        prefix, stack = layer_stack(model)
    except ValueError:
        raise TunelabError(f"--low-rank: {type(model).__name__} has no stack of repeated layers to "
                           "factorise") from None
    return {f"{prefix}.{name}": m for name, m in stack.named_modules() if type(m) is nn.Linear}


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """The smallest r whose r largest singular values keep a fraction `energy` of sum(s^2) (Frobenius energy)."""
    squares = singular_values.double() ** 2  # descending, as torch.linalg.svdvals returns them
    kept = torch.cumsum(squares, 0) / squares.sum()
    r = int(torch.searchsorted(kept, torch.tensor([energy], dtype=kept.dtype)).item()) + 1
    return min(r, len(singular_values))  # energy 1.0 may miss the last cumsum by a rounding


def plan_low_rank(model: nn.Module, rank: int | None = None, energy: float | None = None) -> dict:
    """The low_rank step for `model`: {"op", "rank", "energy", "modules": {name: r}}.

    Exactly one of `rank` (the same r for every layer, capped at min(in, out)) or `energy` in (0, 1] (per
    layer, `energy_rank` of its singular values). Layers where r * (in + out) >= in * out are left out.
    """
    if (rank is None) == (energy is None):
        raise TunelabError("low rank: give exactly one of --low-rank R or --low-rank-energy E")
    if rank is not None and rank < 1:
        raise TunelabError(f"--low-rank: {rank} is not a rank; give a positive integer such as 64")
    if energy is not None and not 0 < energy <= 1:
        raise TunelabError(f"--low-rank-energy: {energy} is outside (0, 1]; give a fraction such as 0.9")
    modules = {}
    for name, linear in stack_linears(model).items():
        out_f, in_f = linear.weight.shape
        if rank is not None:
            r = min(rank, in_f, out_f)
        else:
            with torch.no_grad():
                r = energy_rank(torch.linalg.svdvals(linear.weight.detach().float()), energy)
        if r * (in_f + out_f) < in_f * out_f:
            modules[name] = r
    return {"op": OP, "rank": rank, "energy": energy, "modules": modules}


def factorise(linear: nn.Linear, r: int) -> nn.Module:
    """A LowRankLinear holding the rank-r truncated SVD of `linear` (same dtype and device)."""
    weight = linear.weight.detach()
    out_f, in_f = weight.shape
    low = LowRankLinear(in_f, out_f, r, bias=linear.bias is not None).to(weight.device, weight.dtype)
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)  # (out, k), (k,), (k, in)
        root = s[:r].sqrt()
        low.up.weight.copy_(u[:, :r] * root)  # (out, r)
        low.down.weight.copy_(root[:, None] * vh[:r])  # (r, in)
        if linear.bias is not None:
            low.up.bias.copy_(linear.bias)
    return low


def apply_low_rank(model: nn.Module, step: dict, weights: bool = True) -> nn.Module:
    """Replace each module of step["modules"] by a LowRankLinear of its rank, in place; returns `model`.

    weights=True factorises the trained weights; weights=False builds the shapes only (for loading).
    """
    for name, r in step["modules"].items():
        linear = model.get_submodule(name)
        if weights:
            low = factorise(linear, int(r))
        else:
            out_f, in_f = linear.weight.shape
            low = LowRankLinear(in_f, out_f, int(r), bias=linear.bias is not None)
            low.to(linear.weight.device, linear.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, low)
    return model
