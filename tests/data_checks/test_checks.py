"""The data checks (tunelab.data.checks) on planted records: labels, empty / short / long records, charset
oddities, scripts, chat turns (through causal_lm's DataView for each chat format), the summary and the
report."""
from __future__ import annotations

import random

from tunelab.config import config_from_dict
from tunelab.data.checks import check_splits
from tunelab.data.prepare import DataView

LATIN = ["the market rose again today as traders bought shares in banks",
         "a new film opens this week with a cast of well known actors",
         "the team won its third match in a row after a late goal",
         "rain is expected across the north on monday and tuesday",
         "the minister said the budget would include more money for schools",
         "researchers found a faster way to sort very large lists of numbers"]


def config(task: str = "classification", max_length: int = 16, **data):
    return config_from_dict({"task": task, "model": {"name": "builtin:minilm-l6", "max_length": max_length},
                             "data": {"train": "train.jsonl", **data}, "output_dir": "unused"})


VIEW = DataView(texts=lambda r: [r["text"]] if isinstance(r.get("text"), str) else [],
                label=lambda r: r.get("label"))


def records(texts: list[str], labels: list[str]) -> list[dict]:
    return [{"text": t, "label": lab, "_line": i + 1} for i, (t, lab) in enumerate(zip(texts, labels))]


WORDS = sorted({w for t in LATIN for w in t.split()})


def planted_splits() -> dict:
    """train: 20 ordinary Latin records of 10 words drawn from LATIN's (labels a x 15, b x 5) and, at lines
    21-28: an empty text, "ok" (short), a 200-word text (long: max_length 16 -> over 128 words), a U+FFFD, a
    control character, mojibake, a Cyrillic text and a record with an e-mail address; validation has no 'b';
    test has a 'c'."""
    rng = random.Random(0)
    base = [" ".join(rng.sample(WORDS, 10)) for _ in range(20)]
    odd = ["", "ok", " ".join(["word"] * 200), "caf\ufffd au lait tonight", "bell\x07 rings at noon",
           "cafÃ© au lait costs â€œtwoâ€\x9d euros", "Москва сегодня приняла новый бюджет города",
           "write to anna@example.com about the match"]
    train = records(base + odd, ["a"] * 15 + ["b"] * 5 + ["a"] * 8)
    validation = records(LATIN[:3], ["a", "a", "a"])
    test = records(LATIN[3:], ["a", "b", "c"])
    return {"train": (train, "train.jsonl"), "validation": (validation, "valid.jsonl"),
            "test": (test, "test.jsonl")}


def test_planted_records_counted_exactly():
    report = check_splits(planted_splits(), VIEW, config())
    counts = {f.key: f.count for f in report.findings if f.key.startswith("train.") and f.count}
    assert counts == {"train.empty": 1, "train.short": 1, "train.long": 1, "train.replacement_chars": 1,
                      "train.control_chars": 2, "train.mojibake": 1, "train.unusual_script": 1,
                      "train.pii_email": 1}
    examples = {f.key: f.examples for f in report.findings}
    assert examples["train.empty"] == ["train.jsonl:21"]
    assert examples["train.long"] == ["train.jsonl:23: 200 words"]
    assert examples["train.unusual_script"] == ["train.jsonl:27: Cyrillic (usual: Latin)"]
    assert examples["train.pii_email"] == ["train.jsonl:28: a***@e***.com"]
    # the mojibake record holds a C1 control character (\x9d) too: both are counted
    assert [e.split(":")[1] for e in examples["train.control_chars"]] == ["25", "26"]
    assert report.pii == {"train": {"EMAIL": 1}, "validation": {}, "test": {}}


def test_label_balance():
    labels = check_splits(planted_splits(), VIEW, config()).labels
    assert labels["counts"]["train"] == {"a": 23, "b": 5}
    assert labels["imbalance"] == 4.6
    assert labels["missing"] == {"validation": ["b"], "test": []}
    assert labels["unknown"] == {"validation": [], "test": ["c"]}


def test_clean_data_has_a_one_line_summary():
    splits = {"train": (records(LATIN[:4], ["a", "b"] * 2), "t"), "test": (records(LATIN[4:], ["a", "b"]), "s")}
    report = check_splits(splits, DataView(texts=VIEW.texts), config())
    assert len(report.summary()) == 1 and report.summary()[0].startswith("data check: train 4, test 2 records (")
    assert all(f.count == 0 for f in report.findings)


def test_summary_and_report_say_what_was_found():
    report = check_splits(planted_splits(), VIEW, config())
    summary = report.summary()
    assert summary[0].startswith("data check: train 28, validation 3, test 3 records (")
    assert summary[1:] == [
        "  labels: 2 in train, largest / smallest class 4.6x; 1 not in validation; 1 test labels not in train",
        "  records (all splits): 1 empty, 1 short, 1 long, 1 replacement chars, 2 control chars, 1 mojibake, "
        "1 unusual script",
        "  PII: 1 EMAIL in train (data.redact_pii: true replaces them with placeholders)",
        "  examples: tunelab data check CONFIG"]
    text = report.render(examples=1)
    assert "  records with no text: train 1, validation 0, test 0\n    train: train.jsonl:21" in text
    assert "anna@example.com" not in text and "a***@e***.com" in text
    assert report.to_dict()["findings"][0] == {
        "section": "duplicates", "key": "train.exact_duplicates", "count": 0, "examples": [],
        "title": "exact duplicates in train (repeat an earlier training record)"}


def test_examples_mask_pii_and_escape_control_characters_once():
    """Examples that quote a record show its PII masked, as the PII section does (in the printed report and in
    --json), and a control character as one JSON escape (\\u0007), not an escaped escape."""
    import json

    odd = ["caf\ufffd mail anna.berg@example.com today", "bell\x07 call +44 20 7946 0958 now",
           "cafÃ© at 192.168.1.10 and \x85 here"]
    splits = {"train": (records(LATIN[:3] + odd, ["a"] * 6), "train.jsonl")}
    report = check_splits(splits, VIEW, config())
    examples = {f.key: f.examples for f in report.findings if f.examples}
    assert examples["train.replacement_chars"] == ['train.jsonl:4: "caf\ufffd mail a***@e***.com today"']
    assert examples["train.control_chars"] == ['train.jsonl:5: "bell\\u0007 call +** ** **** **58 now"',
                                               'train.jsonl:6: "cafÃ© at 192.*.*.* and \\u0085 here"']
    assert examples["train.mojibake"] == ['train.jsonl:6: "cafÃ© at 192.*.*.* and \\u0085 here"']
    printed = report.render(examples=3)
    for value in ("anna.berg@example.com", "7946 0958", "192.168.1.10"):
        assert value not in printed and value not in json.dumps(report.to_dict(), ensure_ascii=False)
    assert "bell\\u0007 call" in printed and "\\\\" not in printed  # one backslash, never two


def chats() -> list[dict]:
    """messages records: fine, no assistant turn, an empty answer, one of 2,000 characters (about 514 tokens
    estimated: cut at max_length 256)."""
    fine = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    return [{"messages": fine, "_line": 1},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
             "_line": 2},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "_line": 3},
            {"messages": [{"role": "user", "content": "x" * 1000}, {"role": "assistant", "content": "y" * 1000}],
             "_line": 4}]


def test_chat_turns_through_the_causal_lm_view():
    from tunelab.tasks.causal_lm import data_view

    cfg = config("causal_lm", max_length=256, format="messages")
    report = check_splits({"train": (chats(), "chats.jsonl")}, data_view(cfg), cfg)
    found = {f.key: f.examples for f in report.findings if f.section == "chats"}
    assert found == {"train.no_assistant_turn": ["chats.jsonl:2"], "train.empty_assistant_turn": ["chats.jsonl:3"],
                     "train.cut_at_max_length": ["chats.jsonl:4: about 510 tokens"]}


def test_causal_lm_view_reads_every_format():
    """Texts without roles, turns as training maps them (ShareGPT gpt -> assistant; alpaca's input joins the
    instruction), and a rewrite that changes texts only."""
    from tunelab.tasks.causal_lm import data_view

    cfg = config("causal_lm", max_length=64)  # data.format auto: each record's own fields
    view = data_view(cfg)
    share = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    alpaca = {"instruction": "Do it", "input": "now", "output": "Done"}
    rag = {"question": "Who?", "passages": ["p1", {"id": 7, "text": "p2"}], "answer": "Me"}
    plain = {"prompt": "P", "completion": "C"}
    assert view.texts(share) == ["Q", "A"] and view.turns(share) == [("user", "Q"), ("assistant", "A")]
    assert view.texts(alpaca) == ["Do it", "now", "Done"]
    assert view.turns(alpaca) == [("user", "Do it\n\nnow"), ("assistant", "Done")]
    assert view.texts(rag) == ["Who?", "Me", "p1", "p2"]
    assert view.turns(plain) is None and view.texts({"text": "T"}) == ["T"]
    shout = view.rewrite(rag, str.upper)
    assert shout == {"question": "WHO?", "passages": ["P1", {"id": 7, "text": "P2"}], "answer": "ME"}
    assert rag["question"] == "Who?"  # a copy: the record itself is not changed
    assert view.rewrite(share, str.lower)["conversations"] == [{"from": "human", "value": "q"},
                                                               {"from": "gpt", "value": "a"}]


def test_duplicate_examples_quote_records_their_places_do_not_tell_apart():
    # gettext pairs carry only their catalog: "de/apt.mo repeats de/apt.mo" would not say which message
    train = [{"text": t, "label": "a", "_file": "de/apt.mo"} for t in (LATIN[0], LATIN[1], LATIN[0])]
    train.append({"text": LATIN[2], "label": "a", "_file": "folder/one.txt"})
    train.append({"text": LATIN[2], "label": "a", "_file": "folder/two.txt"})
    report = check_splits({"train": (train, "builtin:gettext")}, VIEW, config())
    examples = next(f.examples for f in report.findings if f.key == "train.exact_duplicates")
    assert examples == [f'de/apt.mo repeats de/apt.mo: "{LATIN[0]}"', "folder/two.txt repeats folder/one.txt"]
