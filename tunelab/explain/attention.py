"""Attention weights of a run's model: per layer and head, as heatmap images and as the "attention" method.

Attention is not explanation. A head's weights say where it read from, not what changed the prediction:
Jain & Wallace (2019) found attention often uncorrelated with gradient attributions and could swap in very
different weights without changing the output; Wiegreffe & Pinter (2019) answered that such swaps are
adversarial and that attention can still tell something in some settings, but neither argues it measures
influence. Read the maps as what the heads looked at, and check any method with the deletion curves of
tunelab/explain/faithfulness.py before trusting it.

Where the weights come from:
- Hugging Face models: transformers 5 loads them with SDPA attention, which returns no weights at all
  (`output_attentions=True` gives an empty tuple and one log warning). `eager_model(run)` is a copy of the
  run's model switched to the "eager" implementation, which computes softmax(QKᵀ/√d) itself and returns it;
  the copy is cached on the run, and the run's own model is left as it was for the other methods.
- Scratch transformers (tunelab/nn): `MultiHeadAttention` averages its weights over heads, so the per-head
  weights are read off `scaled_dot_product_attention` while the model runs (`_scratch_weights`). Recurrent
  scratch models have no attention: one clear error.

A causal LM's maps are lower-triangular: a token attends only to itself and the tokens before it, so the
upper triangle is exactly 0 (masked, not learned).

`attention_scores` (the "attention" method's per-token scores) is attention rollout (Abnar & Zuidema 2020):
each layer's head-averaged weights mixed half and half with the identity (the residual stream), rows
renormalised, and the layers multiplied from the first up; a token's score is the rollout row of the
position the model reads its answer from (`readout`): the first token in a bidirectional model (BERT's
[CLS], which its classification head reads), the last token in a causal one (the only one that has seen
every token), and for a scratch classifier what its pooling reads: the mean of the rows of the real tokens
(pooling "mean", the default: scratch tokenizers often add no [CLS]) or the last real token ("last").
The scores are fractions of attention flow, all >= 0 and summing to at most 1: they rank tokens but are not
an attribution (they never say "against", and do not add up to a change in the output).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    import torch

MAP_TOKENS = 32
"""Tokens shown on an image's axes; a longer text shows its first MAP_TOKENS (the title says so)."""
_CACHE = "_eager_model"  # attribute of the Run that holds the eager copy


# ---------------------------------------------------------------------------------------------
# The model that returns weights


def _is_transformers(model) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "_attn_implementation")


def _scratch_attention_modules(model) -> list:
    from tunelab.nn.attention import MultiHeadAttention

    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


def eager_model(run):
    """The run's model as it can return attention weights, cached on `run` (one copy for many texts).

    A transformers model is copied and switched to eager attention (SDPA returns no weights); a scratch
    transformer is used as it is (its weights are read while it runs); anything else is a TunelabError.
    """
    cached = getattr(run, _CACHE, None)
    if cached is not None:
        return cached
    model = run.model
    if _is_transformers(model):
        if getattr(model.config, "is_encoder_decoder", False):
            raise TunelabError(f"{run.dir}: attention maps cover encoder and decoder-only models; this "
                               f"{run.task.name} run's model is an encoder-decoder (its decoder needs a target "
                               "to run); use --method ig or occlusion")
        if model.config._attn_implementation != "eager":
            model = copy.deepcopy(model)
            base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA adapter
            base.set_attn_implementation("eager")
            model.eval()
    elif not _scratch_attention_modules(model):
        raise TunelabError(f"{run.dir}: the model ({type(model).__name__}) has no attention layers (a recurrent "
                           "scratch model reads tokens in order); attention maps need a transformer: use "
                           "--method ig or occlusion")
    setattr(run, _CACHE, model)
    return model


@contextlib.contextmanager
def _scratch_weights() -> Iterator[list]:
    """Collect the per-head weights (B, nh, Tq, Tk) of every scratch attention call made inside the block."""
    import tunelab.nn.attention as attention

    calls: list = []
    real = attention.scaled_dot_product_attention

    def recording(*args, **kwargs):
        out, weights = real(*args, **kwargs)
        calls.append(weights.detach())
        return out, weights

    attention.scaled_dot_product_attention = recording  # MultiHeadAttention looks it up at each call
    try:
        yield calls
    finally:
        attention.scaled_dot_product_attention = real


# ---------------------------------------------------------------------------------------------
# Weights of one text


def tokenize(tokenizer, text: str, context: str | None = None, max_length: int | None = None) -> dict:
    """The tokenizer's tensors (1, T) for `text` (and `context`, a QA passage, as the second segment)."""
    kwargs: dict[str, Any] = {"return_tensors": "pt"}
    if max_length:
        kwargs.update(truncation="only_second" if context else True, max_length=max_length)
    return dict(tokenizer(text, context, **kwargs) if context else tokenizer(text, **kwargs))


def _forward_inputs(model, enc: dict) -> dict:
    """input_ids and attention_mask, plus token_type_ids where the model's forward names them (BERT)."""
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc.get("attention_mask")}
    forward = model.get_base_model().forward if hasattr(model, "get_base_model") else model.forward
    if "token_type_ids" in enc and "token_type_ids" in inspect.signature(forward).parameters:
        inputs["token_type_ids"] = enc["token_type_ids"]
    return inputs


def weights_of(model, enc: dict) -> torch.Tensor:
    """Attention weights (layers, heads, T, T) of one encoded text (`enc` tensors of shape (1, T))."""
    import torch

    inputs = _forward_inputs(model, enc)
    with torch.no_grad():
        if _is_transformers(model):
            out = model(**inputs, output_attentions=True)
            layers = [a for a in (out.attentions or ()) if a is not None]
        else:
            with _scratch_weights() as layers:
                model(**inputs)
    t = enc["input_ids"].shape[1]
    if not layers or any(a.shape[-2:] != (t, t) for a in layers):
        raise TunelabError(f"the model ({type(model).__name__}) returned no self-attention weights for its "
                           f"{t} tokens; attention maps need an encoder or decoder-only transformer")
    return torch.stack([a[0] for a in layers]).float()  # (L, H, T, T)


def _max_length(run) -> int | None:
    return getattr(getattr(run.cfg, "model", None), "max_length", None)


def attention_weights(run, text: str, context: str | None = None) -> tuple[list[str], torch.Tensor]:
    """(tokens, weights (layers, heads, T, T)) of the run's model on `text` (with `context`: a QA passage).

    Row i of a head's map is how token i spread its attention over the tokens (keys): each row sums to 1 over
    the unmasked keys. The text is tokenized as given, with the tokenizer's special tokens (a chat run's
    template is not applied), and cut at the run's model.max_length, as in training; a question and its
    passage make the row the QA task builds (tunelab.explain.attribute.encode).
    """
    model = eager_model(run)
    if context is None:
        enc = tokenize(run.tokenizer, text, None, _max_length(run))
    else:
        from tunelab.explain.attribute import encode

        row = encode(run, text, context)
        enc = {"input_ids": _row(row.ids), "attention_mask": _row(row.mask)}
        if row.type_ids is not None:
            enc["token_type_ids"] = _row(row.type_ids)
    tokens = run.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    return tokens, weights_of(model, enc)


# ---------------------------------------------------------------------------------------------
# The "attention" method: rollout


def is_causal(weights: torch.Tensor) -> bool:
    """True when no query attends to a later key in any layer or head (a causal mask)."""
    import torch

    return bool(torch.triu(weights, diagonal=1).abs().max() == 0)


def rollout(weights: torch.Tensor) -> torch.Tensor:
    """Attention rollout (T, T) of weights (L, H, T, T): prod over layers of rownorm(0.5 mean_h A + 0.5 I)."""
    import torch

    t = weights.shape[-1]
    eye = torch.eye(t, dtype=weights.dtype)
    flow = eye
    for layer in weights:  # (H, T, T), first layer first
        mixed = 0.5 * layer.mean(dim=0) + 0.5 * eye  # the residual connection carries the token itself
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        flow = mixed @ flow  # (T, T): how much of token j reaches position i after this layer
    return flow


def attention_scores(run, encoded) -> list[float]:
    """The "attention" method's score of each token of `encoded`: its attention rollout from the readout.

    The readout (`readout`) is the first token (bidirectional models: [CLS]), the last real token (causal
    models), or a scratch classifier's pooling (the mean over the real tokens' rows, or the last one).
    Special tokens score 0. Scores are >= 0: a ranking of where attention flowed, not an attribution.
    `encoded` is tunelab.explain.attribute's `Encoded` (ids, mask, type_ids, special) or any object with
    `input_ids` (T,) or (1, T) and optional `attention_mask`, `token_type_ids` and `special` (a bool per token).
    """
    import torch

    enc = {}
    for name, short in (("input_ids", "ids"), ("attention_mask", "mask"), ("token_type_ids", "type_ids")):
        values = getattr(encoded, name, None)
        values = getattr(encoded, short, None) if values is None else values
        if values is not None:
            enc[name] = _row(values)
    weights = weights_of(eager_model(run), enc)  # (L, H, T, T)
    t = weights.shape[-1]
    real = enc["attention_mask"][0].bool() if "attention_mask" in enc else torch.ones(t, dtype=torch.bool)
    scores = readout(run.model, real, is_causal(weights)) @ rollout(weights)  # (T,) @ (T, T) -> (T,)
    special = getattr(encoded, "special", None)
    keep = real.clone() if special is None else real & ~torch.as_tensor(special, dtype=torch.bool).view(-1)
    return [float(s) if k else 0.0 for s, k in zip(scores, keep)]


def _pooling(model) -> str | None:
    """A scratch classifier's pooling ("mean" or "last"; TransformerClassifier always means), else None."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or not hasattr(model, "classifier"):
        return None
    return config.get("pooling", "mean")


def readout(model, real: torch.Tensor, causal: bool) -> torch.Tensor:
    """Weights (T,) over the rollout's rows: the positions the model reads its answer from (module doc), each
    real token (`real`: (T,) bool) of a mean-pooled classifier 1/n, else one position 1."""
    import torch

    pooling = _pooling(model)
    weights = torch.zeros(real.shape[0])
    if pooling == "mean":
        weights[real] = 1.0 / int(real.sum())
    elif pooling == "last" or causal:
        weights[int(real.nonzero().max())] = 1.0
    else:
        weights[0] = 1.0
    return weights


def readout_name(model) -> str:
    """How settings name the readout: the first token, the last one, or the mean over the real tokens."""
    pooling = _pooling(model)
    if pooling == "mean":
        return "every real token, averaged (the classifier's mean pooling)"
    if pooling == "last":
        return "the last real token (the classifier's pooling)"
    return "the first token (a causal model: the last one)"


def _row(values) -> torch.Tensor:
    """A (1, T) long tensor from a list or a tensor of shape (T,) or (1, T)."""
    import torch

    return torch.as_tensor(values, dtype=torch.long).view(1, -1)


# ---------------------------------------------------------------------------------------------
# Heatmap images


def attention_maps(run, text: str, out_dir: str | Path, layers: list[int] | None = None, *,
                   context: str | None = None, prefix: str = "attention", overwrite: bool = False) -> list[Path]:
    """Heatmap PNGs of the attention of the run's model on `text`, written atomically into `out_dir`.

    Per layer (1-based numbers in `layers`; None = all): PREFIX-layerNN-heads.png (one panel per head) and
    PREFIX-layerNN-mean.png (the mean over heads). Rows are the attending tokens (queries), columns the
    tokens attended to (keys). Texts longer than MAP_TOKENS show their first MAP_TOKENS tokens (the title
    says how many there were; the shown cells of a row then sum to less than 1). Existing files are a
    TunelabError unless `overwrite`.
    """
    tokens, weights = attention_weights(run, text, context)
    n_layers = weights.shape[0]
    chosen = list(range(1, n_layers + 1)) if layers is None else list(layers)
    bad = [n for n in chosen if not 1 <= n <= n_layers]
    if bad or not chosen:
        raise TunelabError(f"layers {bad or chosen}: this model has layers 1..{n_layers}; pick numbers in that "
                           "range (or none for all)")
    out_dir = Path(out_dir)
    paths = [out_dir / f"{prefix}-layer{n:02d}-{kind}.png" for n in chosen for kind in ("heads", "mean")]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise TunelabError(f"{existing[0]} exists ({len(existing)} of the {len(paths)} images); pass --overwrite "
                           "to replace them, or choose another output folder")
    shown = min(len(tokens), MAP_TOKENS)
    labels = [_label(t) for t in tokens[:shown]]
    note = "" if shown == len(tokens) else f" (first {shown} of {len(tokens)} tokens)"
    causal = " - causal: upper triangle masked" if is_causal(weights) else ""
    for i, n in enumerate(chosen):
        layer = weights[n - 1, :, :shown, :shown].numpy()  # (H, shown, shown)
        _write_png(paths[2 * i], _heads_figure(layer, labels, f"layer {n}, {layer.shape[0]} heads{note}{causal}"))
        _write_png(paths[2 * i + 1], _mean_figure(layer.mean(axis=0), labels,
                                                  f"layer {n}, mean over {layer.shape[0]} heads{note}{causal}"))
    return paths


def _label(token: str) -> str:
    """A token as an axis label: spaces (and BPE's space marks) shown as ␣, newlines as ⏎, long ones cut."""
    for mark, shown in (("Ġ", "␣"), ("▁", "␣"), (" ", "␣"), ("Ċ", "⏎"), ("\n", "⏎")):
        token = token.replace(mark, shown)
    return token if len(token) <= 12 else token[:11] + "…"


def _heads_figure(layer, labels: list[str], title: str):
    """One panel per head in a grid (up to 4 per row); token labels on the outer panels only."""
    import math

    from matplotlib.figure import Figure

    heads, t = layer.shape[0], len(labels)
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    side = max(2.6, 0.13 * t + 0.6)  # inches per panel: about 9 points per token label
    margin = 1.0  # inches left and below for the token labels
    width, height = cols * side * 1.08 + margin + 1.2, rows * side * 1.18 + margin + 0.8
    fig = Figure(figsize=(width, height))  # placed by hand: constrained layout doubles the drawing time
    fig.subplots_adjust(left=margin / width, right=1 - 1.2 / width, bottom=margin / height,
                        top=1 - 0.8 / height, wspace=0.08, hspace=0.18)
    axes = fig.subplots(rows, cols, squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.set_axis_off()
            continue
        image = ax.imshow(layer[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"head {h + 1}", fontsize=9)
        _tick_labels(ax, labels, x=h // cols == rows - 1 or h + cols >= heads, y=h % cols == 0, size=6)
    bar = fig.add_axes((1 - 0.95 / width, 0.3, 0.18 / width, 0.4))  # (left, bottom, width, height)
    fig.colorbar(image, cax=bar, label="attention weight")
    fig.suptitle(title, fontsize=11)
    return fig


def _mean_figure(mean, labels: list[str], title: str):
    """The head-averaged map of one layer, large enough to read every token."""
    from matplotlib.figure import Figure

    side = max(4.0, 0.22 * len(labels) + 1.5)
    fig = Figure(figsize=(side + 1.2, side + 0.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(mean, cmap="viridis", vmin=0.0, vmax=max(float(mean.max()), 1e-6), interpolation="nearest")
    _tick_labels(ax, labels, x=True, y=True, size=8)
    ax.set_xlabel("attended to (key)")
    ax.set_ylabel("attending (query)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    ax.set_title(title, fontsize=10)
    return fig


def _tick_labels(ax, labels: list[str], *, x: bool, y: bool, size: int) -> None:
    ticks = list(range(len(labels)))
    ax.set_xticks(ticks, labels if x else [], rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels if y else [], fontsize=size)


def _write_png(path: Path, fig) -> None:
    """Render `fig` to PNG bytes in memory and write them atomically (no half-written image on a crash)."""
    import io

    from tunelab.io import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
