"""Faithfulness, measured: does deleting the tokens a method ranks highest lower the target's probability
faster than deleting random ones?

A deletion curve records the target's probability as the top-k attributed tokens are deleted, for k = a
growing fraction of the text's tokens (0, 10%, ..., 50%; any fraction above 0 deletes at least one token).
Its summary is the area over the perturbation curve (AOPC, Samek et al. 2017, "Evaluating the visualization
of what a deep neural network has learned"): the mean over the fractions of p(x) - p(x without the top k).
The same is done for random orders (several seeded draws, averaged): a method is worth reading on a model
only where its AOPC is above random's.

Deleted means removed from the sequence, not masked: the model sees the text without those tokens (the
special tokens, [CLS] / [SEP] / BOS, are never deleted). Replacing them with [MASK] or [PAD] would show the
fine-tuned model an input it never saw in training (a [MASK] in every other slot), and the drop would then
measure its reaction to those tokens as much as the loss of the words. Removal has its own bias (the
remaining tokens shift position) but keeps the input a text the model could have been given.

Written here: captum has attribution methods but no deletion-curve metric; the measure is a few lines over
`tunelab.explain.attribute`'s `encode` and `target_probability`.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable, Sequence

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
RANDOM_DRAWS = 5  # random orders averaged for the reference curve


def result_path(run_dir: str | Path, data: str | None) -> Path:
    """RUN_DIR/explain-faithfulness.json for the run's test split, explain-faithfulness-NAME.json for --data."""
    return Path(run_dir) / ("explain-faithfulness.json" if data is None else
                            f"explain-faithfulness-{Path(data).stem}.json")


def deletion_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of `n` deletable tokens each fraction deletes: ceil(f * n), so any f > 0 deletes one or more."""
    return [min(n, math.ceil(f * n - 1e-9)) for f in fractions]


def ranked(scores: Sequence[float], deletable: Sequence[int]) -> list[int]:
    """The deletable positions, highest score first (ties: the earlier position first)."""
    return sorted(deletable, key=lambda i: (-scores[i], i))


def without(ids: Sequence[int], drop: set[int]) -> list[int]:
    """`ids` with the positions in `drop` removed (the sequence gets shorter)."""
    return [t for i, t in enumerate(ids) if i not in drop]


def deleted_rows(ids: Sequence[int], order: Sequence[int], counts: Sequence[int]) -> list[list[int]]:
    """One input per count: `ids` without the first `k` positions of `order`."""
    return [without(ids, set(order[:k])) for k in counts]


def curve_of(probability: Callable[[list[list[int]]], list[float]], ids: Sequence[int], order: Sequence[int],
             counts: Sequence[int]) -> list[float]:
    """The target's probability after deleting the top-k of `order`, for each k of `counts`."""
    return [float(p) for p in probability(deleted_rows(ids, order, counts))]


def random_curve_of(probability, ids: Sequence[int], deletable: Sequence[int], counts: Sequence[int],
                    draws: int = RANDOM_DRAWS, seed: int = 0) -> list[float]:
    """The mean deletion curve of `draws` random orders (seeded: the same every time), in one batch."""
    rng = random.Random(seed)
    orders = [rng.sample(list(deletable), len(deletable)) for _ in range(draws)]
    rows = [row for order in orders for row in deleted_rows(ids, order, counts)]
    probs = probability(rows)  # draws x len(counts), flattened
    k = len(counts)
    return [sum(float(probs[d * k + j]) for d in range(draws)) / draws for j in range(k)]


def aopc(curve: Sequence[float]) -> float:
    """Area over the perturbation curve: mean of p(x) - p(x without top-k) over the curve's points."""
    return sum(curve[0] - p for p in curve) / len(curve)


# ---------------------------------------------------------------------------------------------
# On a run: explanations -> curves


def explain_any(run, text: str, method: str, target=None, *, context: str | None = None, **settings):
    """An Explanation by any method of tunelab.explain.METHODS: "attention" is attention.py's rollout scores
    (put in the same record as attribute.py's methods), every other method is attribute.explain_text."""
    from tunelab.explain import attribute

    if method != "attention":
        return attribute.explain_text(run, text, method, target, context=context, **settings)
    import torch

    from tunelab.explain.attention import attention_scores, readout_name

    enc, tgt = attribute.prepare(run, text, context, target)
    scores = attention_scores(run, _as_attention_input(enc))
    with torch.no_grad():
        value = float(tgt.scalar(torch.tensor([enc.ids]))[0])
    settings = {"method": "attention", "scores": f"attention rollout from {readout_name(run.model)} (Abnar & "
                                                 "Zuidema 2020); not an attribution: never negative"}
    return attribute.build_explanation(enc, tgt, "attention", scores, settings, None, value)


def _as_attention_input(enc):
    """attribute.Encoded as attention.attention_scores reads it (input_ids, attention_mask, ... , special)."""
    from types import SimpleNamespace

    return SimpleNamespace(input_ids=enc.ids, attention_mask=enc.mask, token_type_ids=enc.type_ids,
                           special=enc.special)


def position_scores(enc, expl) -> list[float]:
    """A classification Explanation's token scores put back at their row positions of `enc` (special tokens:
    0). Its tokens are the row's non-special tokens in order (attribute.classification_target's features), so
    they are placed by order: matching by character offsets would mix up tokens that share their offsets (a
    byte-level BPE splits one emoji or CJK character into several tokens of the same span)."""
    from tunelab.errors import TunelabError

    positions = [i for i, s in enumerate(enc.special) if not s]
    if len(positions) != len(expl.tokens):
        raise TunelabError(f"deletion curves: the explanation scores {len(expl.tokens)} tokens where the text "
                           f"has {len(positions)}; explain the same text of a classification run")
    scores = [0.0] * len(enc.ids)
    for i, token in zip(positions, expl.tokens):
        scores[i] = token.score
    return scores


def deletion_curve(run, explained, scores: Sequence[float] | None = None, target=None,
                   fractions: Sequence[float] = FRACTIONS) -> list[float]:
    """The target's probability as the highest-scored tokens are deleted, one point per fraction.

    `explained` is an Explanation (its text is encoded again; `scores` default to its token scores, `target`
    to its target) or an attribute.Encoded with `scores` (one per row position) and `target` given.
    The first point (fraction 0) is the unperturbed probability. Special tokens are never deleted.
    """
    enc, scores, target = _encoded(run, explained, scores, target)
    deletable = [i for i, s in enumerate(enc.special) if not s]
    counts = deletion_counts(len(deletable), fractions)
    return curve_of(_probability(run, target), enc.ids, ranked(scores, deletable), counts)


def random_curve(run, explained, target=None, fractions: Sequence[float] = FRACTIONS,
                 draws: int = RANDOM_DRAWS, seed: int = 0) -> list[float]:
    """The reference: the mean deletion curve of `draws` seeded random orders of the same tokens."""
    enc, _, target = _encoded(run, explained, None, target, need_scores=False)
    deletable = [i for i, s in enumerate(enc.special) if not s]
    counts = deletion_counts(len(deletable), fractions)
    return random_curve_of(_probability(run, target), enc.ids, deletable, counts, draws, seed)


def _encoded(run, explained, scores, target, need_scores: bool = True):
    """(Encoded, scores per row position, target) of an Explanation or an Encoded."""
    from tunelab.errors import TunelabError
    from tunelab.explain import Explanation
    from tunelab.explain.attribute import encode

    if isinstance(explained, Explanation):
        enc = encode(run, explained.text)
        return enc, list(scores) if scores is not None else position_scores(enc, explained), \
            explained.target if target is None else target
    if target is None or (need_scores and scores is None):
        raise TunelabError("deletion_curve: an encoded input needs its scores (one per token) and the target")
    if need_scores and len(scores) != len(explained.ids):
        raise TunelabError(f"deletion_curve: {len(scores)} scores for {len(explained.ids)} tokens")
    return explained, scores, target


def _probability(run, target):
    from tunelab.explain.attribute import target_probability

    return lambda rows: target_probability(run, rows, target)


# ---------------------------------------------------------------------------------------------
# The table: every method on n records


def evaluate(run, texts: list[str], methods: Sequence[str], *, seed: int = 0, settings: dict | None = None,
             fractions: Sequence[float] = FRACTIONS, log=print) -> list[dict]:
    """One row per method: its AOPC, random deletion's AOPC on the same texts, their difference, seconds per
    explanation and the mean curves. The target is each text's predicted label (what a user asks about)."""
    from tunelab.explain.attribute import encode

    if "attention" in methods:  # a model with no attention weights fails here, before any method has run
        from tunelab.explain.attention import eager_model

        eager_model(run)
    random_aopcs: dict[int, tuple[float, list[float]]] = {}  # text index -> random AOPC and curve
    rows = []
    for method in methods:
        aopcs, curves, seconds = [], [], 0.0
        for i, text in enumerate(texts):
            start = time.perf_counter()
            expl = explain_any(run, text, method, **_settings_for(method, settings or {}))
            seconds += time.perf_counter() - start
            enc = encode(run, text)
            curve = deletion_curve(run, enc, position_scores(enc, expl), expl.target, fractions)
            if i not in random_aopcs:  # the same reference for every method
                reference = random_curve(run, enc, expl.target, fractions, seed=seed + i)
                random_aopcs[i] = (aopc(reference), reference)
            aopcs.append(aopc(curve))
            curves.append(curve)
        rows.append(_row(method, aopcs, curves, [random_aopcs[i] for i in range(len(texts))], seconds))
        log(f"{method}: AOPC {rows[-1]['aopc']:.4f} (random {rows[-1]['random_aopc']:.4f}), "
            f"{rows[-1]['seconds_per_explanation']:.2f} s per explanation")
    return rows


def _settings_for(method: str, given: dict) -> dict:
    """The command-line settings that apply to `method` (--steps means nothing to occlusion)."""
    own = {"ig": ("steps",), "occlusion": ("window",), "lime": ("samples", "seed"), "shap": ("samples", "seed"),
           "attention": ()}[method]
    return {k: v for k, v in given.items() if k in own}


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [round(sum(c[j] for c in curves) / len(curves), 6) for j in range(len(curves[0]))]


def _row(method: str, aopcs: list[float], curves: list[list[float]], reference: list[tuple[float, list[float]]],
         seconds: float) -> dict:
    mine, rand = sum(aopcs) / len(aopcs), sum(a for a, _ in reference) / len(reference)
    return {"method": method, "aopc": round(mine, 6), "random_aopc": round(rand, 6),
            "difference": round(mine - rand, 6), "seconds_per_explanation": round(seconds / len(aopcs), 4),
            "n": len(aopcs), "curve": _mean_curve(curves), "random_curve": _mean_curve([c for _, c in reference])}


def table(rows: list[dict]) -> str:
    """The rows as the command prints them."""
    lines = [f"{'method':<10} {'AOPC':>8} {'random AOPC':>12} {'difference':>11} {'s/explanation':>14}"]
    for r in rows:
        lines.append(f"{r['method']:<10} {r['aopc']:>8.4f} {r['random_aopc']:>12.4f} {r['difference']:>+11.4f} "
                     f"{r['seconds_per_explanation']:>14.3f}")
    n = rows[0]["n"] if rows else 0
    lines.append(f"(n={n} texts; AOPC: mean drop of the predicted label's probability as the top 0-50% of "
                 "tokens are deleted; higher difference = more faithful)")
    return "\n".join(lines)


def test_texts(run, data: str | None, n: int) -> tuple[list[str], str]:
    """The first `n` texts of `data` (a file) or of the run's test split, and where they came from."""
    from tunelab.errors import DataError, TunelabError
    from tunelab.explain.attribute import PROBABILITY_TASKS
    from tunelab.runs import read_records

    if run.task.name not in PROBABILITY_TASKS:
        raise TunelabError(f"explain --evaluate measures {', '.join(PROBABILITY_TASKS)} runs (a label's "
                           f"probability); {run.dir} is a {run.task.name} run")
    field = run.cfg.data.text_field
    if data is not None:
        records, source = read_records(run.dir, data), data
    else:
        from tunelab.tasks.classification import split_records

        splits = split_records(run.cfg, lambda _: None)
        if "test" not in splits:
            raise TunelabError(f"{run.dir} has no test split (data.test_fraction is 0 and no data.test file); "
                               "pass --data FILE with records to explain")
        records, source = splits["test"]
    records = records[:n]
    for i, r in enumerate(records):
        if not isinstance(r.get(field), str) or not r[field].strip():
            raise DataError(r.get("_file", source), f"record {i + 1}: no text in field '{field}' (the run's "
                                                    "data.text_field)", r.get("_line"))
    if not records:
        raise TunelabError(f"{source} holds no records to explain")
    return [r[field] for r in records], source


def evaluate_run(run_dir: str | Path, methods: Sequence[str], *, data: str | None = None, n: int = 100,
                 seed: int = 0, settings: dict | None = None, log=print) -> tuple[list[dict], Path]:
    """`tunelab explain RUN_DIR --evaluate`: the table of `evaluate` on the first `n` texts of `data` (default:
    the run's test split), written atomically to `result_path(run_dir, data)`."""
    from tunelab.io import atomic_write_json
    from tunelab.runs import load_run

    run = load_run(run_dir)
    texts, source = test_texts(run, data, n)
    log(f"explaining {len(texts)} texts of {source} with {', '.join(methods)}")
    rows = evaluate(run, texts, methods, seed=seed, settings=settings, log=log)
    out = result_path(run_dir, data)
    atomic_write_json(out, {"data": source, "n": len(texts), "fractions": list(FRACTIONS),
                            "random_draws": RANDOM_DRAWS, "seed": seed,
                            "deletion": "tokens removed from the sequence (special tokens never)",
                            "methods": rows})
    return rows, out
