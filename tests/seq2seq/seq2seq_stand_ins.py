"""Minimal stand-ins for tunelab.data.parallel and tunelab.models.seq2seq, used by these tests only while
those modules (written by other helpers of issue 12) are not in the tree. conftest.py installs them only
when the real module cannot be imported; delete this file once both have landed."""
from __future__ import annotations

import types

import torch


def load_pairs(ref, *, source_field="source", target_field="target", log=print, **_):
    from tunelab.data.sources import load_records

    if isinstance(ref, dict):
        src = open(ref["source"], encoding="utf-8").read().splitlines()
        tgt = open(ref["target"], encoding="utf-8").read().splitlines()
        return [{"source": s, "target": t} for s, t in zip(src, tgt)]
    return [{**r, "source": r[source_field], "target": r[target_field]} for r in load_records(ref)]


def load_seq2seq(model_cfg, log):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(model_cfg.name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(model_cfg.name)


def seq2seq_generate(model, tokenizer, input_ids, attention_mask, *, max_new_tokens, num_beams=1,
                     length_penalty=1.0, no_repeat_ngram_size=0):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                         num_beams=num_beams, do_sample=False, length_penalty=length_penalty,
                         no_repeat_ngram_size=no_repeat_ngram_size)
    drop = {base.config.decoder_start_token_id, base.config.pad_token_id, base.config.eos_token_id}
    return [[t for t in row.tolist() if t not in drop] for row in out]


def seq2seq_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   labels=batch["labels"]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                             ignore_index=-100, reduction="sum")
    return loss, int((batch["labels"] != -100).sum())


def encode_targets(model, tokenizer, texts, max_length):
    eos = model.config.eos_token_id
    return [row[:max_length - 1] + [eos] for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def save_seq2seq(model, tokenizer, folder):
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def load_saved_seq2seq(folder):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoModelForSeq2SeqLM.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))


def module(name: str, functions: list[str]) -> types.ModuleType:
    mod = types.ModuleType(name)
    for f in functions:
        setattr(mod, f, globals()[f])
    return mod
