"""A causal-LM LoRA run is self-contained: copied or tarred elsewhere, with the original run and the base model's
folder deleted, tunelab loads, merges and generates with the copy exactly as with the original; and what plain
peft needs, as the README states it."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from causal_helpers import chat_records, write_jsonl
from tunelab.config import config_from_dict
from tunelab.run import train

PROMPTS = ["<|im_start|>user\nCount to 3.<|im_end|>\n", "hello world"]


@torch.no_grad()
def logits_of(model, tok) -> torch.Tensor:
    batch = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    return model.eval()(**batch).logits


def loaded_logits(run_dir: Path) -> torch.Tensor:
    from tunelab.runs import load_run

    run = load_run(run_dir)
    model, tok = run.model, run.tokenizer
    return logits_of(model, tok)


def tar_round_trip(folder: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True)
    archive = target.parent / "run.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=target.name)
    with tarfile.open(archive) as tar:
        tar.extractall(target.parent, filter="tar")
    archive.unlink()
    return target


def test_a_copied_lora_run_loads_merges_and_matches_plain_peft(tiny_dir, tok, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.tasks.causal_lm import merge_run

    source = shutil.copytree(tiny_dir, tmp_path / "base-source")
    data = write_jsonl(tmp_path / "chat.jsonl", chat_records(20))
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(source), "max_length": 128}, "data": {"train": str(data)},
        "method": {"name": "lora", "target_modules": "all-linear"},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "scheduler": "constant",
                  "early_stopping": {"metric": "loss"}},
        "generate": {"max_new_tokens": 4, "samples_in_eval": 0}, "output_dir": str(tmp_path / "orig" / "run")})
    run_dir = train(cfg, show_progress=False, log=lambda *a: None)
    assert (run_dir / "base" / "model.safetensors").stat().st_nlink == 2  # hard-linked to the source
    expected = loaded_logits(run_dir)
    in_place = AutoPeftModelForCausalLM.from_pretrained(str(run_dir / "model"))  # the recorded path, in place
    assert torch.equal(logits_of(in_place, tok), expected)

    copy = shutil.copytree(run_dir, tmp_path / "elsewhere" / "copy")
    untarred = tar_round_trip(run_dir, tmp_path / "untarred" / "run")
    shutil.rmtree(tmp_path / "orig")
    shutil.rmtree(source)
    assert torch.equal(loaded_logits(untarred), expected)
    assert torch.equal(loaded_logits(copy), expected)
    merged_dir, diff = merge_run(copy)
    assert merged_dir == copy / "merged" and diff < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert (logits_of(merged, tok) - expected).abs().max() < 1e-4

    # plain peft, as the README says: the base from the run's own folder works anywhere ...
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(copy / "base")), str(copy / "model"))
    assert torch.equal(logits_of(plain, tok), expected)
    # ... while AutoPeftModel follows the recorded absolute path, which left with the original run
    recorded = json.loads((copy / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((tmp_path / "orig" / "run" / "base").resolve())
    with pytest.raises(Exception, match="orig/run/base"):
        AutoPeftModelForCausalLM.from_pretrained(str(copy / "model"))
