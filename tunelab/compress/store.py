"""The stored form of a compressed model, and the loader that rebuilds it without pickled code.

A compressed model folder (RUN_DIR/compressed/<name>/model) holds:
- config.json: the model's original architecture config (compression never changes `model.config`), or
  for a tunelab scratch model scratch_config.json (kind + constructor arguments, as tunelab.models.scratch
  writes it); generation_config.json where the model has one;
- compression.json: {"format": 1, "architecture": the transformers class name or "scratch", "steps": [...],
  "tunelab_version": ...};
- model.safetensors: every tensor. An int8-dynamic Linear's packed weight (an opaque object torch would
  only pickle) is stored as plain tensors, `<name>.weight` int8, `.weight_scale`, `.weight_zero_point` and
  `.bias`, from which the same packed weight is rebuilt exactly;
- the tokenizer and the source model folder's other metadata (labels.json, ...; not its weights, not adapter
  files).

`load_compressed` builds the uncompressed architecture, re-applies every step with weights=False (shapes
only), then loads the tensors strictly. Heavy imports are inside the functions: `is_compressed` is cheap.
"""
from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from torch import Tensor, nn

COMPRESSION_FILE = "compression.json"
FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
SCRATCH = "scratch"
# op -> the module holding its apply_<op>(model, step, weights)
OP_MODULES = {"prune_structured": "tunelab.compress.prune", "prune_magnitude": "tunelab.compress.prune",
              "low_rank": "tunelab.compress.low_rank", "quantize": "tunelab.compress.quantize"}
# files of the source model folder that are not copied: we write our own or they describe other weights
NOT_COPIED = ("config.json", "scratch_config.json", "generation_config.json", COMPRESSION_FILE,
              "model.safetensors.index.json")


def is_compressed(model_dir: str | Path) -> bool:
    """True for a model folder written by `save_compressed` (it holds compression.json)."""
    return (Path(model_dir) / COMPRESSION_FILE).is_file()


# ------------------------------------------------------------------------------------------------- save

def save_compressed(model: nn.Module, tokenizer, model_dir: str | Path, steps: list[dict],
                    source_dir: str | Path | None = None) -> Path:
    """Write `model` (compressed by `steps`) to `model_dir`, atomically: a staging folder renamed into place,
    replacing an existing `model_dir` (the caller decides whether it may). `source_dir` is the run's model/
    folder, whose metadata files (labels.json, ...) are copied. Returns `model_dir`."""
    from safetensors.torch import save_file

    from tunelab import __version__
    from tunelab.io import atomic_write_json, staged_dir

    for step in steps:
        _op_function(step, model_dir)  # an unknown op would make a folder nothing can load
    model_dir = Path(model_dir)
    with staged_dir(model_dir) as tmp:
        architecture = _write_config(model, tmp)
        tokenizer.save_pretrained(str(tmp))
        if source_dir is not None:
            _copy_metadata(Path(source_dir), tmp)
        save_file(plain_tensors(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        atomic_write_json(tmp / COMPRESSION_FILE, {"format": FORMAT, "architecture": architecture,
                                                   "steps": steps, "tunelab_version": __version__})
    return model_dir


def _write_config(model: nn.Module, folder: Path) -> str:
    """Write what rebuilds the uncompressed architecture; returns the architecture name."""
    from tunelab.models.scratch import is_scratch_model
    from tunelab.nn.models import CONFIG_NAME

    if is_scratch_model(model):
        config = {"kind": model.scratch_kind, **model.config}  # as tunelab.nn.models.save_scratch_model
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return SCRATCH
    import transformers

    architecture = type(model).__name__
    if not isinstance(getattr(transformers, architecture, None), type):
        raise ValueError(f"cannot store a {architecture}: not a transformers model class (merge adapters first)")
    model.config.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(str(folder))
    return architecture


def _copy_metadata(source: Path, folder: Path) -> None:
    """Copy the source folder's plain files that are not weights, adapters, configs or already written."""
    for path in sorted(source.iterdir()):
        name = path.name
        if (not path.is_file() or name in NOT_COPIED or name.startswith("adapter_")
                or name.endswith(WEIGHT_SUFFIXES) or (folder / name).exists()):
            continue
        shutil.copy2(path, folder / name)


def plain_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The model's state as plain contiguous tensors for safetensors: int8-dynamic Linear layers unpacked
    (`quantize.dynamic_tensors`), tied aliases dropped (the constructor ties them again on load)."""
    from tunelab.compress.quantize import dynamic_modules, dynamic_tensors

    dynamic = dynamic_modules(model)
    tensors: dict[str, Tensor] = {}
    seen: set[tuple] = set()
    for name, tensor in model.state_dict().items():
        if _owner(name, dynamic) is not None:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue  # a tied alias (e.g. lm_head.weight = embed_tokens.weight)
        seen.add(key)
        tensors[name] = tensor.detach().contiguous()
    for name, module in dynamic.items():
        tensors.update({f"{name}.{k}": t.contiguous() for k, t in dynamic_tensors(module).items()})
    return tensors


def _owner(key: str, modules: dict) -> str | None:
    """The name in `modules` that state-dict `key` belongs to, if any."""
    return next((name for name in modules if key.startswith(name + ".")), None)


# ------------------------------------------------------------------------------------------------- load

def read_compression(model_dir: str | Path) -> dict:
    """compression.json of a compressed model folder, checked: a format this tunelab reads, known ops."""
    path = Path(model_dir) / COMPRESSION_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TunelabError(f"{path}: cannot read it ({e}); compress the run again") from None
    if not isinstance(info, dict) or not isinstance(info.get("format"), int) or info["format"] > FORMAT:
        raise TunelabError(f"{path}: format {info.get('format') if isinstance(info, dict) else '?'} is newer "
                           f"than this tunelab reads ({FORMAT}); upgrade tunelab or compress the run again")
    for step in info.get("steps", []):
        _op_function(step, model_dir)
    return info


def _op_function(step: dict, model_dir: str | Path):
    """apply_<op> of a step, or a TunelabError for an op this tunelab does not know."""
    op = step.get("op") if isinstance(step, dict) else None
    if op not in OP_MODULES:
        raise TunelabError(f"{model_dir}: unknown compression step {op!r} (known: {', '.join(OP_MODULES)}); "
                           "a newer tunelab wrote it: upgrade tunelab or compress the run again")
    return getattr(importlib.import_module(OP_MODULES[op]), f"apply_{op}")


def load_compressed(model_dir: str | Path) -> tuple:
    """(model in eval mode, tokenizer) of a folder written by `save_compressed`: the architecture built from
    its config, every step re-applied without weights, then model.safetensors loaded strictly."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    info = read_compression(model_dir)
    model = _build(model_dir, info.get("architecture"))
    for step in info["steps"]:
        _op_function(step, model_dir)(model, step, weights=False)
    load_tensors(model, load_file(str(model_dir / WEIGHTS_FILE)), model_dir)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def _build(model_dir: Path, architecture: str | None) -> nn.Module:
    """The uncompressed model of the folder's config (random weights, fp32)."""
    if architecture == SCRATCH:
        return _build_scratch(model_dir)
    import torch
    import transformers

    cls = getattr(transformers, str(architecture), None)
    if not isinstance(cls, type) or not (model_dir / "config.json").is_file():
        raise TunelabError(f"{model_dir}: architecture {architecture!r} with no config.json cannot be rebuilt "
                           "by this tunelab; compress the run again")
    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    model = cls._from_config(config, dtype=torch.float32)
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(str(model_dir))
    return model


def _build_scratch(model_dir: Path) -> nn.Module:
    """A fresh tunelab scratch model from scratch_config.json (the classes tunelab.models.scratch loads)."""
    from tunelab.models import scratch
    from tunelab.nn.models import CONFIG_NAME, build_scratch_model

    config = json.loads((model_dir / CONFIG_NAME).read_text())
    own = {cls.scratch_kind: cls for cls in (scratch.GPTClassifier, scratch.TransformerQA,
                                             scratch.TransformerTagger, scratch.RNNTagger)}
    kind = config.get("kind")
    if kind in own:
        return own[kind](**{k: v for k, v in config.items() if k != "kind"})
    return build_scratch_model(**config)


def load_tensors(model: nn.Module, tensors: dict[str, Tensor], where: str | Path = "") -> None:
    """Load `plain_tensors` output into a model of the same (compressed) shapes: every model tensor must be
    given (tied aliases excepted) and every given tensor used, else a TunelabError."""
    from tunelab.compress.quantize import dynamic_modules, load_dynamic_tensors

    from collections import OrderedDict

    tensors = OrderedDict(tensors)
    tensors._metadata = model.state_dict()._metadata  # module versions, which quantized modules read
    for name, module in dynamic_modules(model).items():
        own = {key[len(name) + 1:]: tensors.pop(key) for key in list(tensors) if _owner(key, {name: 0})}
        if "weight" not in own:
            raise TunelabError(f"{where}: no int8 weight for {name} in {WEIGHTS_FILE}; compress the run again")
        load_dynamic_tensors(module, own)
        # the module's own state (output scale, packed params) back in, for load_state_dict's strict pass
        tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = sorted(set(missing) - _aliases(model))
    if missing or unexpected:
        raise TunelabError(f"{where}: {WEIGHTS_FILE} does not fit the model its config and steps describe "
                           f"(missing {missing[:5]}, unexpected {sorted(unexpected)[:5]}); compress the run again")


def _aliases(model: nn.Module) -> set[str]:
    """State-dict names that share their tensor with an earlier name (tied weights)."""
    seen, aliases = set(), set()
    for name, tensor in model.state_dict().items():
        if not hasattr(tensor, "untyped_storage"):
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            aliases.add(name)
        seen.add(key)
    return aliases


# ------------------------------------------------------------------------------------------------ sizes

def file_size(model_dir: str | Path) -> int:
    """Bytes of the weight files in `model_dir`."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def count_parameters(model: nn.Module) -> int:
    """Parameters of `model`, counting the int8 weights and biases of quantized Linear layers as well (they
    are buffers or packed objects, not nn.Parameters); tied weights once; scales and zero points not."""
    from tunelab.compress.quantize import Int8Linear, dynamic_modules

    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
    for module in dynamic_modules(model).values():
        weight, bias = module._weight_bias()
        total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total
