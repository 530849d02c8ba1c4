"""Texts -> unit-length vectors with an encoder: token vectors pooled (mean over real tokens, or the first
token), then L2-normalised, so a dot product is the cosine similarity.

Mean pooling + normalisation is how all-MiniLM-L6-v2 (the built-in encoder) was trained as a sentence
embedder; the retrieval task trains with the same function, so what it learns is what the index uses.
`load_encoder(ref)` gives the encoder an index is built and queried with: a model reference or a finished
retrieval run, with a fingerprint of its weights so an index can refuse any other.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

POOLINGS = ("mean", "cls")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(B, T, H) token vectors + (B, T) mask -> (B, H) unit vectors."""
    if pooling == "cls":
        vectors = hidden[:, 0]
    elif pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        vectors = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    else:
        raise ValueError(f"pooling {pooling!r}; known: {', '.join(POOLINGS)}")
    return F.normalize(vectors.float(), dim=-1)


def encode_batch(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean"
                 ) -> torch.Tensor:
    """One padded batch through the encoder (a transformers AutoModel, or a peft wrapper of one) -> (B, H)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return pool(out.last_hidden_state, attention_mask, pooling)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], *, max_length: int, pooling: str = "mean",
                batch_size: int = 64, device: torch.device | str = "cpu", desc: str | None = "embed"
                ) -> np.ndarray:
    """(N, H) float32 unit vectors of `texts`, in their order. Texts are batched by length (less padding);
    longer than `max_length` tokens they are truncated. `desc`: the progress bar's label (None: no bar)."""
    from tunelab.data.batching import pad_batch
    from tunelab.data.tokens import pad_id_of

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    if not texts:
        return np.zeros((0, _width(model)), dtype=np.float32)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), 0), dtype=np.float32)
    pad = pad_id_of(tokenizer)
    steps = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if desc is not None:
        from tunelab.train.logging import progress

        steps = progress(steps, math.ceil(len(order) / batch_size), desc, "batches")
    for idx in steps:
        batch = pad_batch([ids[i] for i in idx], pad)
        vectors = encode_batch(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                               pooling).cpu().numpy()
        if out.shape[1] == 0:
            out = np.zeros((len(ids), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
    return out


def _width(model) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "hidden_size", 0) or 0)


# ---------------------------------------------------------------------------------------------
# The encoder an index is built with: a model reference or a finished `retrieval` run

DEFAULT_ENCODER = "builtin:minilm-l6"


@dataclass
class Encoder:
    """A text encoder ready to embed: the model (eval, fp32), its tokenizer and how vectors are made.

    `name` is the reference as given (a run folder or a model reference); `fingerprint` is a stable hash of
    the weights, `pooling` and `max_length`: two encoders with equal fingerprints give equal vectors.
    """

    model: Any
    tokenizer: Any
    pooling: str
    max_length: int
    name: str
    fingerprint: str

    def embed(self, texts: list[str], desc: str | None = "embed", batch_size: int = 64) -> np.ndarray:
        """(N, H) float32 unit vectors of `texts` (truncated at `max_length` tokens), in their order."""
        return embed_texts(self.model, self.tokenizer, list(texts), max_length=self.max_length,
                           pooling=self.pooling, batch_size=batch_size, desc=desc)


def load_encoder(ref: str = DEFAULT_ENCODER) -> Encoder:
    """The encoder behind `ref`: a finished run of task `retrieval` (its own pooling and max_length), or a
    model reference (builtin:NAME, a Hugging Face folder) loaded as a bare encoder with mean pooling.

    A run of another task is refused in one line saying what to pass instead.
    """
    from tunelab.runs import is_run

    if is_run(ref):
        model, tokenizer, pooling, max_length = _run_encoder(ref)
    else:
        model, tokenizer, max_length = _model_encoder(ref)
        pooling = "mean"
    model.eval()
    return Encoder(model, tokenizer, pooling, max_length, str(ref),
                   weights_fingerprint(model, pooling, max_length))


def _run_encoder(run_dir: str) -> tuple[Any, Any, str, int]:
    """(model, tokenizer, pooling, max_length) of a finished `retrieval` run."""
    from tunelab.errors import TunelabError
    from tunelab.runs import load_run, run_task

    task = run_task(run_dir)
    if task.name != "retrieval":
        raise TunelabError(f"{run_dir} is a {task.name} run, not an encoder; pass a run of task retrieval or a "
                           f"model reference such as {DEFAULT_ENCODER} (--model)")
    run = load_run(run_dir)
    pooling = run.meta.get("pooling", run.cfg.retrieval.pooling)
    return run.model.float(), run.tokenizer, pooling, int(run.meta.get("max_length", run.cfg.model.max_length))


def _model_encoder(ref: str) -> tuple[Any, Any, int]:
    """(AutoModel in fp32, tokenizer, max_length) of a model reference.

    max_length: the sentence-transformers setting where the folder has one (MiniLM was trained on 256
    tokens), else what both the position table and the tokenizer allow.
    """
    import json

    from transformers import AutoModel

    from tunelab.models.load import load_tokenizer, model_positions
    from tunelab.models.registry import resolve_model

    path = resolve_model(ref)
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = load_tokenizer(path)
    limits = [model_positions(model), getattr(tokenizer, "model_max_length", None)]
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        limits.append(json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length"))
    known = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    if not known:
        from tunelab.errors import TunelabError

        raise TunelabError(f"{ref}: neither the model nor its tokenizer states how many tokens it reads "
                           "(max_position_embeddings, model_max_length); set one in its config.json")
    return model, tokenizer, min(known)


def weights_fingerprint(model, pooling: str, max_length: int) -> str:
    """sha256 (hex, 16 characters) of every tensor's name, shape, dtype and bytes, plus pooling and max_length.

    Hashing the tensors rather than the files gives the same fingerprint for the same weights however they
    were stored (a run, a folder); MiniLM's 90 MB hash in about 0.1 s.
    """
    digest = hashlib.sha256(f"{pooling}|{max_length}".encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"|{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype (bf16 included)
    return digest.hexdigest()[:16]
