"""Causal-LM data: record formats, chat-template rendering, label masking, truncation, packing.

A record becomes token ids plus *next-token targets*: `targets[t]` is the token the model must predict at
position t (`ids[t + 1]`) or -100 where no loss is taken. Shifting here, per example, means packed rows never
ask one example's last token to predict the next example's first token.

Formats (`data.format`):
  alpaca             {instruction, input?, output}           -> one user turn, one assistant turn
  messages           {messages: [{role, content}, ...]}      roles system | user | assistant, multi-turn
  sharegpt           {conversations: [{from, value}, ...]}   from human/user, gpt/assistant, system
  prompt_completion  {prompt, completion}                    plain text, no chat template (as trl does)
  text               {text}                                  continued pretraining: chunked to max_length
                                                             (the field is `data.text_field`, default text)

Chat formats are rendered with the tokenizer's chat template. Which characters belong to an assistant turn
is learned by rendering the conversation prefix by prefix (`messages[:i]` with the generation prompt, then
`messages[:i+1]`); the tokens whose characters start inside such a span carry labels. That works for any
template that renders a conversation as the concatenation of its prefixes (ChatML, Llama, Mistral, ...),
and is checked for every example. transformers' `{% generation %}` markers would do the same, but few
templates carry them (SmolLM2's does not).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch

from tunelab.errors import DataError, TunelabError

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text")
CHAT_FORMATS = ("alpaca", "messages", "sharegpt")
IGNORE = -100

# ShareGPT `from` values -> chat roles (the real data set also says chatgpt / bing / bard for the assistant)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}

# The fields that identify each format, checked in this order by `detect_format`.
FORMAT_FIELDS = (("messages", ("messages",)), ("sharegpt", ("conversations",)),
                 ("alpaca", ("instruction",)), ("prompt_completion", ("prompt",)), ("text", ("text",)))


def where(record: dict, source: str) -> tuple[str, int | None]:
    """File and line a record came from, for error messages."""
    return record.get("_file", source), record.get("_line")


def fields_of(record: dict) -> str:
    return ", ".join(k for k in record if not k.startswith("_")) or "(none)"


def detect_format(records: list[dict], source: str, text_field: str = "text") -> str:
    """The format the first record's fields name (see FORMAT_FIELDS; `text_field` marks plain text)."""
    first = records[0]
    for fmt, keys in FORMAT_FIELDS:
        if all(k in first for k in keys):
            return fmt
    if text_field in first:
        return "text"
    path, line = where(first, source)
    raise DataError(path, f"cannot tell the data format from the fields ({fields_of(first)}); expected "
                          "messages | conversations | instruction+output | prompt+completion | text, or set "
                          f"data.format to one of {', '.join(FORMATS)}", line)


# ---------------------------------------------------------------------------------------------
# Records -> normalised examples (validated, with file:line errors)


def _text_field(record: dict, key: str, i: int, source: str, fmt: str, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        path, line = where(record, source)
        what = "missing" if key not in record else f"not a non-empty string ({value!r:.40})"
        raise DataError(path, f"record {i + 1}: field '{key}' is {what}; format {fmt} needs it "
                              f"(fields here: {fields_of(record)})", line)
    return value


def _chat_messages(record: dict, i: int, source: str, fmt: str) -> list[dict]:
    """messages / sharegpt records -> [{role, content}], roles mapped, every turn checked."""
    key, role_key, text_key = (("messages", "role", "content") if fmt == "messages"
                               else ("conversations", "from", "value"))
    path, line = where(record, source)
    turns = record.get(key)
    if not isinstance(turns, list):
        what = "missing" if key not in record else f"a {type(turns).__name__}, not a list"
        raise DataError(path, f"record {i + 1}: field '{key}' is {what}; format {fmt} needs a list of "
                              f"{{{role_key}, {text_key}}} (fields here: {fields_of(record)})", line)
    if not turns:
        raise DataError(path, f"record {i + 1}: '{key}' is an empty conversation; remove the record", line)
    allowed = ("system", "user", "assistant") if fmt == "messages" else tuple(SHAREGPT_ROLES)
    messages = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise DataError(path, f"record {i + 1}, turn {j + 1}: expected {{{role_key!r}: ..., "
                                  f"{text_key!r}: ...}}, got {turn!r:.60}", line)
        role, text = turn[role_key], turn[text_key]
        if role not in allowed:
            raise DataError(path, f"record {i + 1}, turn {j + 1}: unknown {role_key} {role!r}; allowed: "
                                  f"{', '.join(allowed)}", line)
        if not isinstance(text, str):
            raise DataError(path, f"record {i + 1}, turn {j + 1}: {text_key} must be a string, got "
                                  f"{type(text).__name__}", line)
        messages.append({"role": role if fmt == "messages" else SHAREGPT_ROLES[role], "content": text})
    return messages


def check_roles(messages: list[dict], where_: tuple[str, int | None], i: int, need_answer: bool) -> None:
    """Optional system turn first, then user / assistant alternating, starting with user."""
    path, line = where_
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        raise DataError(path, f"record {i + 1}: a system turn may only come first (roles: {', '.join(roles)})",
                        line)
    if not body:
        raise DataError(path, f"record {i + 1}: the conversation has no user turn", line)
    for j, role in enumerate(body):
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(path, f"record {i + 1}: turn {j + 1 + (len(roles) - len(body))} is {role!r} where "
                                  f"{expected!r} was expected; turns must alternate user / assistant starting "
                                  f"with user (roles: {', '.join(roles)})", line)
    if need_answer and "assistant" not in body:
        raise DataError(path, f"record {i + 1}: no assistant turn to learn from (roles: {', '.join(roles)})",
                        line)
    for j, m in enumerate(messages):
        if m["role"] == "assistant" and need_answer and not m["content"].strip():
            raise DataError(path, f"record {i + 1}, turn {j + 1}: the assistant's answer is empty", line)


@dataclass
class Normalised:
    """One record, validated: chat `messages`, or plain `prompt`/`completion`, or `text`."""
    messages: list[dict] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None


def normalise(record: dict, fmt: str, i: int, source: str, need_answer: bool = True,
              text_field: str = "text") -> Normalised:
    """Validate one record of format `fmt` (need_answer=False for prediction inputs)."""
    if fmt == "alpaca":
        instruction = _text_field(record, "instruction", i, source, fmt)
        extra = _text_field(record, "input", i, source, fmt, required=False)
        output = _text_field(record, "output", i, source, fmt, required=need_answer)
        user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
        messages = [{"role": "user", "content": user}]
        if output is not None:
            messages.append({"role": "assistant", "content": output})
        return Normalised(messages=messages)
    if fmt in ("messages", "sharegpt"):
        messages = _chat_messages(record, i, source, fmt)
        check_roles(messages, where(record, source), i, need_answer)
        return Normalised(messages=messages)
    if fmt == "prompt_completion":
        return Normalised(prompt=_text_field(record, "prompt", i, source, fmt),
                          completion=_text_field(record, "completion", i, source, fmt, required=need_answer))
    if fmt == "text":
        return Normalised(text=_text_field(record, text_field, i, source, fmt))
    raise TunelabError(f"data.format: unknown format {fmt!r}; known: auto, {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# Chat template rendering and label masks


def require_chat_template(tokenizer, fmt: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise TunelabError(f"data.format {fmt!r} is rendered with the tokenizer's chat template, but this "
                           "tokenizer has none; use a chat model (e.g. builtin:smollm2-135m-instruct), or "
                           "data.format: prompt_completion / text for a base model")


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
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


def encode_plain(tokenizer, prompt: str, completion: str, max_length: int, train_on_prompt: bool
                 ) -> tuple[list[int], list[bool], bool]:
    """prompt_completion: prompt ids (with the tokenizer's own special tokens) + completion ids + EOS."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    ids = p + c
    mask = [train_on_prompt] * len(p) + [True] * len(c)
    return ids[:max_length], mask[:max_length], len(ids) > max_length


def targets_from_mask(ids: list[int], mask: list[bool]) -> list[int]:
    """Next-token targets: targets[t] = ids[t+1] where token t+1 is trained, else -100; last is -100."""
    return [nxt if m else IGNORE for nxt, m in zip(ids[1:], mask[1:])] + [IGNORE]


# ---------------------------------------------------------------------------------------------
# Records -> encoded examples


@dataclass
class Encoded:
    """One training row: token ids, next-token targets, and the record it came from."""
    ids: list[int]
    targets: list[int]
    record: int

    @property
    def n_labels(self) -> int:
        return sum(t != IGNORE for t in self.targets)


@dataclass
class EncodedSet:
    """A split after encoding, with the counts a user should see."""
    examples: list[Encoded]
    records: list[dict]
    normalised: list[Normalised]
    fmt: str
    source: str
    truncated: int = 0
    """Examples cut at max_length (text format: documents split into several chunks)."""
    dropped: int = 0
    """Examples left with no trained token after truncation (or 1-token text chunks)."""
    tokens: int = field(init=False)
    label_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(e.ids) for e in self.examples)
        self.label_tokens = sum(e.n_labels for e in self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: list[int], keep_counts: bool = False) -> "EncodedSet":
        """The examples at `indices` (truncated / dropped counts carried over only with keep_counts)."""
        return EncodedSet([self.examples[i] for i in indices], self.records, self.normalised, self.fmt,
                          self.source, self.truncated if keep_counts else 0, self.dropped if keep_counts else 0)

    def describe(self, max_length: int) -> str:
        cut = "split into chunks" if self.fmt == "text" else "truncated"
        notes = [f"{self.truncated} {cut} at {max_length} tokens"] if self.truncated else []
        if self.dropped:
            notes.append(f"{self.dropped} dropped (no trained token left within {max_length} tokens)")
        return (f"{len(self)} examples, {self.tokens} tokens ({self.label_tokens} trained)"
                + (f"; {'; '.join(notes)}" if notes else ""))


def encode_records(tokenizer, records: list[dict], fmt: str, *, max_length: int, train_on_prompt: bool,
                   source: str, text_field: str = "text") -> EncodedSet:
    """Validate and encode every record; errors name the file and line of the bad record."""
    if fmt in CHAT_FORMATS:
        require_chat_template(tokenizer, fmt)
    examples: list[Encoded] = []
    normalised = []
    truncated = dropped = 0
    for i, rec in enumerate(records):
        norm = normalise(rec, fmt, i, source, text_field=text_field)
        normalised.append(norm)
        if fmt == "text":
            pieces, cut = chunk_text(tokenizer, norm.text, max_length)
            truncated += cut
            for ids in pieces:
                if len(ids) < 2:
                    dropped += 1
                    continue
                examples.append(Encoded(ids, ids[1:] + [IGNORE], i))
            continue
        if norm.messages is not None:
            ids, mask, cut = encode_chat(tokenizer, norm.messages, max_length, train_on_prompt)
        else:
            ids, mask, cut = encode_plain(tokenizer, norm.prompt, norm.completion, max_length, train_on_prompt)
        truncated += cut
        ex = trim(Encoded(ids, targets_from_mask(ids, mask), i))
        if ex is None:
            dropped += 1
            continue
        examples.append(ex)
    return EncodedSet(examples, records, normalised, fmt, source, truncated, dropped)


def trim(ex: Encoded) -> Encoded | None:
    """Drop tokens after the last trained one (a cut-off prompt): causal attention means they change no
    loss, only cost compute. None when nothing is trained."""
    last = max((t for t, v in enumerate(ex.targets) if v != IGNORE), default=None)
    if last is None:
        return None
    return Encoded(ex.ids[: last + 2], ex.targets[: last + 1] + [IGNORE], ex.record)


def chunk_text(tokenizer, text: str, max_length: int) -> tuple[list[list[int]], int]:
    """A document's ids (+ EOS, so documents end visibly) in max_length chunks; (chunks, 1 if split else 0)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    chunks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    return chunks, int(len(chunks) > 1)


# ---------------------------------------------------------------------------------------------
# Prompts for generation (evaluation, predict, chat)


def prompt_and_reference(tokenizer, norm: Normalised, fmt: str) -> tuple[list[int], str | None]:
    """Prompt token ids for generation and the reference answer (the last assistant turn) if there is one."""
    if norm.messages is not None:
        messages, reference = norm.messages, None
        if messages[-1]["role"] == "assistant":
            messages, reference = messages[:-1], messages[-1]["content"]
        text = render(tokenizer, messages, generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"], reference
    if norm.prompt is not None:
        return tokenizer(norm.prompt, add_special_tokens=True)["input_ids"], norm.completion
    return tokenizer(norm.text, add_special_tokens=True)["input_ids"], None


# ---------------------------------------------------------------------------------------------
# Batches: padded (length-grouped) or packed


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: group example indices into rows of at most `capacity` tokens.

    Each example goes to the fullest row it still fits in (found by bisection over sorted free space),
    so rows fill up well: few pad tokens. Deterministic for the same lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            space, r = free.pop(k)
        else:
            space, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(free, (space - lengths[i], r))
    return rows


def padded_batch(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids / attention_mask / targets (targets -100 on padding)."""
    from tunelab.data.batching import pad_batch

    return pad_batch([e.ids for e in examples], pad_id, {"targets": [e.targets for e in examples]},
                     {"targets": IGNORE})


def packed_batch(rows: list[list[Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows: (B, T) input_ids, attention_mask (1 = real token), targets, position_ids.

    Positions restart at 0 for every example, which is how transformers recognises the example boundaries
    (its mask builder makes attention block-diagonal when position_ids restart and no 2-D mask is given).
    Padding at the end of a row gets positions 0, 1, ... of its own and is never attended by real tokens.
    """
    T = max(sum(len(e.ids) for e in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for e in row:
            n = len(e.ids)
            ids[b, t:t + n] = torch.tensor(e.ids)
            targets[b, t:t + n] = torch.tensor(e.targets)
            pos[b, t:t + n] = torch.arange(n)
            mask[b, t:t + n] = 1
            t += n
        pos[b, t:] = torch.arange(T - t)
    return {"input_ids": ids, "attention_mask": mask, "targets": targets, "position_ids": pos}


# ---------------------------------------------------------------------------------------------
# Preview: what the model sees and what it learns


def render_tokens(tokenizer, ex: Encoded, color: bool) -> str:
    """The example's text with trained tokens marked: green (colour) or [[...]] (no colour)."""
    trained = [False] + [t != IGNORE for t in ex.targets[:-1]]  # token t is trained if t-1 predicts it
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
