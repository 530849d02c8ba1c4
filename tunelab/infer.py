"""Use a finished run: load its model, evaluate it on labelled data, predict labels for new text."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.config import load_config
from tunelab.data.tokens import ensure_pad_token, pad_id_of
from tunelab.errors import TunelabError


def _refuse_pretrain_run(run_dir: Path, cfg) -> None:
    """A `tunelab pretrain` run has no labels and no chat format: say what to do with it instead."""
    from tunelab.models.scratch import is_scratch_dir

    if cfg.task == "causal_lm" and is_scratch_dir(run_dir / "model"):
        raise TunelabError(f"{run_dir} is a pretraining run of a scratch GPT: its eval.json and report.html "
                           f"hold perplexity and sample continuations; fine-tune it with "
                           f"model.name: {run_dir / 'model'}")


def load_run(run_dir: str | Path):
    """(config, model, tokenizer, labels) of a finished classification run, model in eval mode."""
    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if not (run_dir / "config.yaml").is_file() or not model_dir.is_dir():
        raise TunelabError(f"{run_dir} is not a finished tunelab run (needs config.yaml and model/); "
                           "pass the output_dir of `tunelab train`")
    cfg = load_config(run_dir / "config.yaml")
    _refuse_pretrain_run(run_dir, cfg)
    labels = json.loads((model_dir / "labels.json").read_text()) if (model_dir / "labels.json").exists() else None
    if (model_dir / "scratch_config.json").exists():
        from tunelab.models.scratch import load_scratch

        model, tokenizer = load_scratch(model_dir)
    elif (model_dir / "adapter_config.json").exists():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = load_adapter(model_dir, AutoModelForSequenceClassification)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model.eval()
    return cfg, model, tokenizer, labels


def load_adapter(model_dir: Path, auto_class):
    """A run's LoRA adapter (RUN_DIR/model) on the run's own base model, RUN_DIR/base beside it.

    Never the base path recorded in adapter_config.json: that is absolute, so a copied or moved run would
    load (or miss) the base of the folder it was copied from. `auto_class` is e.g. AutoModelForCausalLM.
    """
    import warnings

    from peft import PeftModel

    base_dir = model_dir.parent / "base"
    if not (base_dir / "config.json").is_file():
        raise TunelabError(f"{model_dir} is a LoRA adapter but its base model {base_dir} is missing; copy or "
                           "move the whole run folder (model/ and base/ together)")
    broken = sorted(p.name for p in base_dir.iterdir() if p.is_symlink() and not p.exists())
    if broken:  # runs of tunelab 0.1.0 linked to the base weights instead of holding them
        raise TunelabError(f"{base_dir} links to base weights that are gone ({', '.join(broken)}); runs of "
                           "earlier tunelab versions are only links: put the base model back where it was, or "
                           "train the run again")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated for v6
        warnings.simplefilter("ignore", FutureWarning)
        return PeftModel.from_pretrained(auto_class.from_pretrained(str(base_dir)), str(model_dir))


def _use_settings(cfg, text_field: str | None = None, label_field: str | None = None, generate=None):
    """Field names / generation settings given to predict or eval replace the run's own (`cfg` is a fresh
    copy loaded for this call, so nothing is written back to the run)."""
    if text_field:
        cfg.data.text_field = text_field
    if label_field:
        cfg.data.label_field = label_field
    if generate is not None:
        cfg.generate = generate
    return cfg


def evaluate_run(run_dir: str | Path, data: str | None = None, log=print, *, text_field: str | None = None,
                 label_field: str | None = None) -> tuple[dict, Path]:
    """Metrics of a run's model on labelled `data` (default: the run's own test split).

    `text_field` / `label_field` name the fields of `data` where they differ from the run's.

    Written to RUN_DIR/eval-<data name>.json (the run's own eval.json is left as it is).
    """
    import numpy as np

    from tunelab.data.sources import load_records
    from tunelab.evaluate.metrics import classification_metrics
    from tunelab.io import atomic_write_json
    from tunelab.tasks.classification import make_examples, predict_proba, split_records

    cfg, model, tokenizer, labels = load_run(run_dir)
    _use_settings(cfg, text_field, label_field)
    if data is None:
        splits = split_records(cfg, lambda _: None)
        if "test" not in splits:
            raise TunelabError(f"{run_dir} has no test split (data.test_fraction is 0 and no data.test file); "
                               "pass --data FILE with labelled records to evaluate on")
        records, source = splits["test"]
        name = "test"
    else:
        records, source, name = load_records(data), data, Path(data).stem
    ex = make_examples(tokenizer, records, text_field=cfg.data.text_field, label_field=cfg.data.label_field,
                       label2id={lab: i for i, lab in enumerate(labels)}, max_length=cfg.model.max_length,
                       source=source)
    probs = predict_proba(model, ex, 32, pad_id_of(tokenizer), torch.device("cpu")).numpy()
    metrics = classification_metrics(ex.labels, probs, labels)
    metrics["loss"] = float(-np.log(np.clip(probs[np.arange(len(ex)), ex.labels], 1e-12, None)).mean())
    out = Path(run_dir) / f"eval-{name}.json"
    atomic_write_json(out, metrics)
    return metrics, out


def predict_records(run_dir: str | Path, records: list[dict], source: str, *,
                    text_field: str | None = None) -> list[dict]:
    """Each record plus `prediction` (a label) and `scores` (label -> probability).

    `text_field` names the records' text field where it differs from the run's.
    """
    from tunelab.tasks.classification import make_examples, predict_proba

    cfg, model, tokenizer, labels = load_run(run_dir)
    _use_settings(cfg, text_field)
    ex = make_examples(tokenizer, records, text_field=cfg.data.text_field, label_field=None, label2id=None,
                       max_length=cfg.model.max_length, source=source)
    probs = predict_proba(model, ex, 32, pad_id_of(tokenizer), torch.device("cpu"))
    out = []
    for rec, p in zip(records, probs.tolist()):
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        clean["prediction"] = labels[max(range(len(p)), key=p.__getitem__)]
        clean["scores"] = {lab: round(v, 6) for lab, v in zip(labels, p)}
        out.append(clean)
    return out


# ---------------------------------------------------------------------------------------------
# Causal language models (task: causal_lm)


def is_causal_run(run_dir: str | Path) -> bool:
    """True when RUN_DIR is a finished causal_lm run of a Hugging Face model (not a `tunelab pretrain` run
    of a scratch GPT, whose model folder holds scratch_config.json)."""
    path = Path(run_dir) / "config.yaml"
    return (path.is_file() and load_config(path).task == "causal_lm"
            and not (Path(run_dir) / "model" / "scratch_config.json").exists())


def load_causal_model(model_dir: str | Path):
    """(model, tokenizer) from a saved causal LM folder: a peft adapter or a full/merged model."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    from transformers import AutoModelForCausalLM

    if (model_dir / "adapter_config.json").exists():
        model = load_adapter(model_dir, AutoModelForCausalLM)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(str(model_dir)))
    model.eval()
    return model, tokenizer


def load_causal_run(run_dir: str | Path):
    """(config, model, tokenizer, data format) of a finished causal_lm run, model in eval mode."""
    from tunelab.tasks.causal_lm import DATA_INFO

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "model").is_dir():
        raise TunelabError(f"{run_dir} is not a finished tunelab run (needs config.yaml and model/); "
                           "pass the output_dir of `tunelab train`")
    cfg = load_config(run_dir / "config.yaml")
    _refuse_pretrain_run(run_dir, cfg)
    if cfg.task != "causal_lm":
        raise TunelabError(f"{run_dir} is a {cfg.task} run, not causal_lm")
    info = json.loads((run_dir / DATA_INFO).read_text()) if (run_dir / DATA_INFO).exists() else {}
    model, tokenizer = load_causal_model(run_dir / "model")
    return cfg, model, tokenizer, info.get("format", cfg.data.format)


def causal_prompts(tokenizer, records: list[dict], source: str, fmt: str, context: int | None,
                   max_new_tokens: int, text_field: str = "text"
                   ) -> tuple[list[list[int]], list[str | None], list, int]:
    """Prompt ids, references (None where a record has no answer), normalised records, and how many prompts
    were cut from the left to fit the model's `context` (see `generation.model_context`) with the answer.

    `fmt` "auto" detects the format from the first record's fields.
    """
    from tunelab.data.chat_template import prompt_and_reference, require_chat_template
    from tunelab.data.formats import CHAT_FORMATS, detect_format, normalise
    from tunelab.generation import fit_prompts

    fmt = detect_format(records, source, text_field) if fmt == "auto" else fmt
    if fmt in CHAT_FORMATS:
        require_chat_template(tokenizer, fmt)
    prompts, refs, norms = [], [], []
    for i, rec in enumerate(records):
        norm = normalise(rec, fmt, i, source, need_answer=False, text_field=text_field)
        ids, ref = prompt_and_reference(tokenizer, norm, fmt)
        prompts.append(ids)
        refs.append(ref)
        norms.append(norm)
    prompts, cut = fit_prompts(prompts, context, max_new_tokens)
    return prompts, refs, norms, cut


def text_records(texts: list[str], fmt: str) -> list[dict]:
    """`--text` inputs as records: a user turn for chat-trained runs, a plain prompt (continued) otherwise."""
    if fmt in ("prompt_completion", "text"):
        return [{"prompt": t} for t in texts]
    return [{"messages": [{"role": "user", "content": t}]} for t in texts]


def predict_causal_records(run_dir: str | Path, records: list[dict] | None, source: str,
                           texts: list[str] | None = None, batch_size: int = 8, log=None, *,
                           text_field: str | None = None, generate=None) -> list[dict]:
    """Each record plus `generated` (the model's answer), with the run's `generate:` settings.

    Prompts are cut only to fit the model's context (not the training `model.max_length`); `log` (default:
    standard error, as standard output may carry the JSONL) says how many were cut.
    """
    import sys

    from tunelab.generation import generate_texts, model_context, settings_kwargs

    log = log or (lambda line: print(line, file=sys.stderr))
    cfg, model, tokenizer, fmt = load_causal_run(run_dir)
    _use_settings(cfg, text_field, generate=generate)  # a GenerateConfig replaces the run's generate:
    if texts:
        records = text_records(texts, fmt)
    context = model_context(model, tokenizer)
    # detected from the inputs' own fields: they may be laid out differently from the training data
    prompts, _, _, cut = causal_prompts(tokenizer, records, source, "auto", context,
                                        cfg.generate.max_new_tokens, cfg.data.text_field)
    if cut:
        log(f"{cut} of {len(prompts)} prompts cut from the left to fit the model's context of {context} tokens "
            f"with generate.max_new_tokens {cfg.generate.max_new_tokens}")
    kwargs = settings_kwargs(tokenizer, model, cfg.generate)
    generated = generate_texts(model, tokenizer, prompts, kwargs, batch_size)
    out = []
    for rec, text in zip(records, generated):
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        clean["generated"] = text
        out.append(clean)
    return out


def evaluate_causal_run(run_dir: str | Path, data: str | None = None, log=print, *,
                        text_field: str | None = None, generate=None) -> tuple[dict, Path]:
    """Loss, perplexity and generation metrics of a causal_lm run on `data` (default: its test split).

    Written to RUN_DIR/eval-<data name>.json (the run's own eval.json is left as it is).
    """
    from tunelab.data.encoding import encode_records
    from tunelab.data.formats import detect_format
    from tunelab.data.sources import load_records
    from tunelab.io import atomic_write_json
    from tunelab.tasks.causal_lm import evaluate_loss, generation_eval, split_records

    cfg, model, tokenizer, fmt = load_causal_run(run_dir)
    _use_settings(cfg, text_field, generate=generate)  # a GenerateConfig replaces the run's generate:
    if data is None:
        records, source = split_records(cfg.data, cfg.train.seed, load_records(cfg.data.train),
                                        lambda _: None).get("test", ([], ""))
        name = "test"
        if not records:
            raise TunelabError(f"{run_dir}: the run has no test split; pass --data FILE")
    else:
        records, source, name = load_records(data), data, Path(data).stem
    if data is not None or fmt == "auto":
        fmt = detect_format(records, source, cfg.data.text_field)
    encoded = encode_records(tokenizer, records, fmt, max_length=cfg.model.max_length,
                             train_on_prompt=cfg.data.train_on_prompt, source=source,
                             text_field=cfg.data.text_field)
    log(f"{name}: {encoded.describe(cfg.model.max_length)}")
    device = torch.device("cpu")
    metrics = evaluate_loss(model, encoded, 16, tokenizer.pad_token_id, device)
    metrics["n"] = len(encoded)
    if cfg.generate.samples_in_eval > 0:
        gen, samples = generation_eval(model, tokenizer, encoded, gen_cfg=cfg.generate, batch_size=8,
                                       device=device, log=log)
        metrics.update(gen)
        metrics["samples"] = samples
    out = Path(run_dir) / f"eval-{name}.json"
    atomic_write_json(out, metrics)
    return metrics, out


def merge_run(run_dir: str | Path, log=print) -> tuple[Path, float]:
    """Write RUN_DIR/merged (LoRA folded into the weights); returns it and max |logit diff| vs the adapter."""
    from tunelab.data.batching import padded_batch
    from tunelab.models.build import is_peft, write_merged
    from tunelab.train.logging import note

    note(f"merge: loading the run in {run_dir} ...")
    cfg, model, tokenizer, fmt = load_causal_run(run_dir)
    if not is_peft(model):
        raise TunelabError(f"{run_dir}: the model is not a LoRA adapter (method {cfg.method.name}); "
                           "only method: lora runs can be merged")
    sample = padded_batch(_merge_sample(cfg, tokenizer, fmt), tokenizer.pad_token_id)
    merged_dir = Path(run_dir) / "merged"
    diff = write_merged(model, tokenizer, merged_dir,
                        {k: sample[k] for k in ("input_ids", "attention_mask")})
    return merged_dir, diff


def _merge_sample(cfg, tokenizer, fmt: str) -> list:
    """Up to 4 encoded examples of the run's own data, or a fixed sentence when that cannot be read."""
    from tunelab.data.encoding import Encoded, encode_records
    from tunelab.data.formats import detect_format
    from tunelab.data.sources import load_records
    from tunelab.data.tokens import IGNORE_INDEX

    try:
        records = load_records(cfg.data.train)[:4]
        fmt = detect_format(records, cfg.data.train, cfg.data.text_field) if fmt == "auto" else fmt
        examples = encode_records(tokenizer, records, fmt, max_length=cfg.model.max_length,
                                  train_on_prompt=True, source=cfg.data.train,
                                  text_field=cfg.data.text_field).examples
        if examples:
            return examples
    except TunelabError:
        pass
    ids = tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    return [Encoded(ids, ids[1:] + [IGNORE_INDEX], 0)]
