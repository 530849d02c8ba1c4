"""Mixed precision: which arithmetic a run trains in, and the autocast context for its forward passes."""
from __future__ import annotations

import contextlib

import torch

from tunelab.errors import TunelabError


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so bf16 matmuls beat fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch build without these probes
        return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on `device`; None means plain fp32."""
    if name == "fp32":
        return None
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
    else:
        fast = cpu_has_fast_bf16()
    if name == "auto":
        return torch.bfloat16 if fast else None
    if name == "bf16":
        if device.type == "cuda" and not fast:
            raise TunelabError("train.precision: this GPU has no bf16 support; use fp32 or auto")
        return torch.bfloat16
    raise TunelabError(f"train.precision: unknown value {name!r}; known: auto, fp32, bf16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` for forward passes, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def describe(dtype: torch.dtype | None) -> str:
    if dtype is None:
        return "fp32"
    return "bf16 mixed precision (weights, optimizer state and loss in fp32)"
