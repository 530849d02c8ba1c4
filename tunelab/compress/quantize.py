"""int8 for CPU inference: the Linear layers of a model with 8-bit weights, two ways.

- "int8-dynamic": torch.ao.quantization.quantize_dynamic with per-channel int8 weights; activations are
  quantized on the fly per batch, so the matrix product itself runs in int8 (fbgemm / oneDNN kernels).
  This is the fast path; it takes fp32 inputs only.
- "int8-weight-only": `Int8Linear` (below), an int8 weight with one fp32 scale per output channel,
  dequantized at each call: the product runs in the input's precision (fp32 or bf16), so it saves file
  size and resident memory, not arithmetic.

Every nn.Linear is quantized, LowRankLinear's two included, except the task head (`is_head`): the head's
output is the logits themselves, so its rounding error reaches them undamped, it is a small share of a
classifier's parameters, and an LM's head is usually tied to the input embeddings, where an int8 copy would
add storage instead of saving it.

The quantized engine (torch.backends.quantized.engine) is one switch: `ENGINE`, or the environment variable
TUNELAB_QUANT_ENGINE (x86 | fbgemm | onednn | qnnpack), set by `engine()` around every quantizing call.
torch 2.13 marks torch.ao.quantization deprecated: `_quiet()` filters exactly those warnings.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch
from torch import Tensor, nn

from tunelab.errors import TunelabError

OP = "quantize"
SCHEMES = ("int8-dynamic", "int8-weight-only")
ENGINE = "x86"  # fbgemm's successor on x86 CPUs; TUNELAB_QUANT_ENGINE overrides it
ENGINE_VARIABLE = "TUNELAB_QUANT_ENGINE"
HEAD_NAMES = ("classifier", "score", "qa_outputs", "lm_head")  # transformers' and tunelab's task heads


def engine_name() -> str:
    """The quantized engine to use: TUNELAB_QUANT_ENGINE, else ENGINE; one this torch build supports."""
    name = os.environ.get(ENGINE_VARIABLE) or ENGINE
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if name not in supported:
        raise TunelabError(f"{ENGINE_VARIABLE}={name!r} is not a quantized engine of this torch build; "
                           f"use one of {', '.join(supported)}")
    return name


@contextlib.contextmanager
def engine() -> Iterator[str]:
    """Set torch.backends.quantized.engine to `engine_name()` for the block (restored after) and filter the
    deprecation warnings of torch.ao.quantization."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name = engine_name()
    try:
        with _quiet():
            yield name
    finally:
        torch.backends.quantized.engine = old


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Filter the two warnings torch 2.13 gives for every eager-mode quantization call, and only those."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel and "
                                r"other quantized tensor creation functions", category=UserWarning)
        yield


def is_head(model: nn.Module, name: str, module: nn.Module) -> bool:
    """True for the task head: a module named in HEAD_NAMES (or inside one), or the output embeddings."""
    if any(part in HEAD_NAMES for part in name.split(".")):
        return True
    output = getattr(model, "get_output_embeddings", lambda: None)()
    return output is module


def targets(model: nn.Module) -> list[str]:
    """The names of the Linear layers to quantize: every plain nn.Linear but the head."""
    return [name for name, m in model.named_modules() if type(m) is nn.Linear and not is_head(model, name, m)]


def apply_quantize(model: nn.Module, step: dict, weights: bool = True) -> nn.Module:
    """Quantize the Linear layers (`targets`) by step["scheme"], in place; returns `model` (in eval mode).

    weights=False builds the quantized modules' shapes only (their values come from a saved file).
    """
    scheme = step.get("scheme")
    if scheme not in SCHEMES:
        raise TunelabError(f"--quantize: unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    names = targets(model)
    model.eval()  # quantized modules are for inference; their dynamic variant has no backward
    if scheme == "int8-dynamic":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with engine():
            quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8,
                             inplace=True)
        return model
    for name in names:
        parent, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        setattr(model.get_submodule(parent), child,
                Int8Linear.from_linear(linear) if weights else Int8Linear.like(linear))
    return model


class Int8Linear(nn.Module):
    """A Linear layer with an int8 weight (out, in) and an fp32 scale per output channel (symmetric, zero
    point 0): y = x @ (weight * scale[:, None])^T + bias. All three are buffers, so a state dict (and
    safetensors) holds them as they are."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def like(cls, linear: nn.Linear) -> "Int8Linear":
        """An empty Int8Linear of `linear`'s shape."""
        return cls(linear.in_features, linear.out_features, linear.bias is not None).to(linear.weight.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """`linear` rounded to int8 per output row: scale = max |w| / 127, weight = round(w / scale)."""
        q = cls.like(linear)
        w = linear.weight.detach().float()  # (out, in)
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)  # (out,)
        q.weight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        q.scale.copy_(scale)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q

    def forward(self, x: Tensor) -> Tensor:
        # Dequantize, then one ordinary matmul in the input's precision. torch's fused int8-weight kernel
        # (torch._weight_int8pack_mm) gives the same numbers but measured 100x slower than this in fp32 and
        # 4-15x slower in bf16 on this CPU (torch 2.13, 384x1536 weights): the saving is size, not time.
        weight = self.weight.to(x.dtype) * self.scale.to(x.dtype)[:, None]  # (out, in)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def dynamic_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the int8-dynamic Linear layers of `model`."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name: m for name, m in model.named_modules() if isinstance(m, DynamicLinear)}


def dynamic_tensors(module: nn.Module) -> dict[str, Tensor]:
    """A dynamic Linear's packed weight as plain tensors: int8 `weight` (out, in), `weight_scale` (out,),
    `weight_zero_point` (out,) and `bias`: exactly what `load_dynamic_tensors` repacks (the scales in fp32
    and zero points in int8 only where that loses nothing)."""
    weight, bias = module._weight_bias()
    if weight.qscheme() != torch.per_channel_affine or weight.q_per_channel_axis() != 0:
        raise ValueError(f"expected a per-channel int8 weight on axis 0, found {weight.qscheme()}")
    scales, zero_points = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()  # float64, int64
    if torch.equal(scales.float().double(), scales):  # the observer computes them in fp32: stored in 4 bytes
        scales = scales.float()
    if zero_points.abs().max() <= 127:  # 0 for the symmetric qint8 weights of quantize_dynamic
        zero_points = zero_points.to(torch.int8)
    tensors = {"weight": weight.int_repr(), "weight_scale": scales, "weight_zero_point": zero_points}
    if bias is not None:
        tensors["bias"] = bias.detach()
    return tensors


def load_dynamic_tensors(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Repack the tensors of `dynamic_tensors` into a dynamic Linear (same int8 values, scales, bias)."""
    with engine():
        weight = torch._make_per_channel_quantized_tensor(tensors["weight"], tensors["weight_scale"].double(),
                                                          tensors["weight_zero_point"].long(), 0)
        module.set_weight_bias(weight, tensors.get("bias"))
