"""The rag prompt (tunelab.retrieval.rag) and the `rag` record format of causal_lm: passages numbered with
their ids, fitted to a token budget exactly (lowest-ranked passage cut first, then dropped; the question
never cut), detection, the loss on the answer only, and errors that name the file, record and field.

The tiny tokenizer has one token per character, so budgets are checked to the token.
"""
from __future__ import annotations

import pytest

from causal_helpers import write_jsonl
from test_formats import trained_text
from tunelab.data.chat_template import prompt_and_reference
from tunelab.data.encoding import encode_records
from tunelab.data.formats import detect_format, normalise
from tunelab.errors import DataError
from tunelab.retrieval.rag import NoRoom, Passage, fit_prompt, rag_messages, user_message

QUESTION = "What colour is the sky on Zorb?"
PASSAGES = [Passage("The sky on Zorb is green.", "zorb#0"), Passage("Zorb has two moons, Ix and Ox.", "zorb#1"),
            Passage("Zorb people eat blue soup.", "food#3")]


def n_tokens(tok, passages, answer=None) -> int:
    return len(fit_prompt(tok, QUESTION, passages, None, answer).ids)


def test_user_turn_numbers_the_passages_with_their_ids_then_asks():
    text = user_message(QUESTION, [PASSAGES[0], Passage("No id here.")])
    assert text == ("Passages:\n\n[1] (id: zorb#0)\nThe sky on Zorb is green.\n\n[2]\nNo id here.\n\n"
                    f"Question: {QUESTION}")
    assert user_message(QUESTION, []) == f"Passages: (none)\n\nQuestion: {QUESTION}"
    roles = [m["role"] for m in rag_messages(QUESTION, PASSAGES, "Green.")]
    assert roles == ["system", "user", "assistant"]


def test_without_a_limit_or_within_it_nothing_is_cut(tok):
    full = fit_prompt(tok, QUESTION, PASSAGES, None)
    assert len(full.ids) == 371 and not full.shortened and full.passages == PASSAGES
    assert fit_prompt(tok, QUESTION, PASSAGES, 371).ids == full.ids
    assert tok.decode(full.ids).endswith(f"Question: {QUESTION}<|im_end|>\n<|im_start|>assistant\n")


def test_one_token_over_cuts_one_character_off_the_lowest_ranked_passage(tok):
    fitted = fit_prompt(tok, QUESTION, PASSAGES, 370)
    assert len(fitted.ids) == 370 and fitted.dropped == 0
    assert fitted.passages[:2] == PASSAGES[:2]
    assert fitted.passages[2].text == "Zorb people eat blue soup" and fitted.passages[2].cut


@pytest.mark.parametrize("limit", range(280, 372, 3))
def test_budget_is_met_exactly_and_passages_go_lowest_ranked_first(tok, limit):
    fitted = fit_prompt(tok, QUESTION, PASSAGES, limit)
    assert len(fitted.ids) <= limit
    kept = fitted.passages
    assert len(kept) + fitted.dropped == len(PASSAGES)
    for got, original in zip(kept, PASSAGES):  # a prefix of the ranking, texts prefixes of the originals
        assert got.id == original.id and original.text.startswith(got.text) and got.text
    assert all(not p.cut for p in kept[:-1])  # only the last kept passage may be cut
    if kept and kept[-1].cut:  # one more character of it would not fit
        k = len(kept) - 1
        longer = Passage(PASSAGES[k].text[: len(kept[-1].text) + 1], PASSAGES[k].id)
        assert n_tokens(tok, [*kept[:-1], longer]) > limit
        assert len(fitted.ids) == limit  # one character is one token here: the budget is filled
    if fitted.dropped:  # not even one character of the next passage would fit
        nxt = PASSAGES[len(kept)]
        assert n_tokens(tok, [*kept, Passage(nxt.text[:1], nxt.id)]) > limit
    assert tok.decode(fitted.ids).count(QUESTION) == 1


def test_the_question_is_never_cut(tok):
    alone = n_tokens(tok, [])
    fitted = fit_prompt(tok, QUESTION, PASSAGES, alone)
    assert fitted.passages == [] and fitted.dropped == 3 and len(fitted.ids) == alone
    assert f"Question: {QUESTION}" in tok.decode(fitted.ids)
    with pytest.raises(NoRoom) as e:
        fit_prompt(tok, QUESTION, PASSAGES, alone - 1)
    assert (e.value.needed, e.value.limit) == (alone, alone - 1)


def test_with_an_answer_the_limit_covers_the_whole_conversation(tok):
    whole = n_tokens(tok, PASSAGES, "Green.")
    fitted = fit_prompt(tok, QUESTION, PASSAGES, whole - 5, "Green.")
    assert len(fitted.ids) == whole - 5 and fitted.passages[2].text == "Zorb people eat blue "
    assert tok.decode(fitted.ids).endswith("assistant\nGreen.<|im_end|>\n")


# ---------------------------------------------------------------------------------------------
# The rag record format of causal_lm


def rag_record(**change) -> dict:
    rec = {"question": QUESTION, "passages": [{"id": "zorb#0", "text": "The sky on Zorb is green."},
                                              "Zorb has two moons, Ix and Ox."], "answer": "Green."}
    return {**rec, **change}


def test_auto_detects_rag_from_question_and_passages():
    assert detect_format([rag_record()], "x") == "rag"
    with pytest.raises(DataError, match="question\\+passages\\+answer"):  # extractive QA's fields are not rag
        detect_format([{"question": "q", "context": "c", "answers": {"text": []}}], "x")


def test_rag_record_is_the_prompt_ask_builds(tok):
    norm = normalise(rag_record(), "rag", 0, "x")
    passages = [Passage("The sky on Zorb is green.", "zorb#0"), Passage("Zorb has two moons, Ix and Ox.")]
    assert norm.messages == rag_messages(QUESTION, passages, "Green.")
    ids, reference = prompt_and_reference(tok, norm, "rag")
    assert ids == fit_prompt(tok, QUESTION, passages, None).ids and reference == "Green."
    short, _ = prompt_and_reference(tok, norm, "rag", budget=len(ids) - 10)
    assert short == fit_prompt(tok, QUESTION, passages, len(ids) - 10).ids and len(short) == len(ids) - 10


def test_loss_is_on_the_answer_only(tok):
    data = encode_records(tok, [rag_record()], "rag", max_length=512, train_on_prompt=False, source="x")
    assert trained_text(tok, data.examples[0]) == ["Green.<|im_end|>\n"]
    assert data.truncated == 0 and data.dropped == 0
    every = encode_records(tok, [rag_record()], "rag", max_length=512, train_on_prompt=True, source="x")
    assert every.examples[0].n_labels == len(every.examples[0].ids) - 1


def test_training_cuts_passages_not_the_answer_and_drops_what_cannot_fit(tok):
    whole = len(fit_prompt(tok, QUESTION, normalise(rag_record(), "rag", 0, "x").rag.passages, None,
                           "Green.").ids)
    data = encode_records(tok, [rag_record()], "rag", max_length=whole - 20, train_on_prompt=False, source="x")
    ex = data.examples[0]
    assert data.truncated == 1 and len(ex.ids) == whole - 20
    assert trained_text(tok, ex) == ["Green.<|im_end|>\n"]
    assert "Zorb has two moons" not in tok.decode(ex.ids) or "Ix and Ox." not in tok.decode(ex.ids)
    tiny = encode_records(tok, [rag_record()], "rag", max_length=50, train_on_prompt=False, source="x")
    assert tiny.examples == [] and tiny.dropped == 1


@pytest.mark.parametrize("change, message", [
    ({"passages": None}, "record 2: field 'passages' is a NoneType, not a list; format rag needs a list"),
    ({"passages": "one text"}, "record 2: field 'passages' is a str, not a list"),
    ({"passages": ["ok", {"id": "p"}]}, "record 2, passage 2: expected a non-empty string or"),
    ({"passages": ["  "]}, "record 2, passage 1: expected a non-empty string"),
    ({"passages": [{"id": True, "text": "t"}]}, "record 2, passage 1: expected"),
    ({"question": ""}, "record 2: field 'question' is not a non-empty string"),
    ({"answer": 3}, "record 2: field 'answer' is not a non-empty string (3); format rag needs it"),
])
def test_bad_rag_records_name_file_record_and_field(tok, tmp_path, change, message):
    from tunelab.data.sources import load_records

    bad = {k: v for k, v in rag_record(**change).items()}
    path = write_jsonl(tmp_path / "rag.jsonl", [rag_record(), bad])
    records = load_records(str(path))
    with pytest.raises(DataError) as e:
        encode_records(tok, records, "rag", max_length=512, train_on_prompt=False, source=str(path))
    assert message in str(e.value) and str(e.value).startswith(f"{path}:2: ")


def test_a_missing_answer_is_an_error_for_training_only(tok):
    rec = rag_record()
    del rec["answer"]
    with pytest.raises(DataError, match="record 1: field 'answer' is missing"):
        normalise(rec, "rag", 0, "x")
    assert normalise(rec, "rag", 0, "x", need_answer=False).rag.answer is None


def test_data_preview_shows_rag_records(tiny_dir, tmp_path):
    from tunelab.config import config_from_dict
    from tunelab.tasks.causal_lm import preview

    path = write_jsonl(tmp_path / "rag.jsonl", [rag_record(answer=f"Green {i}.") for i in range(10)])
    cfg = config_from_dict({"task": "causal_lm", "model": {"name": str(tiny_dir), "max_length": 512},
                            "data": {"train": str(path)}})
    out = preview(cfg, n=1)
    assert "records look like 'rag'" in out and "format rag" in out
    assert "[1] (id: zorb#0)" in out and "[[Green" in out and out.count("[[") == 2  # the legend and the answer
