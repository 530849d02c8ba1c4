"""Previews of encoded causal-LM data (`tunelab data preview`): what the model sees and what it learns.

The text of an example with its trained tokens marked, and a text histogram of example lengths.
"""
from __future__ import annotations

from tunelab.data.encoding import Encoded
from tunelab.data.tokens import IGNORE_INDEX


def render_tokens(tokenizer, ex: Encoded, color: bool) -> str:
    """The example's text with trained tokens marked: green (colour) or [[...]] (no colour)."""
    trained = [False] + [t != IGNORE_INDEX for t in ex.targets[:-1]]  # token t is trained if t-1 predicts it
    runs: list[tuple[bool, list[int]]] = []
    for tok, tr in zip(ex.ids, trained):
        if runs and runs[-1][0] == tr:
            runs[-1][1].append(tok)
        else:
            runs.append((tr, [tok]))
    out = []
    for tr, toks in runs:
        text = tokenizer.decode(toks, skip_special_tokens=False)
        if color:
            out.append(f"\033[1;32m{text}\033[0m" if tr else f"\033[2m{text}\033[0m")
        else:
            out.append(f"[[{text}]]" if tr else text)
    return "".join(out)


def length_histogram(lengths: list[int], max_length: int, bins: int = 8, width: int = 40) -> str:
    """A text histogram of example lengths in tokens."""
    if not lengths:
        return "(no examples)"
    step = max(1, -(-max_length // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, (n - 1) // step)] += 1
    top = max(counts)
    lines = []
    for k, c in enumerate(counts):
        lo, hi = k * step + 1, min(max_length, (k + 1) * step)
        bar = "#" * (round(width * c / top) if top else 0)
        lines.append(f"  {lo:>6}-{hi:<6} {bar:<{width}} {c}")
    return "\n".join(lines)
