"""Token conventions shared by data, models and training: the ignore index and the pad-token fallback.

One name for each, so that a loss, a batch builder and a model agree on what "no target here" and "pad with
this id" mean.
"""
from __future__ import annotations

IGNORE_INDEX = -100
"""Target / label value that takes no loss (torch's `cross_entropy` default `ignore_index`)."""


def pad_id_of(tokenizer, fallback: int | None = 0) -> int | None:
    """The id to pad with: the tokenizer's pad token, else `fallback` (padding is masked out of attention
    and loss, so any id will do)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else fallback


def ensure_pad_token(tokenizer, what: str = "the tokenizer"):
    """Give a tokenizer without a pad token its EOS token as pad (padding is never trained on, so any id
    will do); returns the tokenizer. One with neither is a TunelabError naming `what` (e.g. "model.name: 'x'")."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            from tunelab.errors import TunelabError

            raise TunelabError(f"{what} has neither a pad nor an end-of-sequence token, so batches cannot be "
                               "padded; use a tokenizer that has one (`tunelab tokenizer train` adds both)")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
