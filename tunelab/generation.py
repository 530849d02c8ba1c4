"""Text generation for causal LMs: settings from `generate:`, batched generation, streaming chat turns.

transformers' `generate` does the decoding (greedy or sampling, repetition penalty, stopping at EOS);
this module only turns the config into its arguments, left-pads batches of prompts, and streams tokens
to the terminal with `TextStreamer`.
"""
from __future__ import annotations

from typing import Iterable

import torch

from tunelab.data.tokens import pad_id_of
from tunelab.errors import TunelabError


def generation_kwargs(tokenizer, model, *, max_new_tokens: int = 128, temperature: float = 0.0,
                      top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0) -> dict:
    """Arguments for `model.generate`: greedy when temperature is 0, stop at every known EOS id."""
    eos = {tokenizer.eos_token_id}
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(model_eos) if isinstance(model_eos, (list, tuple)) else {model_eos}
    eos.discard(None)
    kwargs: dict = {"max_new_tokens": max_new_tokens, "eos_token_id": sorted(eos) or None,
                    "pad_token_id": pad_id_of(tokenizer, fallback=tokenizer.eos_token_id),
                    "repetition_penalty": repetition_penalty}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None)
    else:  # say so explicitly: a model's generation_config may ask for sampling
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def settings_kwargs(tokenizer, model, gen_cfg) -> dict:
    """`generation_kwargs` from a GenerateConfig."""
    return generation_kwargs(tokenizer, model, max_new_tokens=gen_cfg.max_new_tokens,
                             temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, top_k=gen_cfg.top_k,
                             repetition_penalty=gen_cfg.repetition_penalty)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), padded on the left so every prompt ends at column T-1."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, T - len(p):] = 1
    return ids, mask


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[list[int]], kwargs: dict, batch_size: int = 8,
                   device: torch.device | str = "cpu") -> list[str]:
    """The generated continuation (special tokens removed) of each prompt, in order.

    Prompts are generated in batches of similar length so little compute goes to padding.
    """
    from tunelab.train.logging import progress

    model.eval()
    out: list[str | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in progress(range(0, len(order), batch_size), desc="generate", unit="batches"):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], kwargs["pad_token_id"])
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for i, row in zip(idx, gen[:, ids.shape[1]:].cpu()):
            out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return out  # type: ignore[return-value]


_NO_LIMIT = 10 ** 9  # transformers writes int(1e30) into model_max_length when a tokenizer states none


def model_context(model, tokenizer=None) -> int | None:
    """Tokens the model can attend over: its config's position limit, else the tokenizer's model_max_length.

    This, not the training `model.max_length`, bounds prompt + answer at generation: a model trained on
    128-token examples still reads a 300-token question correctly. None when neither states a limit.
    """
    from tunelab.models.load import model_positions

    positions = model_positions(model)
    if positions is not None:
        return positions
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < _NO_LIMIT else None


def prompt_budget(context: int | None, max_new_tokens: int) -> int | None:
    """Most prompt tokens that leave room for `max_new_tokens` in `context` (None: no limit).

    Raises when not even one prompt token fits: the answer would run past the model's positions.
    """
    if context is None:
        return None
    budget = context - max_new_tokens
    if budget < 1:
        raise TunelabError(f"generate.max_new_tokens: got {max_new_tokens}, which leaves no room for a prompt in "
                           f"the model's context of {context} tokens; set generate.max_new_tokens below {context}")
    return budget


def truncate_prompt(ids: list[int], context: int | None, max_new_tokens: int) -> list[int]:
    """Keep the end of a prompt so that prompt + answer fit in the model's `context` (see `model_context`).

    The start goes: the most recent turns and the question itself matter most.
    """
    keep = prompt_budget(context, max_new_tokens)
    return ids[-keep:] if keep is not None and len(ids) > keep else ids


def fit_prompts(prompts: list[list[int]], context: int | None, max_new_tokens: int
                ) -> tuple[list[list[int]], int]:
    """Every prompt cut from the left to fit `context` with its answer; returns them and how many were cut."""
    fitted = [truncate_prompt(p, context, max_new_tokens) for p in prompts]
    return fitted, sum(len(f) < len(p) for f, p in zip(fitted, prompts))


@torch.no_grad()
def stream_reply(model, tokenizer, prompt: list[int], kwargs: dict, device: torch.device | str = "cpu") -> str:
    """Generate one reply, printing tokens as they come; returns the reply text."""
    from transformers import TextStreamer

    model.eval()
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs)
    return tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()


CHAT_COMMANDS = {"/help": "list these commands",
                 "/reset": "forget the conversation (a --system prompt stays)",
                 "/exit": "quit (so do Ctrl-D and Ctrl-C at the prompt; Ctrl-C during a reply stops the reply)"}


def chat_command_reply(name: str) -> str:
    """What the chat answers to the command `name` (/help lists them; unknown ones are not sent on)."""
    if name == "/help":
        rows = {**CHAT_COMMANDS, "//text": "send a message that starts with /"}
        width = max(map(len, rows))
        return "\n".join(f"{cmd:<{width}}  {what}" for cmd, what in rows.items())
    if name == "/reset":
        return "(history cleared)"
    return f"unknown command {name}; /help lists the commands (start with // to send a line beginning with /)"


def chat_loop(model, tokenizer, kwargs: dict, *, system: str | None = None, max_length: int = 2048,
              lines: Iterable[str] | None = None, write=print, device: torch.device | str = "cpu") -> list[dict]:
    """An interactive chat: read a line, stream the reply, keep the history. Returns the conversation.

    A line starting with `/` is a command (CHAT_COMMANDS), answered here and never sent to the model; `//`
    sends a line that starts with `/`. Ctrl-C while a reply streams stops that reply: the question and the
    partial answer are dropped from the history (so turns keep alternating user / assistant) and the chat
    goes on. Ctrl-C at the prompt, Ctrl-D (end of input) or `/exit` quit. `lines` replaces stdin (for tests;
    it may raise KeyboardInterrupt like a terminal).
    """
    def read():
        try:
            return next(it, None) if lines is not None else input("you> ")
        except (EOFError, KeyboardInterrupt):
            if lines is None:
                print()  # end the prompt's line before the shell's
            return None

    it = iter(lines) if lines is not None else None
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    while True:
        line = read()
        if line is None:
            return messages
        if line.lstrip().startswith("/") and not line.lstrip().startswith("//"):
            name = line.split()[0]
            if name == "/exit":
                return messages
            if name == "/reset":
                messages = list(start)
            write(chat_command_reply(name))
            continue
        line = line.lstrip()[1:] if line.lstrip().startswith("//") else line
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = truncate_prompt(tokenizer(text, add_special_tokens=False)["input_ids"],
                                 model_context(model, tokenizer) or max_length, kwargs["max_new_tokens"])
        if lines is None:
            print("bot> ", end="", flush=True)
        try:
            reply = stream_reply(model, tokenizer, prompt, kwargs, device)
        except KeyboardInterrupt:
            messages.pop()  # the unanswered question goes with the partial answer
            write("\n(reply stopped; that question and the partial answer are left out of the history)")
            continue
        messages.append({"role": "assistant", "content": reply})
