"""Attributions of an encoder run's prediction to its input tokens and words, on captum.

`explain_text(run, text, method)` explains one input of a classification, extractive_qa or
token_classification run. Each task says what is explained (a `Target`): a scalar F of the token ids and
which token positions are its features:

- classification: F = the softmax probability of the target label (the predicted one, or `target`);
  features: every non-special token.
- extractive_qa: F = log P(start) + log P(end) of the predicted answer span (softmax over the row's
  positions); features: the context's tokens (the question and the special tokens stay as they are). The
  row is built as the task builds its first window ([CLS] question [SEP] context [SEP], the question cut to
  model.max_length // 2 tokens; tunelab.tasks.extractive_qa.question_windows): a context longer than the
  row is cut (settings["truncated_at"] says where), so the span is the best one in the part read, which for
  a long context may differ from `tunelab ask`'s. Only this task takes a `context` (`takes_context`).
- token_classification: F = the summed log-probabilities of an entity's tags at its words' first
  sub-tokens, the tags the run's own prediction gave those words (B-X I-X ..., or I-X first where an
  unconstrained argmax started the entity with it); features: every non-special token. The row is the
  task's first window: the text's words tokenised as pre-split words, as in training (a byte-level BPE
  gives other tokens for running text), whole words while they fit.

The methods (all through captum, all on CPU, the weights never change):
- ig: LayerIntegratedGradients on the model's input (word) embedding layer. Baseline: the same row with every
  feature token replaced by the neutral token (below); special tokens ([CLS], [SEP]) and, for QA, the
  question are kept, and the attention mask is unchanged. A token's score is its attribution summed over the embedding
  dimension; the scores sum to F(x) - F(baseline) up to the convergence delta reported.
- occlusion: captum Occlusion over the feature tokens, a window of `window` tokens sliding by one, the
  occluded tokens replaced by the neutral token; a token's score is the mean drop of F over the windows that
  cover it. Special tokens are never occluded.
- lime / shap: captum Lime (a ridge regression on the samples, alpha 1) and KernelShap on interpretable
  features = words (the sub-tokens of one word are one feature, see words.py; special tokens are fixed), an
  absent word's tokens replaced by the neutral token, `samples` samples drawn after torch.manual_seed(seed).
  A word's coefficient is shared equally by its tokens, so the word score is the coefficient itself. With
  far fewer samples than 2^words (a long text), both are noisy. A text of one word has one SHAP value,
  exactly F(x) - F(baseline), given directly (captum's KernelShap cannot sample one feature).

The neutral token (`neutral_id`) is the pad token, with the attention mask kept at 1, so the model sees a
neutral token in that place rather than a shorter text (positions do not move). Some models read pad ids
beyond the mask (`reads_pad_ids`): RoBERTa / XLM-R / MPNet count position ids over the non-pad tokens, and
decoder-only classifiers (GPT-2, Llama, Qwen *ForSequenceClassification) read the last non-pad token, so a
pad in place of a word would move the positions or the readout (and IG's F(baseline) would not be the end
of its path). Those get the mask token, else the unknown token, else a lone space: the first that is not
the pad token; settings["baseline"] names it. The "attention" method is attention.py's
(tunelab.explain.faithfulness.explain_any routes it there, into the same Explanation record).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from tunelab.errors import TunelabError
from tunelab.explain import Explanation, Span

ENCODER_METHODS = ("ig", "occlusion", "lime", "shap")
BASELINE = ("{token} in place of every attributed token; special tokens{kept} unchanged, attention "
            "mask unchanged")


@dataclass
class Encoded:
    """One input as the model reads it (a single row, truncated to model.max_length).

    `part` says which text each token belongs to: 0 = `text` (the sentence, or the QA question), 1 = the QA
    `context`, None = a special token; `offsets` are character offsets into that text ((0, 0) for special
    tokens), trimmed of surrounding white space.
    """

    ids: list[int]
    mask: list[int]
    offsets: list[tuple[int, int]]
    special: list[bool]
    tokens: list[str]
    part: list[int | None]
    type_ids: list[int] | None = None
    """token_type_ids when the model reads them (extractive QA on BERT), else None."""
    text: str = ""
    context: str | None = None

    def positions(self, part: int) -> list[int]:
        """The row positions of the non-special tokens of one part."""
        return [i for i, p in enumerate(self.part) if p == part]

    def source(self, part: int) -> str:
        """The text whose characters a part's offsets index."""
        return self.context if part == 1 else self.text


@dataclass
class Target:
    """What one explanation explains: F(ids (B, T)) -> (B,) over rows of the encoded length, on `features`."""

    prediction: Any
    target: Any
    scalar: Callable
    features: list[int]
    """Row positions of the attributed tokens (the rest stay as they are in every perturbation)."""
    part: int
    """Which text the features' offsets index (Encoded.part)."""
    log_space: bool
    """True when F is a log-probability (probability = exp F), False when F is the probability itself."""


# ---------------------------------------------------------------------------------------------
# Encoding


def encode(run, text: str, context: str | None = None) -> Encoded:
    """The token ids of `text` (and for extractive QA, `context`) as the run's model reads them, one row cut to
    model.max_length, with offsets, special-token flags, token strings and which text each token is of."""
    from transformers.utils import logging as hf_logging

    tok = run.tokenizer
    if not getattr(tok, "is_fast", False):
        raise TunelabError("explain needs a fast tokenizer (a tokenizer.json) for character offsets; this run's "
                           "tokenizer is a slow one")
    if context is not None:
        return _question_row(run, text, context)
    if TARGETS.get(run.task.name) is entity_target:
        return _sentence_row(run, text)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a long text is meant to be cut to one row
    try:
        enc = tok(text, truncation=True, max_length=run.cfg.model.max_length, return_offsets_mapping=True,
                  return_special_tokens_mask=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    ids, special = enc["input_ids"], [bool(s) for s in enc["special_tokens_mask"]]
    part: list[int | None] = [None if s else 0 for s in special]
    offsets = [(0, 0) if s else _trim(text, *o) for s, o in zip(special, enc["offset_mapping"])]
    return Encoded(ids, [1] * len(ids), offsets, special, tok.convert_ids_to_tokens(ids), part, None, text)


def _question_row(run, question: str, context: str) -> Encoded:
    """Extractive QA: the first window the task builds (tunelab.tasks.extractive_qa.question_windows),
    [CLS] question [SEP] context [SEP], the question cut to model.max_length // 2 tokens as in training."""
    from tunelab.tasks.extractive_qa import question_windows, special_ids, tokenize_texts

    tok, max_length = run.tokenizer, run.cfg.model.max_length
    (q_ids, c_ids), (q_offsets, c_offsets) = tokenize_texts(tok, [question, context], offsets=True)
    q_ids = q_ids[: max_length // 2]
    cls, sep = special_ids(tok)
    use_types = _reads_types(run)
    # the context cut to one row's worth of tokens first: only the first window is read
    window = question_windows(0, q_ids, c_ids[:max_length], c_offsets[:max_length], None, max_length, 0, cls,
                              sep, use_types)[0]
    n_q, n_c = len(q_ids), len(window.offsets)
    special = [True] + [False] * n_q + [True] + [False] * n_c + [True]
    part: list[int | None] = [None] + [0] * n_q + [None] + [1] * n_c + [None]
    offsets = ([(0, 0)] + [_trim(question, *o) for o in q_offsets[:n_q]] + [(0, 0)]
               + [_trim(context, *o) for o in window.offsets] + [(0, 0)])
    return Encoded(window.ids, [1] * len(window.ids), offsets, special, tok.convert_ids_to_tokens(window.ids),
                   part, window.types if use_types else None, question, context)


def _sentence_row(run, text: str) -> Encoded:
    """Token classification: the first row the task builds (tunelab.tasks.token_classification.build_windows):
    the text's words (tunelab.data.tagging.words_of) tokenised as pre-split words, whole words while they fit,
    framed by [CLS] / [SEP] (or BOS / EOS). Tokenising the raw text instead would give a byte-level BPE other
    tokens than training did (a word after a space gets its space mark only in running text)."""
    from tunelab.data.tagging import words_of
    from tunelab.tasks.token_classification import framing_ids, word_pieces

    tok = run.tokenizer
    words, spans = words_of(text)
    head, tail = framing_ids(tok)
    budget = run.cfg.model.max_length - len(head) - len(tail)
    pieces = word_pieces(tok, [words])[0] if words else []  # ids per word, exactly as in training
    enc = tok([words], is_split_into_words=True, add_special_tokens=False, return_offsets_mapping=True) \
        if words else None
    within: list[list[tuple[int, int]]] = [[] for _ in words]  # piece offsets inside each word
    for o, w in zip(enc["offset_mapping"][0] if enc else [], enc.word_ids(0) if enc else []):
        if w is not None:
            within[w].append(tuple(o))
    ids, offsets = list(head), [(0, 0)] * len(head)
    for w, (ws, we) in enumerate(spans):
        word = pieces[w][:budget]
        if len(ids) - len(head) + len(word) > budget:
            break  # the model read no further (a longer text: the task's next windows)
        inside = within[w] if len(within[w]) == len(pieces[w]) else [(0, we - ws)] * len(pieces[w])
        ids += word
        offsets += [_trim(text, ws + a, ws + b) for a, b in inside[:len(word)]]
    ids += tail
    offsets += [(0, 0)] * len(tail)
    special = [True] * len(head) + [False] * (len(ids) - len(head) - len(tail)) + [True] * len(tail)
    part: list[int | None] = [None if sp else 0 for sp in special]
    return Encoded(ids, [1] * len(ids), offsets, special, tok.convert_ids_to_tokens(ids), part, None, text)


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Offsets without leading / trailing white space (byte-level BPE tokens carry their leading space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _reads_types(run) -> bool:
    """Whether the model takes token_type_ids for a question + context pair, as the QA run was trained."""
    from tunelab.tasks.extractive_qa import uses_token_types

    return bool(run.meta.get("token_type_ids", uses_token_types(run.model)))


def pad_id(run) -> int:
    """The id rows of different lengths are padded with (masked out; the deletion curves' batches)."""
    from tunelab.data.tokens import pad_id_of

    return pad_id_of(run.tokenizer)


def neutral_id(run) -> tuple[int, str]:
    """(id, description) of the token every baseline and perturbation puts in place of an attributed token:
    the pad token, unless the model reads pad ids (`reads_pad_ids`); then the mask token, else the unknown
    token, else a lone space, the first that is not the pad token."""
    tok, pad = run.tokenizer, pad_id(run)
    if not reads_pad_ids(run.model):
        return pad, "the pad token"
    space = tok(" ", add_special_tokens=False)["input_ids"]
    candidates = (("the mask token", tok.mask_token_id), ("the unknown token", tok.unk_token_id),
                  ("a space token", space[0] if len(space) == 1 else None))
    for name, token in candidates:
        if token is not None and token != pad:
            return token, f"{name} {tok.convert_ids_to_tokens(token)!r} (the model reads pad ids)"
    return pad, "the pad token (no mask, unknown or space token to use instead)"


def reads_pad_ids(model) -> bool:
    """True when the pad token's id changes a model's output beyond the attention mask: position ids counted
    over the non-pad tokens (RoBERTa, XLM-R, MPNet: a module besides the embedding table keeps a
    `padding_idx`), or a decoder-only model, whose sequence classifier reads the last non-pad token."""
    from torch import nn

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(not isinstance(m, nn.Embedding) and isinstance(getattr(m, "padding_idx", None), int)
           for m in base.modules()):
        return True
    config = getattr(base, "config", None)
    if config is None or isinstance(config, dict):  # a scratch model: pooling and positions follow the mask
        return False
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    kind = getattr(config, "model_type", None)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def model_inputs(enc: Encoded, ids):
    """The model's keyword inputs for id rows (B, T) of the encoded length: the row's mask (and types)."""
    import torch

    batch = ids.size(0)
    inputs = {"input_ids": ids, "attention_mask": torch.tensor([enc.mask]).expand(batch, -1)}
    if enc.type_ids is not None:
        inputs["token_type_ids"] = torch.tensor([enc.type_ids]).expand(batch, -1)
    return inputs


# ---------------------------------------------------------------------------------------------
# What each task explains


def classification_target(run, enc: Encoded, target) -> Target:
    """The target label's probability; `target` None = the predicted label."""
    import torch

    labels = labels_of(run)
    with torch.no_grad():
        probs = torch.softmax(run.model(**model_inputs(enc, torch.tensor([enc.ids]))).logits.float(), -1)[0]
    predicted = labels[int(probs.argmax())]
    index = label_index(labels, predicted if target is None else target)

    def scalar(ids):
        return torch.softmax(run.model(**model_inputs(enc, ids)).logits.float(), -1)[:, index]  # (B,)

    return Target(predicted, labels[index], scalar, enc.positions(0), 0, log_space=False)


def labels_of(run) -> list[str]:
    """A classification run's label names, in the order of its logits."""
    labels = run.meta.get("labels")
    if labels:
        return [str(x) for x in labels]
    return [str(i) for i in range(run.model.config.num_labels)]


def label_index(labels: list[str], target) -> int:
    """The logit index of a label name (an integer label may come as an int), or a TunelabError listing them."""
    if str(target) in labels:
        return labels.index(str(target))
    raise TunelabError(f"--target: {target!r} is not a label of this run; its labels are: {', '.join(labels)}")


def span_target(run, enc: Encoded, target) -> Target:
    """Extractive QA: log P(start) + log P(end) of the best span in the row (the task's own search over the
    run's qa.n_best / qa.max_answer_length), or of `target`, an answer text looked up in the context. The
    prediction is that span, or no answer ("") where the run's no-answer threshold says so."""
    import torch

    from tunelab.tasks.extractive_qa import Answer, best_span, decide, run_threshold

    if enc.context is None:
        raise TunelabError("an extractive_qa run answers from a context: give the passage as the context "
                           "(--context) and the question as the text")
    context = enc.positions(1)
    if not context:
        raise TunelabError("nothing to explain: no context token fits in the row after the question; shorten "
                           "the question or raise model.max_length")
    with torch.no_grad():
        out = run.model(**model_inputs(enc, torch.tensor([enc.ids])))
    start, end = out.start_logits[0].float().numpy(), out.end_logits[0].float().numpy()  # (T,)
    found = best_span(start, end, context[0], len(context), run.cfg.qa.n_best, run.cfg.qa.max_answer_length)
    if found is None:
        raise TunelabError("nothing to explain: the model finds no answer span within qa.max_answer_length")
    score, first, last = found[0], context[0] + found[1], context[0] + found[2]
    best = _answer(enc, first, last)
    decided = decide(Answer(best["text"], best["start"], best["end"], score, float(start[0] + end[0])),
                     run_threshold(run))
    prediction = {k: decided[k] for k in ("answer", "start", "end")}
    if target is not None:
        first, last = _find_span(enc, context, str(target))
    return Target(prediction, _answer(enc, first, last), _span_scalar(run, enc, first, last), context, 1,
                  log_space=True)


def _answer(enc: Encoded, first: int, last: int) -> dict:
    a, b = enc.offsets[first][0], enc.offsets[last][1]
    return {"text": enc.context[a:b], "start": a, "end": b}


def _find_span(enc: Encoded, context: list[int], answer: str) -> tuple[int, int]:
    """Row positions of the first and last context token of `answer`'s first occurrence in the row's context."""
    at = enc.context.find(answer) if answer.strip() else -1
    inside = [i for i in context if at >= 0 and enc.offsets[i][1] > at and enc.offsets[i][0] < at + len(answer)]
    if not inside:
        raise TunelabError(f"--target: {answer!r} does not occur in the part of the context the model reads; "
                           "give an answer text copied from the context")
    return inside[0], inside[-1]


def _span_scalar(run, enc: Encoded, first: int, last: int) -> Callable:
    import torch

    def scalar(ids):
        out = run.model(**model_inputs(enc, ids))
        start = torch.log_softmax(out.start_logits.float(), -1)[:, first]  # (B,)
        return start + torch.log_softmax(out.end_logits.float(), -1)[:, last]

    return scalar


def entity_target(run, enc: Encoded, target) -> Target:
    """Token classification: the summed log-probabilities of one predicted entity's tags at its words' first
    sub-tokens, each word's tag as the run's prediction gave it. `target`: an entity's index (0 = the first)
    or its text; None = the first."""
    from tunelab.data.tagging import words_of

    words, spans = words_of(enc.text)
    if not words:
        raise TunelabError("nothing to explain: the text has no words")
    # the words as a word record: the prediction then carries each word's tag (a raw-text one gives entities
    # alone); the task splits a raw text into these same words, so the entities are the same
    [row] = run.task.predict(run, [{run.cfg.data.tokens_field: words}], "--text", lambda _: None)
    entities = [{"text": enc.text[spans[e["start"]][0]:spans[e["end"] - 1][1]], "label": e["label"],
                 "start": spans[e["start"]][0], "end": spans[e["end"] - 1][1], "score": e["score"]}
                for e in row["entities"]]
    entity = _pick_entity(entities, target)
    chosen = [w for w, (a, _) in enumerate(spans) if entity["start"] <= a < entity["end"]]
    firsts = [next((i for i in enc.positions(0) if spans[w][0] <= enc.offsets[i][0] < spans[w][1]), None)
              for w in chosen]
    if None in firsts:
        raise TunelabError(f"cannot explain {entity['text']!r}: part of it lies beyond model.max_length tokens")
    labels = list(run.meta["labels"])
    tags = [labels.index(row["tags"][w]) for w in chosen]
    return Target(entities, entity, _tags_scalar(run, enc, firsts, tags), enc.positions(0), 0, log_space=True)


def _pick_entity(entities: list[dict], target) -> dict:
    if not entities:
        raise TunelabError("nothing to explain: the model finds no entity in this text")
    if target is None:
        return entities[0]
    if isinstance(target, int) or str(target).isdigit():
        if int(target) < len(entities):
            return entities[int(target)]
    else:
        found = [e for e in entities if e["text"] == str(target)]
        if found:
            return found[0]
    listed = ", ".join(f"{i}: {e['text']!r} ({e['label']})" for i, e in enumerate(entities))
    raise TunelabError(f"--target: {target!r} is neither the index nor the text of a predicted entity; the "
                       f"entities are {listed}")


def _tags_scalar(run, enc: Encoded, positions: list[int], tags: list[int]) -> Callable:
    import torch

    def scalar(ids):
        log_probs = torch.log_softmax(run.model(**model_inputs(enc, ids)).logits.float(), -1)  # (B, T, L)
        return log_probs[:, positions, tags].sum(-1)  # (B,)

    return scalar


TARGETS: dict[str, Callable] = {"classification": classification_target, "extractive_qa": span_target,
                                "token_classification": entity_target}
"""Task name -> target(run, encoded, target) -> Target. A task explain_text can take adds itself here."""


def takes_context(run) -> bool:
    """Whether the run's task reads a passage (`context`) besides the text: extractive QA's span target."""
    return TARGETS.get(run.task.name) is span_target


def explains_a_label(run) -> bool:
    """Whether the run's target is one of its labels (classification; --target is then checked against them)."""
    return TARGETS.get(run.task.name) is classification_target


def prepare(run, text: str, context: str | None, target) -> tuple[Encoded, Target]:
    """The encoded input and what is explained on it, or one TunelabError: a task explain cannot take, a
    context given to a task that reads none, an input with no token to attribute."""
    make_target = TARGETS.get(run.task.name)
    if make_target is None:
        raise TunelabError(unexplained(run))
    if context is not None and not takes_context(run):
        raise TunelabError(f"--context: only an extractive QA run reads a passage besides the text; {run.dir} is "
                           f"a {run.task.name} run: drop --context (and any 'context' field of --input)")
    enc = encode(run, text, context)
    tgt = make_target(run, enc, target)
    if not tgt.features:
        raise TunelabError("nothing to explain: the input has no tokens besides the special ones")
    return enc, tgt


# ---------------------------------------------------------------------------------------------
# The methods: token scores (T,) for a Target


def integrated_gradients(run, enc: Encoded, tgt: Target, steps: int) -> tuple[list[float], float]:
    """(score per row position, convergence delta); see the module docstring for the baseline."""
    import torch
    from captum.attr import LayerIntegratedGradients

    ids = torch.tensor([enc.ids])  # (1, T)
    baseline = ids.clone()
    baseline[0, tgt.features] = neutral_id(run)[0]
    lig = LayerIntegratedGradients(tgt.scalar, embedding_layer(run.model))
    attr, delta = lig.attribute(ids, baselines=baseline, n_steps=steps, internal_batch_size=min(steps, 25),
                                return_convergence_delta=True)  # attr: (1, T, H)
    return attr.sum(-1)[0].tolist(), float(delta)


def embedding_layer(model):
    """The model's input (word) embedding module: get_input_embeddings(), else the first nn.Embedding."""
    from torch import nn

    layer = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if layer is None:
        layer = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if layer is None:
        raise TunelabError("--method ig needs the model's token embedding layer and this model has none; use "
                           "--method occlusion, lime or shap")
    return layer


def perturbation_scores(run, enc: Encoded, tgt: Target, method: str, *, window: int, samples: int,
                        seed: int) -> list[float]:
    """Occlusion / Lime / KernelShap scores per row position (0 outside the features).

    The perturbed input is the features' ids alone, (1, n); the forward puts them back into the full row, so
    special tokens (and the QA question) are never perturbed.
    """
    import torch
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import KernelShap, Lime, Occlusion

    from tunelab.explain.words import word_groups

    full = torch.tensor([enc.ids])  # (1, T)
    where = torch.tensor(tgt.features)

    def forward(sub):  # sub: (B, n) feature ids -> F (B,)
        rows = full.expand(sub.size(0), -1).clone()
        rows[:, where] = sub
        return tgt.scalar(rows)

    sub = full[:, where]  # (1, n)
    base = torch.full_like(sub, neutral_id(run)[0])
    scores = [0.0] * len(enc.ids)
    with torch.no_grad():
        if method == "occlusion":
            attr = Occlusion(forward).attribute(sub, sliding_window_shapes=(min(window, sub.size(1)),),
                                                strides=1, baselines=base, perturbations_per_eval=16)[0]
        else:
            groups = word_groups([enc.offsets[i] for i in tgt.features])
            mask = torch.tensor([groups])  # (1, n): feature (word) index of each token
            # Lime fits a ridge regression (alpha 1, as the lime package does): captum's default lasso
            # (alpha 0.01) zeroes every coefficient when the probability moves by less than a few hundredths
            explainer = (Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0)) if method == "lime"
                         else KernelShap(forward))
            torch.manual_seed(seed)
            if method == "shap" and max(groups) == 0:  # one word: its SHAP value is the whole difference
                coef = forward(sub) - forward(base)  # (1,); captum's sampler cannot draw one feature
            else:
                coef = explainer.attribute(sub, baselines=base, feature_mask=mask, n_samples=samples,
                                           perturbations_per_eval=16, return_input_shape=False)[0]  # (words,)
            sizes = torch.bincount(mask[0]).float()
            attr = (coef.float() / sizes)[mask[0]]  # each token: its word's coefficient / the word's tokens
    for pos, value in zip(tgt.features, attr.tolist()):
        scores[pos] = value
    return scores


# ---------------------------------------------------------------------------------------------
# The entry point


def explain_text(run, text: str, method: str, target=None, *, context: str | None = None, steps: int = 50,
                 window: int = 3, samples: int = 200, seed: int = 0) -> Explanation:
    """Explain one input of an encoder run with `method` (ig | occlusion | lime | shap): per-token and
    per-word scores toward `target` (None: the prediction). See the module docstring for what is explained
    and each method's baseline. `context` is the passage of an extractive QA run (`text` its question)."""
    import torch

    if method not in ENCODER_METHODS:
        raise TunelabError(f"--method: {method!r} is not one of {', '.join(ENCODER_METHODS)} (or attention)")
    for name, value in (("steps", steps), ("window", window), ("samples", samples)):
        if value < 1:
            raise TunelabError(f"--{name}: got {value}; give a number of at least 1")
    enc, tgt = prepare(run, text, context, target)
    settings = method_settings(method, steps=steps, window=window, samples=samples, seed=seed,
                               kept=", and the question" if tgt.part == 1 else "",
                               token=neutral_id(run)[1])
    delta = None
    with torch.no_grad():
        value = float(tgt.scalar(torch.tensor([enc.ids]))[0])
    if method == "ig":
        scores, delta = integrated_gradients(run, enc, tgt, steps)
    else:
        scores = perturbation_scores(run, enc, tgt, method, window=window, samples=samples, seed=seed)
    return build_explanation(enc, tgt, method, scores, settings, delta, value)


def unexplained(run) -> str:
    """The message for a run whose task explain_text cannot take."""
    name = run.task.name
    return f"explain works on {', '.join(sorted(TARGETS))} runs; {run.dir} is a {name} run{ELSEWHERE.get(name, '')}"


ELSEWHERE = {"causal_lm": "; a causal_lm run is explained by the prompt tokens behind each generated token: "
                          "--method ablation or ig (tunelab.explain.generative)"}
"""Task name -> where its explanations are, for tasks another module explains."""


def method_settings(method: str, *, steps: int, window: int, samples: int, seed: int, kept: str,
                    token: str = "the pad token") -> dict:
    """The settings an explanation records: the method's own and the baseline in words (`token`: the
    neutral token's description, `neutral_id`)."""
    own = {"ig": {"steps": steps}, "occlusion": {"window": window, "stride": 1},
           "lime": {"samples": samples, "seed": seed, "features": "words"},
           "shap": {"samples": samples, "seed": seed, "features": "words"}}[method]
    return {"method": method, **own, "baseline": BASELINE.format(token=token, kept=kept)}


def build_explanation(enc: Encoded, tgt: Target, method: str, scores: list[float], settings: dict,
                      delta: float | None, value: float) -> Explanation:
    """The Explanation record: a Span per feature token, words merged from them; settings["truncated_at"] is
    the character offset where the model stopped reading a text longer than model.max_length tokens."""
    from tunelab.explain.words import merge_words

    source = enc.source(tgt.part)
    tokens = [Span(source[enc.offsets[i][0]:enc.offsets[i][1]], *enc.offsets[i], float(scores[i]))
              for i in tgt.features]
    probability = math.exp(value) if tgt.log_space else value
    read = tokens[-1].end if tokens else 0
    if source[read:].strip():  # cut to model.max_length tokens: the rest was never read, so has no score
        settings = {**settings, "truncated_at": read}
    return Explanation(text=source, method=method, prediction=tgt.prediction, target=tgt.target,
                       probability=probability, tokens=tokens, words=merge_words(source, tokens),
                       settings=settings, delta=delta)


# ---------------------------------------------------------------------------------------------
# For the faithfulness curves


def target_probability(run, rows: list[list[int]], target, batch_size: int = 32) -> list[float]:
    """The probability of `target` (a label of a classification run) for each row of token ids (rows of any
    lengths: padded, masked and batched here)."""
    import torch

    from tunelab.data.batching import pad_batch

    if run.task.name not in PROBABILITY_TASKS:
        raise TunelabError(f"deletion curves work on {', '.join(PROBABILITY_TASKS)} runs; {run.dir} is a "
                           f"{run.task.name} run")
    index = label_index(labels_of(run), target)
    out: list[float] = []
    with torch.no_grad():
        for at in range(0, len(rows), batch_size):
            batch = pad_batch(rows[at:at + batch_size], pad_id(run))
            logits = run.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            out += torch.softmax(logits.float(), -1)[:, index].tolist()
    return out


PROBABILITY_TASKS = ("classification",)
