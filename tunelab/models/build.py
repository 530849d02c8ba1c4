"""Build the model a run trains from `model:` config, and save it so plain transformers / peft load it."""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from tunelab.data.tokens import ensure_pad_token
from tunelab.io import atomic_write_json, staged_dir
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


def load_qa_model_and_tokenizer(model_cfg) -> tuple[nn.Module, object, set[str]]:
    """(span model, tokenizer, head parameter names) for an extractive QA run: a Hugging Face encoder with
    AutoModelForQuestionAnswering's head, or the scratch Transformer's `TransformerQA`."""
    from tunelab.models.load import load_question_answering
    from tunelab.models.scratch import build_scratch_qa, is_scratch_dir

    if model_cfg.name.startswith("scratch:") or is_scratch_dir(model_cfg.name):
        return build_scratch_qa(model_cfg)
    path = resolve_model(model_cfg.name)
    model, head = load_question_answering(path, model_cfg.dropout)
    return model, load_tokenizer(path), head


def load_tagger_and_tokenizer(model_cfg, labels: list[str]) -> tuple[nn.Module, object, set[str]]:
    """(token tagger, tokenizer, head parameter names) for a token-classification run: a Hugging Face encoder
    with AutoModelForTokenClassification's head (id2label = `labels`), or a scratch tagger."""
    from tunelab.models.load import load_token_classifier
    from tunelab.models.scratch import build_scratch_tagger, is_scratch_dir

    if model_cfg.name.startswith("scratch:") or is_scratch_dir(model_cfg.name):
        return build_scratch_tagger(model_cfg, labels)
    path = resolve_model(model_cfg.name)
    model, head = load_token_classifier(path, labels, model_cfg.dropout)
    return model, load_tokenizer(path), head


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_model(model: nn.Module, tokenizer, model_dir: Path, run_dir: Path, cfg, labels: list[str] | None) -> None:
    """Write RUN_DIR/model atomically: a transformers model, a peft adapter, or a scratch model.

    A LoRA run is self-contained: RUN_DIR/base holds the base model (its config with this run's labels, and
    its weight files as hard links where they are on the same filesystem, else copies), and tunelab loads
    the adapter on RUN_DIR/base wherever the folder is moved. The adapter records the absolute path that
    RUN_DIR/base has once the run is in place (cfg.output_dir; `run_dir` may be a staging folder), so
    `AutoPeftModelFor...from_pretrained(RUN_DIR/model)` works there without arguments, and only there.
    """
    from tunelab.models.scratch import is_scratch_model, save_scratch

    with staged_dir(model_dir) as tmp:
        if is_scratch_model(model):
            save_scratch(model, tokenizer, tmp)
        elif is_peft(model):
            _write_base_folder(model, run_dir / "base")
            model.peft_config["default"].base_model_name_or_path = str((run_dir / "base").resolve())
            model.save_pretrained(str(tmp))  # peft reads the base config there: it must exist
            tokenizer.save_pretrained(str(tmp))
            final_run = Path(cfg.output_dir) if cfg is not None else run_dir
            _record_base_path(tmp, final_run.resolve() / "base")
        else:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        if labels is not None:
            atomic_write_json(tmp / "labels.json", labels)


def _record_base_path(adapter_dir: Path, base_dir: Path) -> None:
    """Point adapter_config.json's `base_model_name_or_path` at `base_dir`, where RUN_DIR/base will be."""
    path = adapter_dir / "adapter_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = str(base_dir)
    atomic_write_json(path, data)


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")


def _write_base_folder(model: nn.Module, base_dir: Path) -> None:
    """RUN_DIR/base: the LoRA base model as real files, so the run folder can be copied, moved or tarred.

    The base weights never change under LoRA, so the source's weight files are reused: hard-linked (no extra
    disk; a file survives deleting the source) or copied across filesystems. A source without weight files
    (not loaded from a folder) is written from the model with the adapter taken off.
    """
    base = model.get_base_model()
    src = Path(base.config._name_or_path)
    files = sorted({f for pattern in WEIGHT_FILES for f in src.glob(pattern)}) if src.is_dir() else []
    with staged_dir(base_dir) as tmp:
        if files:
            copy.deepcopy(base.config).save_pretrained(str(tmp))
            for f in files:
                _link_or_copy(f.resolve(), tmp / f.name)
        else:
            copy.deepcopy(model).unload().save_pretrained(str(tmp))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` as `dst`, or copy it where a link is refused (another filesystem, no permission)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)  # a plain new file: permissions follow the umask


@torch.no_grad()
def write_merged(model: nn.Module, tokenizer, merged_dir: Path, sample: dict[str, torch.Tensor]) -> float:
    """Merge LoRA into a copy of the weights, save it, return max |logits(merged) - logits(adapter)|."""
    from tunelab.train.logging import note

    model.eval()
    note("merge: folding the LoRA weights into a copy of the model ...")
    before = model(**sample).logits
    merged = copy.deepcopy(model).merge_and_unload()
    after = merged(**sample).logits
    note(f"merge: saving the merged model to {merged_dir} ...")
    with staged_dir(merged_dir) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
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
    return model, ensure_pad_token(load_tokenizer(path), f"model.name: {name!r}")
