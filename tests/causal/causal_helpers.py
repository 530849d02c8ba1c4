"""Synthetic records for the causal-LM tests (written here; no one else's text)."""
from __future__ import annotations

import json
from pathlib import Path


def alpaca_records(n: int = 24) -> list[dict]:
    """Synthetic arithmetic instructions (written here; no one else's text)."""
    out = []
    for i in range(n):
        a, b = i % 7, (3 * i) % 5
        rec = {"instruction": f"Add {a} and {b}.", "output": f"{a} + {b} = {a + b}"}
        if i % 3 == 0:
            rec["input"] = "Answer briefly."
        out.append(rec)
    return out


def chat_records(n: int = 24) -> list[dict]:
    out = []
    for i in range(n):
        out.append({"messages": [
            {"role": "system", "content": "You count."},
            {"role": "user", "content": f"Count to {i % 5 + 1}."},
            {"role": "assistant", "content": " ".join(str(k) for k in range(1, i % 5 + 2))},
            {"role": "user", "content": "Again, backwards."},
            {"role": "assistant", "content": " ".join(str(k) for k in range(i % 5 + 1, 0, -1))}]})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
