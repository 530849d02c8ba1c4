"""Why did a fine-tuned model say that: attributions of a run's predictions to its input words.

The parts share these records (plain data, JSON-able through `dataclasses.asdict`):

- `Span`: one token or word of the input text with its character offsets [start, end) and its score
  (toward the explained target; positive = for, negative = against).
- `Explanation`: one explained input: the text, the prediction and the target explained (a label for
  classification, the answer span for extractive QA, an entity for token classification), its probability,
  the method and its settings, per-token and per-word scores, and IG's convergence delta (None for the
  other methods).

The modules (tunelab/explain/):
- attribute.py: `explain_text(run, text, method, target=None, **settings) -> Explanation` for the encoder
  tasks (classification, extractive_qa, token_classification), on captum (IntegratedGradients on the input
  embeddings with a documented baseline, Occlusion, Lime, KernelShap); `encode(run, text)` and
  `target_probability(run, rows, target)` for the faithfulness curves; words merged from sub-tokens.
- attention.py: the "attention" method's per-token scores and the attention maps as heatmap images (the model
  reloaded with eager attention: SDPA returns no weights).
- generative.py: causal LMs: which prompt tokens drove each generated token (captum's LLM attribution).
- faithfulness.py: deletion curves against random deletion, area over the curve per method.
- render.py: terminal colours, the self-contained HTML page, JSONL rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS = ("ig", "occlusion", "lime", "shap", "attention")


@dataclass
class Span:
    text: str
    start: int
    end: int
    score: float


@dataclass
class Explanation:
    text: str
    method: str
    prediction: Any
    """What the model predicted: a label, an answer string, or a list of entities."""
    target: Any
    """What is explained: the predicted (or --target) label, the answer, or one entity."""
    probability: float
    """The model's probability of `target` (for a span: start x end probability)."""
    tokens: list[Span] = field(default_factory=list)
    words: list[Span] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    """The method's settings as used (baseline, steps, window, samples, seed, ...)."""
    delta: float | None = None
    """Integrated gradients: the convergence delta, sum(attributions) - (F(x) - F(baseline))."""
