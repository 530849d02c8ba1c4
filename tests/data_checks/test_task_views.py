"""Each task's Task.splits and DataView: what the checks read, and rewrites (redaction) that keep what points
into the texts consistent: extractive QA's answer offsets, token classification's tags and entity offsets."""
from __future__ import annotations

import pytest

from tunelab.data.pii import redact
from tunelab.data.prepare import prepare_splits


def test_every_task_gives_splits_and_a_view():
    from tunelab.tasks import tasks

    registry = tasks()
    names = sorted(registry.names())
    assert names == ["causal_lm", "classification", "extractive_qa", "pretrain", "retrieval", "seq2seq",
                     "token_classification"]
    assert [n for n in names if registry.get(n).splits is None or registry.get(n).data_view is None] == []


CONTEXT = "Write to anna@example.org or call 020 7946 0958. The office is in Paris near 10.0.0.1 today."


def qa_records() -> list[dict]:
    """Flat QA records whose answers sit after, and on, PII: Paris after an e-mail and a phone number, the
    e-mail address itself, two overlapping answers, and a question with no answer."""
    at = CONTEXT.index
    return [{"id": "1", "question": "Where is the office?", "context": CONTEXT,
             "answers": {"text": ["Paris"], "answer_start": [at("Paris")]}},
            {"id": "2", "question": "Which address?", "context": CONTEXT,
             "answers": {"text": ["anna@example.org", "Write to anna@example.org"],
                         "answer_start": [at("anna"), 0]}},
            {"id": "3", "question": "Mail bob@example.net?", "context": CONTEXT,
             "answers": {"text": [], "answer_start": []}}]


def test_qa_redaction_maps_answer_offsets(tmp_path, helpers):
    """data.redact_pii on extractive QA: every answer is still the context's text at its start (the loader's
    offset check passes), an answer that was PII is its placeholder, and the count is exact: the context the
    three questions share counts its e-mail, phone and address once, in the check and in the redaction."""
    from extractive_helpers import qa_config

    from tunelab.data.squad import check_offsets
    from tunelab.tasks.extractive_qa import data_view, split_questions

    train = helpers.write_jsonl(tmp_path / "qa.jsonl", qa_records())
    cfg = qa_config("unused", train, tmp_path / "run", **{"data.val_fraction": 0.0, "data.test_fraction": 0.0,
                                                         "data.redact_pii": True})
    out = prepare_splits(split_questions(cfg, lambda _: None), data_view(cfg), cfg, lambda _: None)
    records = out["train"][0]
    assert check_offsets(records, fix=False) == 0
    redacted = "Write to [EMAIL] or call [PHONE]. The office is in Paris near [IP] today."
    assert [r["context"] for r in records] == [redacted] * 3
    assert [(r["answers"], r["starts"]) for r in records] == [
        (["Paris"], [redacted.index("Paris")]), (["[EMAIL]", "Write to [EMAIL]"], [9, 0]), ([], [])]
    assert records[2]["question"] == "Mail [EMAIL]?"
    assert out.summary.check.pii == out.summary.redacted == {"train": {"EMAIL": 2, "IP": 1, "PHONE": 1}}


@pytest.mark.parametrize("answer, found", [("example.com", "[EMAIL]"), ("7946 0958", "[PHONE]"),
                                           ("call +44 20", "call [PHONE]"), ("Write to anna", "Write to [EMAIL]")])
def test_qa_redaction_widens_an_answer_that_cuts_into_pii(answer, found, tmp_path, helpers):
    """An answer that ends or starts inside an e-mail address or a phone number (found in the whole context)
    is widened over it, so the address is redacted whole and the answer is the text that holds its
    placeholder; the training split and the test split read again for `tunelab eval` agree, and no PII is left."""
    from extractive_helpers import qa_config

    from tunelab.data.pii import find_pii
    from tunelab.data.prepare import held_out_as_trained
    from tunelab.data.squad import check_offsets
    from tunelab.tasks.extractive_qa import data_view, split_questions

    context = "Write to anna.berg@example.com or call +44 20 7946 0958 before noon."
    record = {"id": "1", "question": "Which one?", "context": context,
              "answers": {"text": [answer], "answer_start": [context.index(answer)]}}
    train = helpers.write_jsonl(tmp_path / "qa.jsonl", [record])
    cfg = qa_config("unused", train, tmp_path / "run", **{"data.val_fraction": 0.0, "data.test_fraction": 0.0,
                                                         "data.redact_pii": True})
    read = split_questions(cfg, lambda _: None)
    out = prepare_splits(read, data_view(cfg), cfg, lambda _: None)
    (question,) = out["train"][0]
    assert question["context"] == "Write to [EMAIL] or call [PHONE] before noon." and not find_pii(question["context"])
    assert question["answers"] == [found] and check_offsets([question], fix=False) == 0
    assert out.summary.redacted == {"train": {"EMAIL": 1, "PHONE": 1}}
    assert held_out_as_trained(read["train"][0], data_view(cfg), cfg) == [question]


def test_qa_leakage_is_the_same_question_on_the_same_context(tmp_path, helpers):
    """The synthetic QA data asks "which colour is there ?" of many contexts: no leak; a test file holding a
    training question with its context is one."""
    from extractive_helpers import qa_config, reading_records

    from tunelab.data.checks import check_splits, data_of

    records = reading_records(40, seed=3)
    train = helpers.write_jsonl(tmp_path / "train.jsonl", records)
    test = helpers.write_jsonl(tmp_path / "test.jsonl", reading_records(5, seed=4) + [records[7]])
    cfg = qa_config("unused", train, tmp_path / "run", **{"data.test": str(test)})
    _, view, splits = data_of(cfg, lambda _: None)
    report = check_splits(splits, view, cfg)
    leaks = report.duplicates.leaks
    assert sum(len(m) for m in leaks.values()) == 1 and leaks["test"][0].other == 5
    assert splits["train"][0][leaks["test"][0].index]["id"] == "q7"


@pytest.mark.parametrize("raw_text", [False, True])
def test_token_classification_rewrite_keeps_tags(raw_text):
    """Entities keep their tags, new words of the text between them are O; raw-text records get consistent
    word offsets (an e-mail address the word rule cut into seven words is whole again, then one placeholder)."""
    from tunelab.data.tagging import words_of
    from tunelab.tasks.token_classification import rewrite_sentence

    text = "Mail Anna Berg at anna.berg@example.com or +44 20 7946 0958 in London ."
    words, offsets = words_of(text) if raw_text else (text.split(), None)
    tags = ["O"] * len(words)
    tags[1], tags[2], tags[words.index("London")] = "B-PER", "I-PER", "B-LOC"
    record = {"tokens": words, "tags": tags, "text": text if raw_text else None, "offsets": offsets}
    out = rewrite_sentence(record, redact)
    placeholders = ["[", "EMAIL", "]"] if raw_text else ["[EMAIL]"]
    phone = ["[", "PHONE", "]"] if raw_text else ["[PHONE]"]
    assert out["tokens"] == ["Mail", "Anna", "Berg", "at", *placeholders, "or", *phone, "in", "London", "."]
    assert [t for t in out["tags"] if t != "O"] == ["B-PER", "I-PER", "B-LOC"]
    assert out["tags"][out["tokens"].index("London")] == "B-LOC" and len(out["tags"]) == len(out["tokens"])
    if raw_text:
        assert out["text"] == "Mail Anna Berg at [EMAIL] or [PHONE] in London ."
        assert [out["text"][a:b] for a, b in out["offsets"]] == out["tokens"]
    assert record["tokens"] == words  # the record itself is not changed


def test_views_of_the_other_tasks():
    from tunelab.config import config_from_dict
    from tunelab.tasks import pretrain, retrieval, seq2seq

    def cfg(task: str, **data):
        return config_from_dict({"task": task, "model": {"name": "builtin:minilm-l6"},
                                 "data": {"train": "t.jsonl", **data}, "output_dir": "unused"})

    pair = {"source": "mail a@b.com", "target": "schreib a@b.com", "_line": 3}
    view = seq2seq.data_view(cfg("seq2seq"))
    assert view.texts(pair) == ["mail a@b.com", "schreib a@b.com"]
    assert view.rewrite(pair, redact) == {"source": "mail [EMAIL]", "target": "schreib [EMAIL]", "_line": 3}
    view = retrieval.data_view(cfg("retrieval", negative_field="neg"))
    row = {"query": "q 8.8.8.8", "positive": "p", "neg": "n", "topic": "t"}
    assert view.texts(row) == ["q 8.8.8.8", "p", "n"]
    assert view.rewrite(row, redact) == {"query": "q [IP]", "positive": "p", "neg": "n", "topic": "t"}
    view = pretrain.data_view(cfg("pretrain"))
    assert view.chunked and view.rewrite({"text": "call 555-123-4567"}, redact) == {"text": "call [PHONE]"}


def test_token_classification_data_check_runs_on_its_splits(tmp_path, helpers):
    """`data check` for a tagging config reads sentences as training does; a sentence's text is its words."""
    from token_helpers import ner_config, ner_records

    from tunelab.data.checks import check_splits, data_of

    train = helpers.write_jsonl(tmp_path / "ner.jsonl", ner_records(60))
    cfg = ner_config("unused", train, tmp_path / "run")
    _, view, splits = data_of(cfg, lambda _: None)
    report = check_splits(splits, view, cfg)
    assert report.records == {name: len(recs) for name, (recs, _) in splits.items()}
    assert sum(report.records.values()) == 60
    assert view.texts(splits["train"][0][0]) == [" ".join(splits["train"][0][0]["tokens"])]


def test_held_out_split_read_again_as_trained():
    """`tunelab eval RUN` re-reads the run's own test split: redacted when the run redacted, else as it is."""
    from tunelab.config import config_from_dict
    from tunelab.data.prepare import held_out_as_trained
    from tunelab.tasks.seq2seq import data_view

    pairs = [{"source": "mail a@b.com", "target": "ok"}, {"source": "hi", "target": "hallo"}]
    for redact_pii, expected in ((False, pairs), (True, [{"source": "mail [EMAIL]", "target": "ok"}, pairs[1]])):
        cfg = config_from_dict({"task": "seq2seq", "model": {"name": "builtin:minilm-l6"}, "output_dir": "unused",
                                "data": {"train": "t.jsonl", "redact_pii": redact_pii}})
        assert held_out_as_trained(pairs, data_view(cfg), cfg) == expected


@pytest.mark.parametrize("fmt", ["auto", "text"])
def test_causal_lm_text_data_is_judged_alike_by_data_check_and_train(fmt, tmp_path, helpers):
    """Text-format causal-LM data is cut into blocks, so no record is too long: `data check` resolves
    data.format auto from data.train as the run does, and gives the train-start check's counts."""
    from tunelab.config import config_from_dict
    from tunelab.data.checks import check_splits, data_of
    from tunelab.tasks.causal_lm import data_view

    long = " ".join(f"word{i % 50}" for i in range(600))  # 600 words: over 8 x max_length 16
    train = helpers.write_jsonl(tmp_path / "t.jsonl", [{"text": long}] + [{"text": f"line {i} of prose"}
                                                                          for i in range(9)])
    cfg = config_from_dict({"task": "causal_lm", "model": {"name": "builtin:smollm2-135m", "max_length": 16},
                            "data": {"train": str(train), "format": fmt, "val_fraction": 0.0,
                                     "test_fraction": 0.0}, "output_dir": str(tmp_path / "run")})
    _, view, splits = data_of(cfg, lambda _: None)
    at_train = check_splits(splits, data_view(cfg, "text"), cfg).counts()  # the job passes its resolved format
    assert view.chunked and check_splits(splits, view, cfg).counts() == at_train
    assert "train.long" not in at_train
