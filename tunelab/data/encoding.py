"""Causal-LM records to training examples: token ids plus next-token targets, truncated or chunked.

A record becomes token ids plus *next-token targets*: `targets[t]` is the token the model must predict at
position t (`ids[t + 1]`) or IGNORE_INDEX (-100) where no loss is taken. Shifting here, per example, means
packed rows never ask one example's last token to predict the next example's first token.

Chat formats get their ids and trained-token masks from `tunelab.data.chat_template` (rag records through
`tunelab.retrieval.rag`, which fits the passages to max_length first); prompt_completion and text are
tokenized here. `EncodedSet.describe` gives the counts a user should see.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.data.chat_template import encode_chat, require_chat_template
from tunelab.data.formats import CHAT_FORMATS, Normalised, normalise
from tunelab.data.tokens import IGNORE_INDEX


@dataclass
class Encoded:
    """One training row: token ids, next-token targets, and the record it came from."""
    ids: list[int]
    targets: list[int]
    record: int

    @property
    def n_labels(self) -> int:
        """How many positions carry a target (take a loss)."""
        return sum(t != IGNORE_INDEX for t in self.targets)


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
        """One line for the log: examples, tokens, trained tokens, and what truncation did."""
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
                examples.append(Encoded(ids, ids[1:] + [IGNORE_INDEX], i))
            continue
        if norm.rag is not None:  # passages cut to fit, never the question or the answer
            from tunelab.retrieval.rag import encode_rag

            encoded = encode_rag(tokenizer, norm.rag, max_length, train_on_prompt)
            if encoded is None:  # the question and answer alone are longer than max_length
                dropped += 1
                continue
            ids, mask, cut = encoded
        elif norm.messages is not None:
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
    last = max((t for t, v in enumerate(ex.targets) if v != IGNORE_INDEX), default=None)
    if last is None:
        return None
    return Encoded(ex.ids[: last + 2], ex.targets[: last + 1] + [IGNORE_INDEX], ex.record)


def chunk_text(tokenizer, text: str, max_length: int) -> tuple[list[list[int]], int]:
    """A document's ids (+ EOS, so documents end visibly) in max_length chunks; (chunks, 1 if split else 0)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    chunks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    return chunks, int(len(chunks) > 1)


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
    """Next-token targets: targets[t] = ids[t+1] where token t+1 is trained, else IGNORE_INDEX;
    the last is IGNORE_INDEX."""
    return [nxt if m else IGNORE_INDEX for nxt, m in zip(ids[1:], mask[1:])] + [IGNORE_INDEX]
