"""Pruning: structured (remove attention heads and FFN neurons) and unstructured magnitude (zero small weights).

Structured pruning makes the modules smaller, so it saves parameters and time. transformers 5 has no
`prune_heads`, so the slicing is done here, for the two module layouts it knows:

- BERT-family encoders (bert, roberta, xlm-roberta, electra, camembert): per layer
  `attention.self.{query,key,value}`, `attention.output.dense`, `intermediate.dense`, `output.dense`;
- Llama-family decoders (llama, mistral, qwen2): per layer `self_attn.{q,k,v,o}_proj`,
  `mlp.{gate,up,down}_proj`, with grouped-query attention.

Which units go is chosen by a first-order Taylor estimate of the loss change (`structured_importance`).
Magnitude pruning zeroes the smallest weights with torch.nn.utils.prune and keeps every shape: it is
reported as sparsity only, since dense kernels run no faster on zeros.

Only the modules change: the model's `config` stays the original one, so a saved result is rebuilt from
config.json and the step re-applied (see tunelab.compress).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from tunelab.errors import TunelabError

if TYPE_CHECKING:  # torch loads with the model, not with the CLI parser
    import torch
    from torch import nn

BERT_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
LLAMA_TYPES = ("llama", "mistral", "qwen2")
UNSUPPORTED = ("structured pruning supports BERT-family ({}) and Llama-family ({}) models; {} is not one: "
               "--prune magnitude, --low-rank and --quantize work on any model")


@dataclass
class _Block:
    """The prunable parts of one layer. Linear layers are (parent module, attribute name) so they can be replaced."""

    attn: nn.Module  # holds the head attributes the forward reads
    q: tuple[nn.Module, str]
    k: tuple[nn.Module, str]
    v: tuple[nn.Module, str]
    o: tuple[nn.Module, str]
    ffn_in: list[tuple[nn.Module, str]]  # rows = neurons (BERT intermediate.dense; Llama gate_proj, up_proj)
    ffn_out: tuple[nn.Module, str]  # columns = neurons (BERT output.dense; Llama down_proj)
    ffn: nn.Module | None  # holds `intermediate_size` (Llama's MLP), None for BERT
    head_dim: int
    groups: int  # query heads per key/value head (1 without grouped-query attention)

    @property
    def n_heads(self) -> int:
        return _linear(self.q).out_features // self.head_dim

    @property
    def n_ffn(self) -> int:
        return _linear(self.ffn_out).in_features


def _linear(ref: tuple[nn.Module, str]) -> nn.Linear:
    return getattr(ref[0], ref[1])


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def _blocks(model: nn.Module) -> list[_Block]:
    """One _Block per layer of a supported model; a TunelabError for any other model."""
    from torch import nn

    from tunelab.methods.common import layer_stack

    kind = _model_type(model)
    if kind not in BERT_TYPES + LLAMA_TYPES:
        raise TunelabError(UNSUPPORTED.format(", ".join(BERT_TYPES), ", ".join(LLAMA_TYPES), kind))
    _, stack = layer_stack(model)
    try:
        blocks = [_bert_block(layer) if kind in BERT_TYPES else _llama_block(layer) for layer in stack]
    except AttributeError as e:  # a model type we know, with a layout we do not
        raise TunelabError(f"structured pruning: the {kind} layers of {type(model).__name__} are not laid out "
                           f"as expected ({e})") from e
    for b in blocks:  # checked before anything is sliced, so a refusal leaves the model whole
        for ref in (b.q, b.k, b.v, b.o, b.ffn_out, *b.ffn_in):
            if type(_linear(ref)) is not nn.Linear:
                raise TunelabError(f"structured pruning needs plain Linear layers; {ref[1]} is a "
                                   f"{type(_linear(ref)).__name__} (a LoRA run: merge the adapter first)")
    return blocks


def _bert_block(layer: nn.Module) -> _Block:
    attn = layer.attention.self
    return _Block(attn=attn, q=(attn, "query"), k=(attn, "key"), v=(attn, "value"),
                  o=(layer.attention.output, "dense"), ffn_in=[(layer.intermediate, "dense")],
                  ffn_out=(layer.output, "dense"), ffn=None, head_dim=attn.attention_head_size, groups=1)


def _llama_block(layer: nn.Module) -> _Block:
    attn, mlp = layer.self_attn, layer.mlp
    return _Block(attn=attn, q=(attn, "q_proj"), k=(attn, "k_proj"), v=(attn, "v_proj"), o=(attn, "o_proj"),
                  ffn_in=[(mlp, "gate_proj"), (mlp, "up_proj")], ffn_out=(mlp, "down_proj"), ffn=mlp,
                  head_dim=attn.head_dim, groups=attn.num_key_value_groups)


# ---------------------------------------------------------------------------------------------
# Structured: importance, plan, apply


def structured_importance(model: nn.Module, batches: Iterable[dict], loss_fn: Callable, device=None) -> dict:
    """The importance of every attention head and FFN neuron: {"heads": [(n_heads,)], "ffn": [(n_ffn,)]}, one
    float64 CPU tensor per layer.

    A first-order Taylor estimate of the loss change when the unit is removed (Molchanov et al. 2019,
    "Importance Estimation for Neural Network Pruning"; Michel et al. 2019, "Are Sixteen Heads Really Better
    than One?"): |sum of w * dL/dw| over the weights that read the unit's output (its columns of the
    attention output projection, or of the FFN down projection). That sum is exactly dL/dxi for a gate xi
    multiplying the unit's output, so removing the unit (xi: 1 -> 0) changes the loss by about -dL/dxi.
    The absolute value is taken per batch and summed over the batches (so opposite signs do not cancel).

    `loss_fn(model, batch) -> (loss_sum, n)` is a TaskJob's `loss`; the gradient is of loss_sum / n, in eval
    mode (no dropout), through torch.autograd.grad: weights, requires_grad, .grad and the train/eval mode
    are left as they were.
    """
    import torch

    blocks = _blocks(model)
    outs = [_linear(b.o).weight for b in blocks] + [_linear(b.ffn_out).weight for b in blocks]
    device = device or next(model.parameters()).device
    heads = [torch.zeros(b.n_heads, dtype=torch.float64) for b in blocks]
    ffn = [torch.zeros(b.n_ffn, dtype=torch.float64) for b in blocks]
    flags, was_training = [(p, p.requires_grad) for p in model.parameters()], model.training
    try:
        for p, _ in flags:  # only the output projections need a gradient: the rest is skipped in backward
            p.requires_grad_(False)
        for w in outs:
            w.requires_grad_(True)
        model.eval()
        with torch.enable_grad():
            for batch in batches:
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                loss_sum, n = loss_fn(model, batch)
                grads = torch.autograd.grad(loss_sum / n, outs, allow_unused=True)
                for i, b in enumerate(blocks):
                    heads[i] += _unit_scores(outs[i], grads[i], b.n_heads)
                    ffn[i] += _unit_scores(outs[len(blocks) + i], grads[len(blocks) + i], b.n_ffn)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return {"heads": heads, "ffn": ffn}


def _unit_scores(weight: torch.Tensor, grad: torch.Tensor | None, units: int) -> torch.Tensor:
    """|sum of w * g| per unit, units being equal slices of the input columns: (out, units * width) -> (units,)."""
    import torch

    if grad is None:  # the loss did not reach this layer
        return torch.zeros(units, dtype=torch.float64)
    wg = (weight.detach().double() * grad.double()).view(weight.shape[0], units, -1)  # (out, units, width)
    return wg.sum(dim=(0, 2)).abs().cpu()


def _n_keep(n: int, sparsity: float) -> int:
    return max(1, round((1 - sparsity) * n))


def _top(scores, candidates: list[int], k: int) -> list[int]:
    """The k candidates with the highest scores (ties: lower index first), sorted by index."""
    ranked = sorted(candidates, key=lambda i: (-float(scores[i]), i))
    return sorted(ranked[:k])


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise TunelabError(f"--sparsity must be a number in [0, 1) (the fraction to remove); got {sparsity!r}")
    return float(sparsity)


def plan_structured(model: nn.Module, sparsity: float, importance: dict) -> dict:
    """The step that removes the fraction `sparsity` of the heads and FFN neurons of every layer, least
    important first: per layer the round((1 - S) * n) most important are kept (at least 1).

    Grouped-query attention (Llama family, e.g. SmolLM2: 9 query heads on 3 key/value heads): the query heads
    are pruned evenly inside each key/value group, round((1 - S) * g) of the g heads of every group kept. The
    forward needs the same number of query heads per key/value head (one `num_key_value_groups`), and keeping
    every key/value head keeps the KV cache the shape config.json gives; the price is that head sparsity is a
    multiple of 1/g (S = 0.5 keeps 2 of every 3 heads). Without grouping (BERT; Llama with as many key/value
    heads as query heads) each head goes with its own key and value.
    """
    sparsity = _check_sparsity(sparsity)
    layers = []
    for i, block in enumerate(_blocks(model)):
        head_scores, ffn_scores = importance["heads"][i], importance["ffn"][i]
        if len(head_scores) != block.n_heads or len(ffn_scores) != block.n_ffn:
            raise ValueError(f"layer {i}: importance for {len(head_scores)} heads / {len(ffn_scores)} neurons, "
                             f"model has {block.n_heads} / {block.n_ffn}")
        if block.groups == 1:
            heads = _top(head_scores, list(range(block.n_heads)), _n_keep(block.n_heads, sparsity))
        else:
            g = block.groups
            heads = sorted(h for start in range(0, block.n_heads, g)
                           for h in _top(head_scores, list(range(start, start + g)), _n_keep(g, sparsity)))
        ffn = _top(ffn_scores, list(range(block.n_ffn)), _n_keep(block.n_ffn, sparsity))
        layers.append({"heads": heads, "ffn": ffn})
    return {"op": "prune_structured", "sparsity": sparsity, "score": "taylor", "layers": layers}


def apply_prune_structured(model: nn.Module, step: dict, weights: bool = True) -> nn.Module:
    """Slice the model in place to the heads and FFN neurons `step` keeps (see plan_structured); returns it.

    New, smaller nn.Linear layers replace the old ones: query/key/value output rows and the output
    projection's input columns per head, FFN up/gate rows and down-projection columns per neuron. The
    per-module attributes the forward reads are updated; the model's config is left as it was.
    `weights=False` (rebuilding a saved model before loading its weights) does the same slicing: the shapes
    are what matters there, and slicing costs no more than allocating.
    """
    blocks = _blocks(model)
    if len(step["layers"]) != len(blocks):
        raise TunelabError(f"the prune_structured step has {len(step['layers'])} layers; the model has "
                           f"{len(blocks)}: it was made for another model")
    for i, (block, keep) in enumerate(zip(blocks, step["layers"])):
        _prune_heads(block, _checked(keep["heads"], block.n_heads, f"layer {i} heads"))
        _prune_ffn(block, _checked(keep["ffn"], block.n_ffn, f"layer {i} ffn"))
    return model


def _checked(kept: list[int], n: int, what: str) -> list[int]:
    kept = sorted(int(i) for i in kept)
    if not kept or len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= n:
        raise TunelabError(f"prune_structured: {what} must be distinct indices in [0, {n}) and at least one; "
                           f"got {kept}")
    return kept


def _rows(units: list[int], width: int) -> torch.Tensor:
    """The weight rows (or columns) of `units`, each `width` wide: unit u -> u*width .. (u+1)*width - 1."""
    import torch

    return torch.cat([torch.arange(u * width, (u + 1) * width) for u in units])


def _prune_heads(block: _Block, heads: list[int]) -> None:
    per_group = Counter(h // block.groups for h in heads)
    if len(set(per_group.values())) != 1:
        raise TunelabError(f"prune_structured: every key/value group must keep the same number of query heads "
                           f"(the forward has one num_key_value_groups); got {dict(per_group)}")
    kv = sorted(per_group)  # the key/value heads with a query head left; for BERT the heads themselves
    q_rows, kv_rows = _rows(heads, block.head_dim), _rows(kv, block.head_dim)
    _slice(block.q, rows=q_rows)
    _slice(block.k, rows=kv_rows)
    _slice(block.v, rows=kv_rows)
    _slice(block.o, cols=q_rows)
    attn = block.attn
    if hasattr(attn, "num_key_value_groups"):  # Llama family: query head j reads key/value head j // groups
        attn.num_key_value_groups = len(heads) // len(kv)
    for name, value in (("num_attention_heads", len(heads)), ("num_heads", len(heads)),
                        ("all_head_size", len(heads) * block.head_dim), ("num_key_value_heads", len(kv))):
        if hasattr(attn, name):
            setattr(attn, name, value)


def _prune_ffn(block: _Block, neurons: list[int]) -> None:
    rows = _rows(neurons, 1)
    for ref in block.ffn_in:
        _slice(ref, rows=rows)
    _slice(block.ffn_out, cols=rows)
    if block.ffn is not None and hasattr(block.ffn, "intermediate_size"):
        block.ffn.intermediate_size = len(neurons)


def _slice(ref: tuple[nn.Module, str], rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Replace the Linear at `ref` by one holding only the given output rows / input columns."""
    import torch
    from torch import nn

    old = _linear(ref)
    with torch.no_grad():
        w = old.weight
        w = w if rows is None else w.index_select(0, rows.to(w.device))
        w = w if cols is None else w.index_select(1, cols.to(w.device))
        b = old.bias if old.bias is None or rows is None else old.bias.index_select(0, rows.to(w.device))
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")  # no init: values follow
        new.weight = nn.Parameter(w.clone(), requires_grad=old.weight.requires_grad)
        if b is not None:
            new.bias = nn.Parameter(b.clone(), requires_grad=old.bias.requires_grad)
    new.train(old.training)
    setattr(ref[0], ref[1], new)


# ---------------------------------------------------------------------------------------------
# Magnitude (unstructured)


def _stack_linears(model: nn.Module) -> list[nn.Module]:
    """The Linear layers (and transformers' Conv1D, GPT-2's Linear) inside the layer stack: not the
    embeddings, not the task head."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from tunelab.methods.common import layer_stack

    try:
        _, stack = layer_stack(model)
    except ValueError as e:
        raise TunelabError(f"magnitude pruning: {type(model).__name__} has no stack of repeated layers to prune")\
            from e
    found = [m for m in stack.modules() if isinstance(m, (nn.Linear, Conv1D))]
    if not found:
        raise TunelabError(f"magnitude pruning: the layers of {type(model).__name__} hold no Linear layers")
    return found


def plan_magnitude(sparsity: float) -> dict:
    """The step that zeroes the fraction `sparsity` of the layer stack's Linear weights, smallest |w| first."""
    return {"op": "prune_magnitude", "sparsity": _check_sparsity(sparsity), "scope": "global"}


def apply_prune_magnitude(model: nn.Module, step: dict, weights: bool = True) -> nn.Module:
    """Zero the smallest-|w| fraction step["sparsity"] of the layer stack's Linear weights, ranked over all of
    them at once (torch.nn.utils.prune.global_unstructured, L1), made permanent. Shapes do not change, so
    `weights=False` does nothing."""
    from torch.nn.utils import prune

    if not weights:
        return model
    modules = _stack_linears(model)
    prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured,
                              amount=_check_sparsity(step["sparsity"]))
    for m in modules:
        prune.remove(m, "weight")
    return model


@contextlib.contextmanager
def keep_zeros(model: nn.Module) -> Iterator[nn.Module]:
    """Retrain after magnitude pruning: inside, the zeros of the layer stack's Linear weights stay zero.

    Each weight becomes `weight_orig * weight_mask` (torch.nn.utils.prune.custom_from_mask), so build the
    optimizer inside the context: it then holds `weight_orig`, whose masked entries get no gradient. On exit
    the masks are removed and `weight_orig` (the same Parameter object) is `weight` again, zeros applied.
    """
    from torch.nn.utils import prune

    modules = _stack_linears(model)
    for m in modules:
        prune.custom_from_mask(m, "weight", mask=m.weight.detach() != 0)
    try:
        yield model
    finally:
        for m in modules:
            prune.remove(m, "weight")


def sparsity_of(model: nn.Module) -> float:
    """The fraction of zeros in the layer stack's Linear weights."""
    modules = _stack_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    return zeros / sum(m.weight.numel() for m in modules)
