"""Record formats: detection, which tokens carry labels, truncation, chunking, and bad-input errors."""
from __future__ import annotations

import json

import pytest

from causal_helpers import alpaca_records, chat_records, write_jsonl
from tunelab.data.chat_template import label_mask_from_spans
from tunelab.data.encoding import Encoded, encode_records
from tunelab.data.formats import detect_format
from tunelab.data.preview import length_histogram, render_tokens
from tunelab.data.sharegpt import clean_conversation, salvage_json_list
from tunelab.data.tokens import IGNORE_INDEX
from tunelab.errors import DataError, TunelabError


def trained_text(tok, ex: Encoded) -> list[str]:
    """The runs of trained tokens of an example, decoded (token t is trained when targets[t-1] is set)."""
    trained = [False] + [t != IGNORE_INDEX for t in ex.targets[:-1]]
    runs, cur = [], []
    for tid, tr in zip(ex.ids, trained):
        if tr:
            cur.append(tid)
        elif cur:
            runs.append(tok.decode(cur)), cur.clear()
    if cur:
        runs.append(tok.decode(cur))
    return runs


def encode(tok, records, fmt, max_length=256, train_on_prompt=False):
    return encode_records(tok, records, fmt, max_length=max_length, train_on_prompt=train_on_prompt, source="x")


def test_detect_format_from_fields():
    assert detect_format([{"messages": []}], "x") == "messages"
    assert detect_format([{"conversations": []}], "x") == "sharegpt"
    assert detect_format([{"instruction": "a", "output": "b"}], "x") == "alpaca"
    assert detect_format([{"prompt": "a", "completion": "b"}], "x") == "prompt_completion"
    assert detect_format([{"text": "a"}], "x") == "text"
    with pytest.raises(DataError, match="cannot tell the data format.*question, answer"):
        detect_format([{"question": "a", "answer": "b", "_line": 1}], "f.jsonl")


def test_alpaca_labels_only_the_answer_and_end_of_turn(tok):
    data = encode(tok, [{"instruction": "Add 1 and 2.", "input": "Be brief.", "output": "3"}], "alpaca")
    ex = data.examples[0]
    assert trained_text(tok, ex) == ["3<|im_end|>\n"]
    assert "Add 1 and 2.\n\nBe brief." in tok.decode(ex.ids)
    # every target is the next token, exactly where it is set
    assert all(t in (IGNORE_INDEX, nxt) for t, nxt in zip(ex.targets, ex.ids[1:]))
    assert ex.targets[-1] == IGNORE_INDEX


def test_messages_multi_turn_trains_every_assistant_turn(tok):
    rec = chat_records(3)[2]
    ex = encode(tok, [rec], "messages").examples[0]
    assert trained_text(tok, ex) == ["1 2 3<|im_end|>\n", "3 2 1<|im_end|>\n"]


def test_sharegpt_roles_are_mapped(tok):
    rec = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                             {"from": "human", "value": "Bye"}, {"from": "chatgpt", "value": "Ciao"}]}
    ex = encode(tok, [rec], "sharegpt").examples[0]
    assert trained_text(tok, ex) == ["Hello<|im_end|>\n", "Ciao<|im_end|>\n"]
    assert "<|im_start|>user\nHi" in tok.decode(ex.ids)


def test_prompt_completion_is_plain_text_with_eos(tok):
    ex = encode(tok, [{"prompt": "2+2=", "completion": "4"}], "prompt_completion").examples[0]
    assert tok.decode(ex.ids) == "2+2=4<|im_end|>"
    assert trained_text(tok, ex) == ["4<|im_end|>"]


def test_train_on_prompt_labels_everything_but_the_first_token(tok):
    ex = encode(tok, alpaca_records(1), "alpaca", train_on_prompt=True).examples[0]
    assert ex.targets == ex.ids[1:] + [IGNORE_INDEX]


def test_text_is_chunked_and_fully_trained(tok):
    data = encode(tok, [{"text": "abcdefghij" * 3}, {"text": "short"}], "text", max_length=8)
    # 30 chars + EOS = 31 tokens -> 8, 8, 8, 7; "short" + EOS = 6 tokens
    assert [len(e.ids) for e in data.examples] == [8, 8, 8, 7, 6]
    assert data.truncated == 1 and data.dropped == 0
    assert all(e.targets == e.ids[1:] + [IGNORE_INDEX] for e in data.examples)


def test_truncation_is_counted_and_never_leaves_an_unlabelled_example(tok):
    long_answer = {"instruction": "Say it.", "output": "x" * 100}
    long_prompt = {"instruction": "y" * 100, "output": "ok"}
    data = encode(tok, [long_answer, long_prompt, {"instruction": "Hi", "output": "ok"}], "alpaca", max_length=40)
    assert data.truncated == 2  # both long ones cut
    assert data.dropped == 1  # the long prompt left no answer within 40 tokens
    assert len(data.examples) == 2 and all(len(e.ids) <= 40 and e.n_labels > 0 for e in data.examples)
    assert "2 truncated at 40 tokens" in data.describe(40) and "1 dropped" in data.describe(40)


def test_label_mask_from_spans_uses_token_starts():
    offsets = [(0, 2), (2, 5), (5, 6), (6, 9), (9, 10)]
    assert label_mask_from_spans(offsets, [(2, 6)]) == [False, True, True, False, False]
    assert label_mask_from_spans(offsets, [(1, 3), (9, 12)]) == [False, True, False, False, True]


BAD = [
    ("alpaca", {"instruction": "Do it."}, "field 'output' is missing"),
    ("alpaca", {"instruction": "", "output": "x"}, "field 'instruction' is not a non-empty string"),
    ("messages", {"messages": []}, "empty conversation"),
    ("messages", {"messages": "hi"}, "field 'messages' is a str, not a list"),
    ("messages", {"messages": [{"role": "human", "content": "hi"}]}, "unknown role 'human'"),
    ("messages", {"messages": [{"role": "assistant", "content": "hi"}]}, "turn 1 is 'assistant' where 'user'"),
    ("messages", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "turn 2 is 'user' where 'assistant'"),
    ("messages", {"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
    ("messages", {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     "system turn may only come first"),
    ("messages", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]},
     "answer is empty"),
    ("messages", {"messages": [{"role": "user", "text": "a"}]}, "expected {'role': ..., 'content': ...}"),
    ("sharegpt", {"conversations": []}, "empty conversation"),
    ("sharegpt", {"conversations": [{"from": "robot", "value": "a"}]}, "unknown from 'robot'"),
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "a"}]}, "turn 1 is 'assistant'"),
    ("sharegpt", {"messages": []}, "field 'conversations' is missing"),
    ("prompt_completion", {"prompt": "a"}, "field 'completion' is missing"),
    ("text", {"text": 3}, "field 'text' is not a non-empty string"),
]


@pytest.mark.parametrize("fmt,record,message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_records_name_file_line_and_problem(tok, tmp_path, fmt, record, message):
    from tunelab.data.sources import load_records

    path = write_jsonl(tmp_path / "bad.jsonl", alpaca_records(2) if fmt == "alpaca" else [])
    if fmt != "alpaca":
        path.write_text("")
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    records = load_records(str(path))
    with pytest.raises(DataError) as e:
        encode_records(tok, records, fmt, max_length=64, train_on_prompt=False, source=str(path))
    assert message in str(e.value)
    assert e.value.path == str(path) and e.value.line == len(records)


def test_chat_format_without_a_chat_template_says_what_to_do(tok):
    import copy

    plain = copy.deepcopy(tok)
    plain.chat_template = None
    with pytest.raises(TunelabError, match="has none; use a chat model"):
        encode(plain, alpaca_records(1), "alpaca")


def test_render_tokens_marks_trained_text(tok):
    ex = encode(tok, [{"instruction": "Hi", "output": "Yo"}], "alpaca").examples[0]
    assert render_tokens(tok, ex, color=False).endswith("assistant\n[[Yo<|im_end|>\n]]")
    assert "\033[1;32mYo" in render_tokens(tok, ex, color=True)


def test_length_histogram_counts_every_example():
    text = length_histogram([1, 5, 16, 16, 30, 64], 64, bins=4, width=10)
    assert [int(line.split()[-1]) for line in text.splitlines()] == [4, 1, 0, 1]


def test_sharegpt_salvage_stops_at_the_cut():
    text = '[\n {"id": "a", "conversations": []},\n {"id": "b"} ,\n {"id": "c", "conversations": [{"from'
    items, complete = salvage_json_list(text)
    assert [i["id"] for i in items] == ["a", "b"] and not complete
    assert salvage_json_list('[{"id": 1}, {"id": 2}]') == ([{"id": 1}, {"id": 2}], True)


def test_sharegpt_cleaning_keeps_trainable_conversations():
    h, g = ({"from": "human", "value": "q"}, {"from": "gpt", "value": "a"})
    assert clean_conversation([g, h, g, h]) == ([h, g], "kept")  # continuation and dangling question
    assert clean_conversation([]) == (None, "empty")
    assert clean_conversation([h, h, g])[1] == "turns do not alternate"
    assert clean_conversation([h, {"from": "gpt", "value": " "}])[1] == "empty turn"
    assert clean_conversation([g])[1] == "no question with an answer"


def test_text_format_reads_the_configured_text_field(tok):
    records = [{"body": "hello there", "_line": 1}]
    assert detect_format(records, "x", text_field="body") == "text"
    data = encode_records(tok, records, "text", max_length=64, train_on_prompt=False, source="x",
                          text_field="body")
    assert tok.decode(data.examples[0].ids) == "hello there<|im_end|>"
    with pytest.raises(DataError, match="field 'text' is missing"):
        encode(tok, records, "text")
