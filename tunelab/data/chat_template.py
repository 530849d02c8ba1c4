"""Chat-template rendering: conversations to text, which tokens are the assistant's, prompts for generation.

Chat formats are rendered with the tokenizer's chat template. Which characters belong to an assistant turn
is learned by rendering the conversation prefix by prefix (`messages[:i]` with the generation prompt, then
`messages[:i+1]`); the tokens whose characters start inside such a span carry labels. That works for any
template that renders a conversation as the concatenation of its prefixes (ChatML, Llama, Mistral, ...),
and is checked for every example. transformers' `{% generation %}` markers would do the same, but few
templates carry them (SmolLM2's does not).
"""
from __future__ import annotations

import bisect

from tunelab.data.formats import Normalised
from tunelab.errors import TunelabError


def require_chat_template(tokenizer, fmt: str) -> None:
    """A chat format needs a tokenizer with a chat template: raise a TunelabError saying what to use."""
    if not getattr(tokenizer, "chat_template", None):
        raise TunelabError(f"data.format {fmt!r} is rendered with the tokenizer's chat template, but this "
                           "tokenizer has none; use a chat model (e.g. builtin:smollm2-135m-instruct), or "
                           "data.format: prompt_completion / text for a base model")


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it (text), optionally with the generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], full: str, stop_at: int | None = None
                    ) -> list[tuple[int, int]]:
    """Character spans of `full` (the rendered conversation) written by the assistant turns.

    Each span runs from the end of the generation prompt before the turn to the end of the turn as the
    template renders it (so the end-of-turn token is trained: the model learns to stop). Turns starting at
    or after `stop_at` (a truncation point) are skipped.
    """
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (full.startswith(before) and full.startswith(upto) and upto.startswith(before)):
            raise TunelabError("the tokenizer's chat template does not render a conversation as the sum of its "
                               "prefixes, so the assistant tokens cannot be told apart; set "
                               "data.train_on_prompt: true (loss on every token) or use another template")
        if stop_at is not None and len(before) >= stop_at:
            break
        spans.append((len(before), len(upto)))
    return spans


def label_mask_from_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """True for tokens whose first character lies inside one of `spans`."""
    starts = [s for s, _ in spans]
    out = []
    for a, b in offsets:
        k = bisect.bisect_right(starts, a) - 1
        out.append(k >= 0 and a < spans[k][1] and b > a)
    return out


def encode_chat(tokenizer, messages: list[dict], max_length: int, train_on_prompt: bool
                ) -> tuple[list[int], list[bool], bool]:
    """(token ids, trained-token mask, truncated?) for one conversation, cut to max_length tokens."""
    full = render(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    truncated = len(ids) > max_length
    ids, offsets = ids[:max_length], offsets[:max_length]
    if train_on_prompt:
        return ids, [True] * len(ids), truncated
    stop_at = offsets[-1][1] if truncated and offsets else None
    return ids, label_mask_from_spans(offsets, assistant_spans(tokenizer, messages, full, stop_at)), truncated


def prompt_and_reference(tokenizer, norm: Normalised, fmt: str, budget: int | None = None
                         ) -> tuple[list[int], str | None]:
    """Prompt token ids for generation and the reference answer (the last assistant turn) if there is one.

    Conversations are rendered with the generation prompt; plain prompts and texts are tokenized as they are.
    rag records are fitted to `budget` prompt tokens by cutting passages (tunelab.retrieval.rag); None: whole.
    """
    if norm.rag is not None:
        from tunelab.retrieval.rag import prompt_ids

        return prompt_ids(tokenizer, norm.rag, budget), norm.rag.answer
    if norm.messages is not None:
        messages, reference = norm.messages, None
        if messages[-1]["role"] == "assistant":
            messages, reference = messages[:-1], messages[-1]["content"]
        text = render(tokenizer, messages, generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"], reference
    if norm.prompt is not None:
        return tokenizer(norm.prompt, add_special_tokens=True)["input_ids"], norm.completion
    return tokenizer(norm.text, add_special_tokens=True)["input_ids"], None
