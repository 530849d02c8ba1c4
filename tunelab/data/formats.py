"""Record formats for causal-LM data: detection, validation and normalisation, with file:line errors.

Formats (`data.format`):
  alpaca             {instruction, input?, output}           -> one user turn, one assistant turn
  messages           {messages: [{role, content}, ...]}      roles system | user | assistant, multi-turn
  sharegpt           {conversations: [{from, value}, ...]}   from human/user, gpt/assistant, system
  prompt_completion  {prompt, completion}                    plain text, no chat template (as trl does)
  text               {text}                                  continued pretraining: chunked to max_length
                                                             (the field is `data.text_field`, default text)
  rag                {question, passages, answer}            answer from passages (strings or {id, text}),
                                                             prompted as `tunelab ask --index` prompts
                                                             (tunelab.retrieval.rag)

`normalise` turns one record into a `Normalised` example: chat `messages` (the three chat formats), plain
`prompt`/`completion`, or `text`; rag records also keep their question and passages (`rag`), because
fitting them to a token limit cuts passages, never the question. Nothing here tokenizes.
"""
from __future__ import annotations

from dataclasses import dataclass

from tunelab.errors import DataError, TunelabError
from tunelab.retrieval.rag import Passage, RagExample, rag_messages

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text", "rag")
CHAT_FORMATS = ("alpaca", "messages", "sharegpt", "rag")
CHAT_ROLES = ("system", "user", "assistant")

# ShareGPT `from` values -> chat roles (the real data set also says chatgpt / bing / bard for the assistant)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}

# The fields that identify each format, checked in this order by `detect_format`.
FORMAT_FIELDS = (("messages", ("messages",)), ("sharegpt", ("conversations",)),
                 ("alpaca", ("instruction",)), ("prompt_completion", ("prompt",)),
                 ("rag", ("question", "passages")), ("text", ("text",)))


def where(record: dict, source: str) -> tuple[str, int | None]:
    """File and line a record came from, for error messages."""
    return record.get("_file", source), record.get("_line")


def fields_of(record: dict) -> str:
    """The record's own field names (not the _file / _line bookkeeping), for error messages."""
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
                          "messages | conversations | instruction+output | prompt+completion | "
                          "question+passages+answer | text, or set "
                          f"data.format to one of {', '.join(FORMATS)}", line)


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
    allowed = CHAT_ROLES if fmt == "messages" else tuple(SHAREGPT_ROLES)
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
    rag: RagExample | None = None


def _rag_passages(record: dict, i: int, source: str) -> list[Passage]:
    """A rag record's `passages`: strings, or {id, text} with a string or integer id; best first."""
    path, line = where(record, source)
    passages = record.get("passages")
    if not isinstance(passages, list):
        what = "missing" if "passages" not in record else f"a {type(passages).__name__}, not a list"
        raise DataError(path, f"record {i + 1}: field 'passages' is {what}; format rag needs a list of strings "
                              f"or {{id, text}} (fields here: {fields_of(record)})", line)
    out = []
    for j, p in enumerate(passages):
        if isinstance(p, dict):
            text, pid = p.get("text"), p.get("id")
            ok_id = pid is None or (isinstance(pid, (str, int)) and not isinstance(pid, bool))
        else:
            text, pid, ok_id = p, None, True
        if not isinstance(text, str) or not text.strip() or not ok_id:
            raise DataError(path, f"record {i + 1}, passage {j + 1}: expected a non-empty string or {{\"id\": "
                                  f"string, \"text\": non-empty string}}, got {p!r:.60}", line)
        out.append(Passage(text=text, id=None if pid is None else str(pid)))
    return out


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
    if fmt == "rag":
        question = _text_field(record, "question", i, source, fmt)
        passages = _rag_passages(record, i, source)
        answer = _text_field(record, "answer", i, source, fmt, required=need_answer)
        return Normalised(messages=rag_messages(question, passages, answer),
                          rag=RagExample(question, passages, answer))
    raise TunelabError(f"data.format: unknown format {fmt!r}; known: auto, {', '.join(FORMATS)}")
