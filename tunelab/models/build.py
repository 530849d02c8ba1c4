"""Build the model a run trains from `model:` config, and save it so plain transformers / peft load it."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from tunelab.io import atomic_replace_dir, atomic_write_json, staging_dir
from tunelab.models.load import load_sequence_classifier, load_tokenizer
from tunelab.models.registry import resolve_model


def load_classifier_and_tokenizer(model_cfg, labels: list[str]) -> tuple[nn.Module, object, set[str]]:
    """(model, tokenizer, head parameter names) for a classification run."""
    from tunelab.models.scratch import build_scratch_classifier, is_scratch_dir

    if model_cfg.name.startswith("scratch:") or is_scratch_dir(model_cfg.name):
        return build_scratch_classifier(model_cfg, labels)
    path = resolve_model(model_cfg.name)
    model, head = load_sequence_classifier(path, labels, model_cfg.dropout)
    return model, load_tokenizer(path), head


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_model(model: nn.Module, tokenizer, model_dir: Path, run_dir: Path, cfg, labels: list[str] | None) -> None:
    """Write RUN_DIR/model atomically: a transformers model, a peft adapter, or a scratch model.

    A LoRA adapter points at RUN_DIR/base: the base model's config with this run's labels, and links to
    the base weights (no copy), so `AutoPeftModelFor...from_pretrained(RUN_DIR/model)` needs no arguments.
    """
    tmp = staging_dir(model_dir)
    from tunelab.models.scratch import is_scratch_model, save_scratch

    if is_scratch_model(model):
        save_scratch(model, tokenizer, tmp)
    elif is_peft(model):
        base_dir = run_dir / "base"
        _write_base_folder(model, base_dir)
        model.peft_config["default"].base_model_name_or_path = str(base_dir.resolve())
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    else:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    if labels is not None:
        atomic_write_json(tmp / "labels.json", labels)
    atomic_replace_dir(tmp, model_dir)


def _write_base_folder(model: nn.Module, base_dir: Path) -> None:
    base = model.get_base_model()
    src = Path(base.config._name_or_path)
    tmp = staging_dir(base_dir)
    cfg = copy.deepcopy(base.config)
    cfg.save_pretrained(str(tmp))
    for f in src.iterdir():
        if f.suffix == ".safetensors" or f.name.endswith(".safetensors.index.json"):
            os.symlink(f.resolve(), tmp / f.name)
    atomic_replace_dir(tmp, base_dir)


@torch.no_grad()
def write_merged(model: nn.Module, tokenizer, merged_dir: Path, sample: dict[str, torch.Tensor]) -> float:
    """Merge LoRA into a copy of the weights, save it, return max |logits(merged) - logits(adapter)|."""
    model.eval()
    before = model(**sample).logits
    merged = copy.deepcopy(model).merge_and_unload()
    after = merged(**sample).logits
    tmp = staging_dir(merged_dir)
    merged.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    atomic_replace_dir(tmp, merged_dir)
    return float((before - after).abs().max())


# ---------------------------------------------------------------------------------------------
# Causal language models


def load_causal_lm_and_tokenizer(name: str, dropout: float | None = None) -> tuple[nn.Module, object]:
    """(fp32 causal LM, tokenizer with a pad token) from builtin:NAME, gguf:PATH or a Hugging Face folder."""
    from transformers import AutoModelForCausalLM

    from tunelab.errors import TunelabError
    from tunelab.models.load import _config

    if name.startswith("scratch:"):
        raise TunelabError(f"model.name: {name!r}: scratch models pretrain with `tunelab pretrain`; "
                           "instruction tuning needs a pretrained Hugging Face decoder "
                           "(builtin:smollm2-135m-instruct, gguf:PATH or a model folder)")
    path = resolve_model(name)
    config = _config(path, dropout)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=torch.float32)
    except ValueError as e:  # e.g. an encoder-only folder: "Unrecognized configuration class ..."
        raise TunelabError(f"model.name: {name!r} is not a causal language model ({e}); use a decoder such "
                           "as builtin:smollm2-135m-instruct") from None
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is never trained on, so any id will do
    return model, tokenizer
