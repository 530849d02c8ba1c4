"""data.augment through every task's own DataView never changes what a record teaches: entities keep their
words, tags and offsets, extractive answers their exact text (at starts that follow the edits), and seq2seq
targets, causal-LM assistant turns / outputs / completions / rag answers and passages, and retrieval positives
and negatives stay as they were, while the input side is edited (and back-translated); pretraining and
text-format causal-LM data, all target, are refused; back-translation entries are checked with the config,
before any data is read."""
from __future__ import annotations

import pytest

from tunelab.config import config_from_dict
from tunelab.data.augment import AUGMENTED, augment_records

# every edit, half of the words each: the labelled words are picked, swapped or deleted unless kept out
AUGMENT = {"copies": 8, "rate": 0.5}


def cfg(task: str, data: dict | None = None, model: str = "builtin:minilm-l6", **augment):
    return config_from_dict({"task": task, "model": {"name": model}, "output_dir": "unused", "train": {"seed": 5},
                             "data": {"train": "t.jsonl", **(data or {}), "augment": {**AUGMENT, **augment}}})


def augmented(records: list[dict], view, config) -> list[dict]:
    """The copies augment_records adds; at least one per record, or the test would check nothing."""
    added = augment_records(records, view, config, lambda _: None)
    assert len(added) >= len(records) and all(AUGMENTED in r for r in added)
    return added


NER_TEXT = "John Smith visited the quiet old harbour of New York with his cheerful friends yesterday ."


@pytest.mark.parametrize("raw_text", [False, True])
def test_entities_keep_their_words_tags_and_offsets(raw_text):
    from tunelab.data.tagging import spans_of, words_of
    from tunelab.tasks.token_classification import data_view

    words, offsets = words_of(NER_TEXT) if raw_text else (NER_TEXT.split(), None)
    tags = ["B-PER", "I-PER"] + ["O"] * 6 + ["B-LOC", "I-LOC"] + ["O"] * 6
    record = {"tokens": words, "tags": tags, "text": NER_TEXT if raw_text else None, "offsets": offsets}
    for copy in augmented([record], data_view(cfg("token_classification")), cfg("token_classification")):
        entities = [(kind, copy["tokens"][a:b]) for kind, a, b in spans_of(copy["tags"])]
        assert entities == [("PER", ["John", "Smith"]), ("LOC", ["New", "York"])]
        assert len(copy["tags"]) == len(copy["tokens"]) and copy["tokens"] != words
        if raw_text:
            assert [copy["text"][a:b] for a, b in copy["offsets"]] == copy["tokens"]
            assert copy["text"].startswith("John Smith ") and " New York " in copy["text"]


def test_extractive_answers_keep_their_text_at_their_moved_starts():
    from tunelab.tasks.extractive_qa import data_view

    context = "Small boats were moored quietly by the old river bank every summer evening while children played."
    answers = ["the old river bank", "old river bank every summer"]  # two overlapping gold answers
    record = {"id": "1", "question": "Where were the small boats moored every summer evening?",
              "context": context, "answers": answers, "starts": [context.index(a) for a in answers]}
    copies = augmented([record], data_view(cfg("extractive_qa")), cfg("extractive_qa"))
    for copy in copies:
        assert copy["answers"] == answers
        assert [copy["context"][s:s + len(a)] for s, a in zip(copy["starts"], answers)] == answers
    assert any(c["context"] != context for c in copies) and any(c["question"] != record["question"] for c in copies)


def test_seq2seq_targets_and_retrieval_passages_are_never_edited():
    from tunelab.tasks import retrieval, seq2seq

    pair = {"source": "The committee approved the new budget after a long and difficult debate.",
            "target": "Der Ausschuss billigte den neuen Haushalt nach einer langen und schwierigen Debatte."}
    for copy in augmented([pair], seq2seq.data_view(cfg("seq2seq")), cfg("seq2seq")):
        assert copy["target"] == pair["target"] and copy["source"] != pair["source"]
    config = cfg("retrieval", {"negative_field": "negative"})
    row = {"query": "which quick method cleans old rusty garden tools well",
           "positive": "Soak the rusty tools in white vinegar overnight, then scrub them with steel wool.",
           "negative": "Garden tools should be stored in a dry shed during the long winter months."}
    for copy in augmented([row], retrieval.data_view(config), config):
        assert (copy["positive"], copy["negative"]) == (row["positive"], row["negative"])
        assert copy["query"] != row["query"]


USER = "Please explain briefly why the quiet old harbour became so popular with young visitors"
ANSWER = "Cheap ferries and a famous summer festival brought large crowds of happy young visitors there"

CHATS = {
    "messages": {"messages": [{"role": "system", "content": "You are a careful and helpful travel assistant"},
                              {"role": "user", "content": USER}, {"role": "assistant", "content": ANSWER},
                              {"role": "user", "content": USER + " today"},
                              {"role": "assistant", "content": ANSWER + " again"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": USER}, {"from": "gpt", "value": ANSWER}]},
    "alpaca": {"instruction": USER, "input": "The harbour lies near a famous old fishing town", "output": ANSWER},
    "prompt_completion": {"prompt": USER, "completion": ANSWER},
    "rag": {"question": USER, "passages": ["A famous summer festival fills the old harbour every single year"],
            "answer": ANSWER},
}
INPUTS = {"messages": [1, 3], "sharegpt": [0], "alpaca": ["instruction", "input"], "prompt_completion": ["prompt"],
          "rag": ["question"]}


@pytest.mark.parametrize("fmt", sorted(CHATS))
def test_causal_lm_edits_only_what_the_user_wrote(fmt):
    """Assistant turns, output, completion, a rag answer and its passages, and system turns stay; the user's
    texts are edited."""
    from tunelab.tasks.causal_lm import TURN_FIELDS, data_view

    record = CHATS[fmt]
    config = cfg("causal_lm", {"format": fmt})
    for copy in augmented([record], data_view(config), config):
        if fmt in TURN_FIELDS:
            key, _, text = TURN_FIELDS[fmt]
            changed = [i for i, (a, b) in enumerate(zip(record[key], copy[key])) if a != b]
            assert set(changed) <= set(INPUTS[fmt]) and changed
            assert [t.keys() for t in copy[key]] == [t.keys() for t in record[key]]
        else:
            changed = [k for k in record if copy[k] != record[k]]
            assert set(changed) <= set(INPUTS[fmt]) and changed


def test_data_that_is_all_target_is_refused():
    """Pretraining text and text-format causal-LM data are what the model learns to write: data.augment is one
    problem of check_config (before data loads), and a run whose auto format turns out to be text stops when it
    would augment."""
    from tunelab.errors import ConfigError
    from tunelab.tasks import task_for
    from tunelab.tasks.causal_lm import data_view

    config = cfg("causal_lm", {"format": "text"})
    assert task_for(config).check_config(config) == [
        "data.augment.copies: causal_lm cannot augment its records (text-format records are all target (every "
        "token is one the model learns to write), so an edited copy would teach it the edits); leave "
        "augmentation off"]
    config = cfg("pretrain", model="scratch:gpt")
    assert task_for(config).check_config(config) == [
        "data.augment.copies: pretrain cannot augment its records (pretraining text is what the model learns to "
        "write, so an edited copy would teach it the edits); leave augmentation off"]
    auto = cfg("causal_lm")
    assert task_for(auto).check_config(auto) == []  # the format is known once data.train is read
    with pytest.raises(ConfigError, match="text-format records are all target"):
        augment_records([{"text": "some plain text to continue"}], data_view(auto, "text"), auto, lambda _: None)


def test_back_translation_goes_through_the_input_side_only(monkeypatch):
    import tunelab.data.augment as A
    from tunelab.tasks import seq2seq

    monkeypatch.setattr(A, "back_translation_problems", lambda runs: [])
    monkeypatch.setattr(A, "translate_all", lambda texts, ref, log: [t.upper() for t in texts])
    config = cfg("seq2seq", copies=0, back_translation=["runs/en-de", "runs/de-en"])
    pair = {"source": "The vote was close.", "target": "Die Abstimmung war knapp."}
    assert augment_records([pair], seq2seq.data_view(config), config, lambda _: None) == [
        {"source": "THE VOTE WAS CLOSE.", "target": "Die Abstimmung war knapp.", AUGMENTED: "back-translation"}]


@pytest.mark.parametrize("task", ["classification", "token_classification", "extractive_qa", "seq2seq",
                                  "retrieval", "causal_lm"])
def test_back_translation_runs_are_checked_with_the_config(task, tmp_path):
    """What `tunelab validate`, `data check` and `train` ask of every task before reading data: a reference that
    is no finished run is one problem naming data.augment.back_translation."""
    from tunelab.tasks import task_for

    config = cfg(task, copies=0, back_translation=[str(tmp_path / "nope")])
    problems = [p for p in task_for(config).check_config(config) if p.startswith("data.augment")]
    assert problems == [f"data.augment.back_translation: {tmp_path / 'nope'} is not a finished tunelab run "
                        "(needs config.yaml and model/); pass the output_dir of `tunelab train`"]


def test_validate_refuses_a_back_translation_run_that_does_not_translate(tmp_path, tiny_bert, data_dir, helpers,
                                                                          cls_run_dir, capsys):
    from tunelab.cli import main
    from tunelab.config import dump_config

    path = tmp_path / "c.yaml"
    path.write_text(dump_config(helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "run")))
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["validate", str(path), f"data.augment.back_translation=[{cls_run_dir}]"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}: data.augment.back_translation: {cls_run_dir} is a classification run; back-translation "
        "needs seq2seq runs (e.g. one trained en->de and one de->en)")
