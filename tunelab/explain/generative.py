"""Causal LMs: which prompt tokens drove each generated token, through captum's LLM attribution.

`explain_generation(run, prompt)` generates greedily from the prompt (or takes a given `target` text), then
scores every (generated token i, prompt token j) pair:

- "ablation": captum `LLMAttribution(FeatureAblation)`. score[i][j] = log p(g_i | prompt, g_<i) minus the
  same log-probability with prompt token j replaced by the baseline token: how much the token's presence
  raised (> 0) or lowered (< 0) the log-probability of what was generated. One forward pass per prompt token
  (plus one), each over prompt + generated tokens (teacher-forced: the generated tokens are fed in, not
  generated again, so a pass scores all of them at once).
- "ig": captum `LLMGradientAttribution(LayerIntegratedGradients)` on the input embedding layer, from the
  prompt with every attributed token replaced by the baseline token to the prompt itself; score[i][j] is the
  attribution summed over the embedding dimension, and row i sums to about log p(g_i | prompt) - log
  p(g_i | baseline prompt). `steps` forward and backward passes per generated token.

The baseline token is the tokenizer's pad token (the neutral token attribute.py's methods use too), or its
unknown token where the pad token is the end-of-sequence token (`baseline_id`; settings["baseline"] names it).

Which tokens are attributed: the user's prompt only. A chat-trained run (its data format is a chat format)
sees the prompt as a user turn in its chat template, as `tunelab predict --text` does; the template's own
tokens (role markers, a default system prompt, the generation prompt) stay fixed in every pass and are
reported as a count (`settings["fixed_tokens"]`). A prompt_completion / text run sees the prompt as it is;
only its special tokens (a BOS) stay fixed.

Capped for a CPU: the cost grows with prompt tokens x generated tokens (ablation: one pass of length
prompt + generated per prompt token; IG: `steps` passes per generated token), so a prompt over
`max_prompt_tokens` or a request over `max_generated_tokens` is refused with a message saying how to raise
the cap. The seconds taken are reported.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError
from tunelab.explain import Span

if TYPE_CHECKING:
    import torch

GENERATION_METHODS = ("ablation", "ig")
MAX_PROMPT_TOKENS = 64
"""Default cap on the attributed prompt tokens."""
MAX_GENERATED_TOKENS = 32
"""Default cap on the generated (or given target) tokens explained."""
IG_STEPS = 16
"""Default integration steps of "ig" (each a forward and backward pass per generated token)."""


@dataclass
class GenerationExplanation:
    """Which prompt tokens drove each generated token. JSON-able through `dataclasses.asdict`."""

    prompt: str
    prompt_tokens: list[Span]
    """The attributed tokens of `prompt` (offsets into it); score = the sum of their column of `scores`
    (the attribution to the log-probability of the whole generated text)."""
    generated: str
    """The generated text (or the given target), as the tokenizer decodes `generated_tokens`."""
    generated_tokens: list[str]
    scores: list[list[float]]
    """scores[i][j]: generated token i, prompt token j; in log-probability units (see the module doc)."""
    method: str
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    """Wall time of the generation and the attribution."""


@dataclass
class PromptIds:
    """The prompt as the model reads it: all token ids, which of them are the user's, their offsets."""

    ids: list[int]
    attributed: list[bool]
    offsets: list[tuple[int, int]]
    """Offsets into the user's prompt text of the attributed tokens, in order."""
    chat: bool


# ---------------------------------------------------------------------------------------------
# The prompt as the run reads it


def _require_causal_lm(run) -> None:
    model = run.model
    config = getattr(model, "config", None)
    if not (hasattr(model, "generate") and hasattr(model, "get_input_embeddings")) or \
            isinstance(config, dict) or getattr(config, "is_encoder_decoder", False):
        raise TunelabError(f"{run.dir} is a {run.task.name} run; explaining generated tokens needs a causal LM "
                           "run (task causal_lm on a transformers model); for a classifier use --method ig / "
                           "occlusion / lime / shap")


def prompt_ids(run, prompt: str) -> PromptIds:
    """The prompt's token ids as `tunelab predict --text` builds them, and which tokens are the user's."""
    tok = run.tokenizer
    record = run.task.text_records([prompt], run)[0] if run.task.text_records else {"prompt": prompt}
    if "messages" not in record:
        enc = tok(prompt, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
        spans = [(a, b) for a, b in enc["offset_mapping"]]
        attributed = [not s and b > a for s, (a, b) in zip(enc["special_tokens_mask"], spans)]
        offsets = [_trim(prompt, a, b) for (a, b), k in zip(spans, attributed) if k]
        return PromptIds(enc["input_ids"], attributed, offsets, False)
    start, end, text = _user_span(tok, record["messages"], prompt)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    # a token is the user's when its first character lies in the user's text (as chat_template's label masks)
    attributed = [start <= a < end and b > a for a, b in enc["offset_mapping"]]
    offsets = [(a - start, min(b, end) - start) for (a, b), k in zip(enc["offset_mapping"], attributed) if k]
    return PromptIds(enc["input_ids"], attributed, [_trim(prompt, a, b) for a, b in offsets], True)


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Offsets without the white space a byte-level BPE token carries (" is" -> "is"); a token of white space
    alone keeps its place with no width."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _user_span(tok, messages: list[dict], prompt: str) -> tuple[int, int, str]:
    """(start, end, rendered text): where the user's prompt lies in the chat template's rendering.

    Found by rendering the conversation once more with a marker in place of the prompt: the text around the
    marker is the template's own (a default system prompt may contain the prompt's words, so no search).
    """
    from tunelab.data.chat_template import render

    marker = "\u2063tunelab-prompt\u2063"  # invisible separators: no template trims or escapes them
    text = render(tok, messages, generation_prompt=True)
    marked = render(tok, [*messages[:-1], {**messages[-1], "content": marker}], generation_prompt=True)
    before, found, after = marked.partition(marker)
    if not found or text != before + prompt + after:
        raise TunelabError("the run's chat template changes the prompt's text as it renders it (e.g. strips it), "
                           "so its tokens cannot be told from the template's; explain the run's prompt without "
                           "surrounding white space, or a prompt_completion run")
    return len(before), len(before) + len(prompt), text


def _check_caps(n_prompt: int, n_generated: int, max_prompt_tokens: int, max_generated_tokens: int,
                what: str) -> None:
    why = ("the cost grows with prompt tokens x generated tokens x forward passes, minutes on a CPU beyond it")
    if n_prompt > max_prompt_tokens:
        raise TunelabError(f"the prompt has {n_prompt} tokens to attribute, over the cap of {max_prompt_tokens} "
                           f"({why}); shorten it, or raise the cap with --max-prompt-tokens {n_prompt} "
                           f"(max_prompt_tokens={n_prompt})")
    if n_generated > max_generated_tokens:
        raise TunelabError(f"{what} {n_generated} is over the cap of {max_generated_tokens} generated tokens "
                           f"({why}); ask for fewer, or raise the cap with --max-generated-tokens {n_generated} "
                           f"(max_generated_tokens={n_generated})")


# ---------------------------------------------------------------------------------------------
# What is explained: the greedy continuation or a given target


def greedy_tokens(model, tokenizer, ids: list[int], max_new_tokens: int) -> list[int]:
    """The greedy continuation's token ids (stopping at an end-of-sequence token, which is left out)."""
    import torch

    from tunelab.generation import generation_kwargs

    kwargs = generation_kwargs(tokenizer, model, max_new_tokens=max_new_tokens)
    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    new = out[0, len(ids):].tolist()
    stops = set(kwargs["eos_token_id"] or ())
    cut = next((k for k, t in enumerate(new) if t in stops), len(new))
    return new[:cut]


def _target_ids(run, ids: list[int], target: str | None, max_new_tokens: int) -> list[int]:
    if target is not None:
        new = run.tokenizer(target, add_special_tokens=False)["input_ids"]
        if not new:
            raise TunelabError("target: the given text has no tokens; give the answer to explain")
        return new
    new = greedy_tokens(run.model, run.tokenizer, ids, max_new_tokens)
    if not new:
        raise TunelabError("the model ended its answer at once (its first token was end-of-sequence), so there is "
                           "nothing to explain; give the answer to explain as a target text")
    return new


# ---------------------------------------------------------------------------------------------
# captum


def baseline_id(tokenizer) -> int:
    """The token that stands in for an absent prompt token: the pad token, unless it is the end-of-sequence
    token (tunelab gives a tokenizer without a pad token its EOS as pad, and an end of turn inside the
    prompt is no neutral token), then the unknown token where there is one."""
    pad, eos, unk = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    if pad is not None and pad != eos:
        return pad
    return unk if unk is not None else (pad if pad is not None else eos)


def _interpretable_input(p: PromptIds, tokenizer, baseline: int):
    """captum's TextTokenInput over our own ids: features = the attributed tokens, the rest fixed.

    Built from ids rather than text (TextTokenInput tokenizes a string itself, with the tokenizer's special
    tokens, which is not how a chat prompt is encoded) and with a position mask rather than captum's
    `skip_tokens` (which skips token ids everywhere, not the template's positions).
    """
    import torch
    from captum.attr import TextTokenInput

    inp = TextTokenInput.__new__(TextTokenInput)
    inp.inp_tensor = torch.tensor([p.ids])  # (1, T): the model's input
    inp.itp_mask = torch.tensor([p.attributed])  # (1, T): True = attributed
    inp.itp_tensor = inp.inp_tensor[inp.itp_mask].unsqueeze(0)  # (1, P)
    inp.values = tokenizer.convert_ids_to_tokens(inp.itp_tensor[0].tolist())
    inp.tokenizer, inp.n_itp_features, inp.baselines, inp.skip_tokens = tokenizer, len(inp.values), baseline, None
    return inp


def attribution_matrix(model, tokenizer, p: PromptIds, target: list[int], method: str, *, baseline: int,
                       steps: int) -> torch.Tensor:
    """scores (generated, prompt) of `method` ("ablation" | "ig") for the target ids after the prompt."""
    import torch
    from captum.attr import (FeatureAblation, LayerIntegratedGradients, LLMAttribution,
                             LLMGradientAttribution)

    inp = _interpretable_input(p, tokenizer, baseline)
    target_ids = torch.tensor(target)
    if method == "ablation":
        llm = LLMAttribution(FeatureAblation(model), tokenizer)
        # teacher-forced: one pass per ablated token scores every generated token at once
        result = llm.attribute(inp, target=target_ids, forward_in_tokens=False)
    else:
        llm = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
        result = llm.attribute(inp, target=target_ids, n_steps=steps)
    return result.token_attr.detach().float()  # (generated, prompt)


def explain_generation(run, prompt: str, *, max_new_tokens: int = 16, method: str = "ablation",
                       target: str | None = None, max_prompt_tokens: int = MAX_PROMPT_TOKENS,
                       max_generated_tokens: int = MAX_GENERATED_TOKENS, steps: int = IG_STEPS
                       ) -> GenerationExplanation:
    """Which tokens of `prompt` drove each token the causal LM run generates from it (or of `target`).

    Greedy generation of up to `max_new_tokens` (reproducible), then `method` "ablation" or "ig" (see the
    module doc). Refused (TunelabError): a prompt with more than `max_prompt_tokens` attributed tokens, more
    than `max_generated_tokens` tokens to explain, a run that is not a causal LM.
    """
    method = "ablation" if method == "occlusion" else method  # a one-token occlusion window is ablation
    if method not in GENERATION_METHODS:
        raise TunelabError(f"--method: a causal LM's generation is explained by {' or '.join(GENERATION_METHODS)} "
                           f"(occlusion = ablation); got {method!r}")
    if max_new_tokens < 1 or steps < 1:
        raise TunelabError(f"max_new_tokens ({max_new_tokens}) and steps ({steps}) must be at least 1")
    _require_causal_lm(run)
    started = time.perf_counter()
    p = prompt_ids(run, prompt)
    n_prompt = sum(p.attributed)
    if n_prompt == 0:
        raise TunelabError("the prompt has no tokens to attribute; give a non-empty --text")
    _check_caps(n_prompt, 0 if target is not None else max_new_tokens, max_prompt_tokens, max_generated_tokens,
                "max_new_tokens")
    new = _target_ids(run, p.ids, target, max_new_tokens)
    _check_caps(n_prompt, len(new), max_prompt_tokens, max_generated_tokens, "the target's token count")
    tok = run.tokenizer
    baseline = baseline_id(tok)
    scores = attribution_matrix(run.model, tok, p, new, method, baseline=baseline, steps=steps)
    columns = scores.sum(dim=0).tolist()  # (prompt,): attribution to the whole generated text
    spans = [Span(prompt[a:b], a, b, s) for (a, b), s in zip(p.offsets, columns)]
    settings = {"target": "given" if target is not None else "greedy", "max_new_tokens": max_new_tokens,
                "baseline": tok.convert_ids_to_tokens(baseline), "chat_template": p.chat,
                "fixed_tokens": len(p.ids) - n_prompt, "units": "log-probability"}
    if method == "ig":
        settings["steps"] = steps
    return GenerationExplanation(prompt, spans, tok.decode(new), tok.convert_ids_to_tokens(new),
                                 scores.tolist(), method, settings, time.perf_counter() - started)
