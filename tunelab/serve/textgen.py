"""One generation as a stream of text deltas, for /v1/chat/completions and /v1/completions.

It runs inside a scheduler worker thread (tunelab.serve.scheduler): the prompt is built and tokenized there
too, so the model and its tokenizer are only ever used by worker threads, never by the event loop (which
keeps answering while they work). The pieces, each small:

- `chat_prompt` / `completion_prompt`: prompt token ids, the chat template applied server-side exactly as
  `tunelab predict` / `tunelab chat` apply it (generation prompt added, no special tokens added again); a
  template that refuses the messages (raise_exception: "roles must alternate", no system role) is a 400.
- `token_budget`: max_tokens capped by the server's setting and by the context left after the prompt; a
  prompt that leaves no room is a 400 in OpenAI's words.
- `TextStream`: token ids in, text out. It decodes all ids so far and releases only what is final: text that
  ends in U+FFFD (a character whose bytes are split across tokens) waits for the next token, and so does a
  tail that could be the start of a stop string. Decoding everything each time keeps the invariant exact:
  the deltas concatenate to `tokenizer.decode(ids, skip_special_tokens=True)` (cut at a stop string). It
  costs one decode of all ids per token: 0.1 ms for 512 ids with SmolLM2's tokenizer, next to tens of ms
  for SmolLM2's forward pass on a CPU. (Decoding a window of recent ids, as TGI does, is cheaper but not
  exact for tokenizers that drop a leading space at the start of a decode.)
- `generate`: transformers' `generate` (its KV cache is what makes it fast) with one StoppingCriteria that
  sees every new token first: it feeds the TextStream, hands out the text, and stops at EOS, at a stop
  string, or within one token once the job is stopped (client gone, deadline). A transformers streamer is
  not used: since transformers 5 it receives a token after the stopping criteria ran (one step late on
  some devices), so the criteria is where the newest token is known first.
- Seeded sampling draws from a torch.Generator of the request's own (`SeededSampler`): generate's sampling
  draws from torch's global RNG, which every worker thread shares, so a seed set around `generate` would
  need a lock that serialises all sampling requests, and would still be disturbed by other torch users.
  The sampler picks the token and masks the others, and generate runs greedily on that. A temperature below
  GREEDY_BELOW is decoded greedily, as vLLM does.
- `UntilStopped`: the same "stop within a token" for generations that are not streamed (/v1/answer).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from jinja2 import TemplateError
from transformers import (LogitsProcessor, LogitsProcessorList, StoppingCriteria, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from tunelab.serve.errors import ApiError

REPLACEMENT = "\ufffd"  # what decode writes for bytes that do not (yet) form a character
GREEDY_BELOW = 1e-5
"""A temperature below this is greedy decoding: the logits divided by it overflow float32 to inf (1e-300 makes
softmax nan), and long before that sampling is greedy in all but name (a logit gap of 0.001 becomes e^-100)."""
SEED_RANGE = 2 ** 64  # torch.Generator.manual_seed takes 0 .. 2**64 - 1; a request's seed is an int64


@dataclass(frozen=True)
class Params:
    """A request's generation settings, resolved against the run's defaults and the server's caps."""

    max_tokens: int
    temperature: float = 0.0
    """Below GREEDY_BELOW (0 included): greedy."""
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    """With temperature > 0: the same seed and request give the same text (None: a fresh random seed)."""
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    """What one generation produced. finish_reason: "stop" (EOS or a stop string), "length" (max_tokens),
    or "cancelled" (the job was stopped: client gone or past its deadline)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    first_token_at: float | None = None
    """time.monotonic() when the first token was generated (time to first token)."""


# ------------------------------------------------------------------------------------------------- prompts


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template, with the generation prompt.

    `messages` are {"role", "content": str}. Special tokens come from the template alone, as in
    `tunelab predict` (tunelab.data.chat_template.prompt_and_reference).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "this model's tokenizer has no chat template, so it cannot read messages; send a "
                            "plain prompt to /v1/completions instead", "messages", "no_chat_template")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as e:  # the template's own raise_exception: what these messages break of its rules
        raise ApiError(400, f"messages: the model's chat template refused them: {e}", "messages",
                       "invalid_messages") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a plain prompt, special tokens added as `tunelab predict` adds them to prompts."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def token_budget(prompt_tokens: int, requested: int | None, cap: int, context: int | None,
                 param: str = "messages") -> int:
    """Tokens the answer may have: the request's max_tokens (default: the server's cap), at most the cap
    and the context left after the prompt. 400 when the prompt leaves no room for one token."""
    if context is not None and prompt_tokens >= context:
        raise ApiError(400, f"This model's maximum context length is {context} tokens; your {param} resulted in "
                            f"{prompt_tokens} tokens, which leaves no room for an answer. Shorten the {param}.",
                       param, "context_length_exceeded")
    budget = min(requested if requested is not None else cap, cap)
    return budget if context is None else min(budget, context - prompt_tokens)


# ------------------------------------------------------------------------------------------------- text


class TextStream:
    """Token ids in, final text out: never a broken character, never a possible start of a stop string.

    `push(id)` returns the text that became final with that token ("" while held back); `finish()` returns
    the rest once no more tokens come. `stopped` turns true at the first stop string, whose text and what
    follows are never handed out.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # the latest decode of self.ids that ended on a whole character
        self.sent = ""  # what was handed out; always a prefix of self.text
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self._decode()
        if text.endswith(REPLACEMENT):  # the character's remaining bytes come with the next token(s)
            return ""
        self.text = text
        return self._release(final=False)

    def finish(self) -> str:
        """The held-back text, once generation is over (a dangling partial character included, as decode
        writes it)."""
        if self.stopped:
            return ""
        self.text = self._decode()
        return self._release(final=True)

    def _decode(self) -> str:
        # no clean-up of spaces: WordPiece's ("it ' s" -> "it's") rewrites text already sent when later ids come
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _release(self, final: bool) -> str:
        if not self.text.startswith(self.sent):
            # Decoding more ids rewrote text already handed out (no byte-level BPE or SentencePiece does);
            # hold everything rather than send text that contradicts what was sent.
            return ""
        end = self._stop_at()
        if end is not None:
            self.stopped = True
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - self._possible_stop_start()
        delta = self.text[len(self.sent):max(end, len(self.sent))]
        self.sent += delta
        return delta

    def _stop_at(self) -> int | None:
        """Where the first stop string starts, if one is in the text.

        Only text not yet sent needs searching: a stop string starting in sent text would have been a
        held-back possible start when that text was released.
        """
        found = [i for i in (self.text.find(s, len(self.sent)) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _possible_stop_start(self) -> int:
        """Length of the longest unsent tail of the text that a stop string starts with."""
        unsent = len(self.text) - len(self.sent)
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, unsent), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


# ------------------------------------------------------------------------------------------------- sampling


class SeededSampler(LogitsProcessor):
    """Temperature, top-k, top-p, then one token drawn with the request's own torch.Generator; every other
    token's score becomes -inf, so greedy decoding picks the drawn one. Same seed, same draws."""

    def __init__(self, temperature: float, top_p: float = 1.0, top_k: int = 0, seed: int | None = None):
        # the order transformers' own sampling applies them in
        warpers = [TemperatureLogitsWarper(temperature)]
        if top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.seed = (seed if seed is not None else secrets.randbits(63)) % SEED_RANGE  # -1 -> 2**64 - 1
        self.generator: torch.Generator | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generator is None:  # made on the scores' device, so CUDA draws on the GPU
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        chosen = torch.multinomial(probs, 1, generator=self.generator)  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


# ------------------------------------------------------------------------------------------------- generation


@dataclass
class _Watch(StoppingCriteria):
    """Sees each new token as soon as it exists: feeds the TextStream, hands out its text, decides to stop."""

    stream: TextStream
    eos: frozenset[int]
    stopped: Callable[[], bool]
    on_text: Callable[[str], None]
    tokens: int = 0
    done: bool = False  # EOS or a stop string: any later call is a padded step, not a token
    cancelled: bool = False
    first_token_at: float | None = None
    last: int | None = field(default=None, repr=False)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if not self.done:
            token = int(input_ids[0, -1])
            self.tokens += 1
            self.last = token
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            text = self.stream.push(token)
            if text:
                self.on_text(text)
            self.done = token in self.eos or self.stream.stopped
            if not self.done and self.stopped():
                self.cancelled = self.done = True
        return torch.full((input_ids.shape[0],), self.done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(model, tokenizer, prompt: list[int], params: Params, *, stopped: Callable[[], bool] = lambda: False,
             on_text: Callable[[str], None] = lambda text: None, device: str | torch.device = "cpu") -> Generation:
    """Generate an answer to `prompt`, calling `on_text(delta)` as text becomes final.

    `stopped()` is asked after every token (the scheduler's `job.stopped`): once true, generation ends
    within that token and the finish reason is "cancelled".
    """
    from tunelab.generation import generation_kwargs

    kwargs = generation_kwargs(tokenizer, model, max_new_tokens=params.max_tokens, temperature=0.0,
                               repetition_penalty=params.repetition_penalty)
    stream = TextStream(tokenizer, params.stop)
    watch = _Watch(stream, frozenset(kwargs["eos_token_id"] or ()), stopped, on_text)
    processors = LogitsProcessorList()
    if params.temperature >= GREEDY_BELOW:
        processors.append(SeededSampler(params.temperature, params.top_p, params.top_k, params.seed))
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), logits_processor=processors,
                   stopping_criteria=[watch], **kwargs)
    rest = stream.finish()
    if rest:
        on_text(rest)
    if watch.cancelled:
        reason = "cancelled"
    elif stream.stopped or watch.last in watch.eos:
        reason = "stop"
    else:
        reason = "length"
    return Generation(stream.sent, reason, len(prompt), watch.tokens, watch.first_token_at)


class UntilStopped(StoppingCriteria):
    """Ends every row of `model.generate` within one token once `stopped()` (the scheduler's `job.stopped`)
    is true; `fired` says whether it did."""

    def __init__(self, stopped: Callable[[], bool]):
        self.stopped, self.fired = stopped, False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.fired = self.fired or self.stopped()
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)
