"""Making a finished run's model smaller and faster for CPU inference, and measuring what it costs.

A compressed model is the run's model after a list of *steps*, each a JSON-able dict with an "op" key,
applied in this order (the order `tunelab compress` uses whatever order the options came in):

1. pruning (tunelab.compress.prune): {"op": "prune_structured", ...} removes attention heads and FFN
   neurons (the modules get smaller); {"op": "prune_magnitude", ...} zeroes the smallest weights (same shapes).
2. low rank (tunelab.compress.low_rank): {"op": "low_rank", "modules": {name: rank}} replaces Linear layers
   by two thinner ones from a truncated SVD.
3. retraining with the run's own loop (tunelab.compress.pipeline), when asked for.
4. int8 (tunelab.compress.quantize): {"op": "quantize", "scheme": "int8-dynamic" | "int8-weight-only"}.

Every op module has `apply_<op>(model, step, weights=True)`: with weights=True it compresses a trained
model's weights; with weights=False it only reshapes a freshly built model to the step's shapes, which is
how `tunelab.compress.store.load_compressed` rebuilds a saved model (build the uncompressed architecture
from config.json, re-apply every step without weights, then load model.safetensors strictly): no pickled
code, no `torch.load`.

A result lives in RUN_DIR/compressed/<name>/, laid out as a run (config.yaml, model/, eval.json), so
`tunelab eval`, `predict` and `chat` take it like any run; its model/ folder holds compression.json (the
steps) beside the safetensors weights, the config and the tokenizer.
"""
