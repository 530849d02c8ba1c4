"""Texts -> unit-length vectors with an encoder: token vectors pooled (mean over real tokens, or the first
token), then L2-normalised, so a dot product is the cosine similarity.

Mean pooling + normalisation is how all-MiniLM-L6-v2 (the built-in encoder) was trained as a sentence
embedder; the retrieval task trains with the same function, so what it learns is what the index uses.
"""
from __future__ import annotations

import math

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
