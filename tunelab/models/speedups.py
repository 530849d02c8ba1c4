"""Skip work the loss never uses.

A BERT-style sequence classifier reads only the first ([CLS]) position of the last encoder layer (the
pooler takes `hidden[:, 0]`). Every other position of that layer still costs its query projection,
attention, output projection and feed-forward block — about a sixth of MiniLM-L6's compute. Here the
last layer computes keys and values for all positions (the [CLS] query attends to them) but everything
else for position 0 only. Outputs and gradients are the same as the full layer's; parameter names are
untouched, so saved models are ordinary transformers models.
"""
from __future__ import annotations

import torch
from torch import nn


def _cls_only_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      *args, **kwargs) -> torch.Tensor:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    sa = self.attention.self
    B, T, _ = hidden_states.shape
    hs = sa.attention_head_size
    cls = hidden_states[:, :1]                                           # (B, 1, C)
    q = sa.query(cls).view(B, 1, -1, hs).transpose(1, 2)                 # (B, nh, 1, hs)
    k = sa.key(hidden_states).view(B, T, -1, hs).transpose(1, 2)         # (B, nh, T, hs)
    v = sa.value(hidden_states).view(B, T, -1, hs).transpose(1, 2)       # (B, nh, T, hs)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[..., :1, :]                      # (B, 1, 1, T): the [CLS] row
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(sa.config._attn_implementation, eager_attention_forward)
    out, _ = attend(sa, q, k, v, attention_mask, dropout=sa.dropout.p if sa.training else 0.0,
                    scaling=sa.scaling)
    out = self.attention.output(out.reshape(B, 1, -1), cls)              # (B, 1, C)
    return self.feed_forward_chunk(out)                                  # (B, 1, C)


def cls_only_last_layer(model: nn.Module) -> bool:
    """Make a BertForSequenceClassification's last layer compute only the [CLS] position.

    Returns False (and changes nothing) for any other architecture.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ != "BertForSequenceClassification" or base.config.is_decoder:
        return False
    last = base.bert.encoder.layer[-1]
    if getattr(last, "_tunelab_cls_only", False):
        return True
    last.__class__ = type(f"ClsOnly{type(last).__name__}", (type(last),),
                          {"forward": _cls_only_forward, "_tunelab_cls_only": True})
    return True


def undo_cls_only(model: nn.Module) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in getattr(getattr(getattr(base, "bert", None), "encoder", None), "layer", []):
        if getattr(layer, "_tunelab_cls_only", False):
            layer.__class__ = type(layer).__mro__[1]
