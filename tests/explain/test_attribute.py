"""Attributions of encoder runs (tunelab.explain.attribute) on tiny models: IG's completeness, a keyword task
where every method must find the keyword, words merged from sub-tokens, targets, seeds, QA spans and NER
entities."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.explain import Span
from tunelab.explain.attribute import (ENCODER_METHODS, classification_target, encode, explain_text,
                                       target_probability)
from tunelab.explain.words import merge_words, word_groups

KEYWORD = "zebra"
FILLER = ["the", "a", "today", "news", "report", "about", "some", "new", "very", "this", "cat", "dog", "river",
          "hill"]
PIECES = ["un", "##bel", "##ie", "##va", "##bly"]  # "unbelievably" = un ##bel ##ie ##va ##bly
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(FILLER + [KEYWORD, ",", "."] + PIECES)


@pytest.fixture(scope="module")
def keyword_run(tmp_path_factory, helpers):
    """A tiny BERT classifier trained (150 steps, seed 0) to say "a" exactly when the keyword is there."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from tunelab.runs import load_run

    folder = tmp_path_factory.mktemp("keyword-bert")
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    data = helpers.write_jsonl(folder / "train.jsonl", helpers.keyword_records(160, 0, KEYWORD, FILLER, ("a", "b")))
    cfg = helpers.tiny_config(folder, data, tmp_path_factory.mktemp("keyword-run") / "run",
                              {"train.max_steps": 150, "train.lr": 5e-3, "train.precision": "fp32",
                               "train.eval_every": None})
    return load_run(helpers.train_quietly(cfg))


SENTENCES = ["zebra the news today cat dog river hill",  # the keyword first, in the middle, last
             "the news today cat zebra dog river hill",
             "a very new report about this river zebra"]


def baseline_value(run, text: str, label: str) -> float:
    """F(baseline): the label's probability with every non-special token replaced by [PAD]."""
    enc = encode(run, text)
    target = classification_target(run, enc, label)
    ids = torch.tensor([[i if s else run.tokenizer.pad_token_id for i, s in zip(enc.ids, enc.special)]])
    with torch.no_grad():
        return float(target.scalar(ids)[0])


# ---------------------------------------------------------------------------------------------
# Integrated gradients: completeness


def test_ig_completeness_on_a_random_tiny_bert(make_config, helpers):
    """sum(scores) = F(x) - F(baseline) + delta exactly (delta is captum's), and delta is small on a smooth model."""
    from tunelab.runs import load_run

    run = load_run(helpers.train_quietly(make_config({"train.precision": "fp32"})))
    text = "goal computer bread the news"
    e = explain_text(run, text, "ig", steps=50)
    gap = e.probability - baseline_value(run, text, e.target)
    total = sum(t.score for t in e.tokens)
    assert total == pytest.approx(gap + e.delta, abs=1e-6)
    assert abs(e.delta) < 1e-4 * abs(gap) + 1e-7
    assert sum(w.score for w in e.words) == pytest.approx(total, abs=1e-6)
    assert e.settings == {"method": "ig", "steps": 50, "baseline": "the pad token in place of every attributed "
                          "token; special tokens unchanged, attention mask unchanged"}


def test_ig_delta_shrinks_with_steps_on_a_sharp_model(keyword_run):
    """The trained keyword model flips within a tenth of the IG path: 50 steps miss most of it (and say so in
    delta), 1000 steps recover the gap."""
    text = SENTENCES[0]
    gap = 0.0
    deltas = {}
    for steps in (50, 1000):
        e = explain_text(keyword_run, text, "ig", steps=steps)
        gap = e.probability - baseline_value(keyword_run, text, e.target)
        assert sum(t.score for t in e.tokens) == pytest.approx(gap + e.delta, abs=1e-5)
        deltas[steps] = e.delta
    assert gap > 0.8
    assert abs(deltas[50]) > 0.5 * gap
    assert abs(deltas[1000]) < 0.01 * gap


# ---------------------------------------------------------------------------------------------
# The keyword task: every method puts the keyword first


@pytest.mark.parametrize("method", ENCODER_METHODS)
def test_every_method_finds_the_keyword(keyword_run, method):
    before = {k: v.clone() for k, v in keyword_run.model.state_dict().items()}
    for text in SENTENCES:
        e = explain_text(keyword_run, text, method, samples=100)
        assert e.prediction == e.target == "a"
        assert e.probability > 0.9
        assert [w.text for w in e.words] == text.split()
        top = max(e.words, key=lambda w: w.score)
        assert top.text == KEYWORD, (method, text, [(w.text, round(w.score, 3)) for w in e.words])
        others = [w.score for w in e.words if w.text != KEYWORD]
        assert top.score - max(others) > 0.25 * top.score  # occlusion's neighbours share 2/3 of its windows
    assert all(torch.equal(before[k], v) for k, v in keyword_run.model.state_dict().items())


def test_pinned_scores_of_the_keyword_run(keyword_run):
    """Seed 0, fp32: the numbers of one sentence, and the structure behind them."""
    text = SENTENCES[0]  # keyword first
    gap = explain_text(keyword_run, text, "ig").probability - baseline_value(keyword_run, text, "a")
    ig = explain_text(keyword_run, text, "ig")
    assert ig.probability == pytest.approx(0.9290, abs=2e-3)
    assert gap == pytest.approx(0.8624, abs=2e-3)
    assert ig.delta == pytest.approx(-0.824, abs=0.01)  # 50 steps on a sharp model: see the test above
    # occlusion, window 3: the keyword is in 1 of the first word's windows, 1 of 2 of the second's, 1 of 3 of
    # the third's (the windows that slide off the row's start are not taken), and the whole gap is its own
    occ = [w.score for w in explain_text(keyword_run, text, "occlusion").words]
    assert occ[:3] == pytest.approx([gap, gap / 2, gap / 3], abs=2e-3)
    assert max(abs(x) for x in occ[3:]) < 1e-3
    # Kernel SHAP values add up to F(x) - F(all words absent), here all on the keyword
    shap = [w.score for w in explain_text(keyword_run, text, "shap", samples=100).words]
    assert sum(shap) == pytest.approx(gap, abs=1e-3)
    assert shap[0] == pytest.approx(gap, abs=1e-2)
    lime = [w.score for w in explain_text(keyword_run, text, "lime", samples=100).words]
    assert lime[0] == pytest.approx(0.825, abs=0.01)


def test_without_the_keyword_nothing_stands_out(keyword_run):
    e = explain_text(keyword_run, "the news today cat dog river", "shap", samples=100)
    assert e.prediction == "b" and e.probability > 0.9
    assert max(abs(w.score) for w in e.words) < 0.05


@pytest.mark.parametrize("method", ["ig", "shap"])
def test_explaining_the_other_label_turns_the_keyword_against_it(keyword_run, method):
    text = SENTENCES[1]
    for_a = explain_text(keyword_run, text, method, samples=100)
    for_b = explain_text(keyword_run, text, method, target="b", samples=100)
    assert for_b.prediction == "a" and for_b.target == "b"
    assert for_b.probability == pytest.approx(1 - for_a.probability, abs=1e-6)
    keyword_b = next(w.score for w in for_b.words if w.text == KEYWORD)
    assert keyword_b < -0.1
    assert min(for_b.words, key=lambda w: w.score).text == KEYWORD
    # two classes: what raises one lowers the other by as much
    for a, b in zip(for_a.words, for_b.words):
        assert b.score == pytest.approx(-a.score, abs=0.02)


def test_an_unknown_target_label_names_the_labels(keyword_run):
    with pytest.raises(TunelabError, match=r"--target: 'c' is not a label of this run; its labels are: a, b"):
        explain_text(keyword_run, SENTENCES[0], "ig", target="c")


def test_an_unknown_method_is_refused(keyword_run):
    with pytest.raises(TunelabError, match=r"--method: 'gradcam' is not one of ig, occlusion, lime, shap"):
        explain_text(keyword_run, SENTENCES[0], "gradcam")


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_sampling_methods_repeat_with_the_same_seed(keyword_run, method):
    text = "unbelievably , the zebra news today"
    first, again, other = (explain_text(keyword_run, text, method, samples=60, seed=s) for s in (0, 0, 1))
    assert [t.score for t in first.tokens] == [t.score for t in again.tokens]
    assert [t.score for t in first.tokens] != [t.score for t in other.tokens]
    assert first.settings["seed"] == 0 and first.settings["samples"] == 60


def test_occlusion_window_spreads_a_drop_over_its_neighbours(keyword_run):
    """Window 3 (stride 1): the keyword's neighbours share the windows that cover it: 2/3 of its drop."""
    text = SENTENCES[1]  # keyword at word 4 of 8, away from both ends
    e = explain_text(keyword_run, text, "occlusion", window=3)
    scores = {w.text: w.score for w in e.words}
    drop = scores[KEYWORD]
    assert scores["cat"] == pytest.approx(2 / 3 * drop, rel=0.02)
    assert scores["dog"] == pytest.approx(2 / 3 * drop, rel=0.02)
    one = explain_text(keyword_run, text, "occlusion", window=1)
    assert [w.text for w in one.words if abs(w.score) > 0.01] == [KEYWORD]
    assert e.settings["window"] == 3


# ---------------------------------------------------------------------------------------------
# Words from sub-tokens


def test_a_word_of_several_pieces_is_one_word_with_the_summed_score(keyword_run):
    text = "Unbelievably, the ZEBRA  news."
    enc = encode(keyword_run, text)
    assert enc.tokens == ["[CLS]", "un", "##bel", "##ie", "##va", "##bly", ",", "the", "zebra", "news", ".",
                          "[SEP]"]
    assert enc.special == [True] + [False] * 10 + [True]
    e = explain_text(keyword_run, text, "ig")
    assert [t.text for t in e.tokens] == ["Un", "bel", "ie", "va", "bly", ",", "the", "ZEBRA", "news", "."]
    assert [(w.text, w.start, w.end) for w in e.words] == [("Unbelievably,", 0, 13), ("the", 14, 17),
                                                          ("ZEBRA", 18, 23), ("news.", 25, 30)]
    assert all(text[w.start:w.end] == w.text for w in e.words + e.tokens)
    assert e.words[0].score == pytest.approx(sum(t.score for t in e.tokens[:6]), abs=1e-9)
    assert max(e.words, key=lambda w: w.score).text == "ZEBRA"


def test_a_text_longer_than_a_row_says_where_it_was_cut(keyword_run):
    text = " ".join(["the news"] * 10) + " zebra"  # 21 words; model.max_length is 16: 14 are read
    e = explain_text(keyword_run, text, "occlusion")
    assert len(e.words) == 14 and e.settings["truncated_at"] == e.words[-1].end == 62
    assert "truncated_at" not in explain_text(keyword_run, SENTENCES[0], "occlusion").settings


def test_lime_gives_a_word_one_coefficient_shared_by_its_pieces(keyword_run):
    e = explain_text(keyword_run, "unbelievably the zebra news", "lime", samples=80)
    pieces = e.tokens[:5]
    assert len({round(t.score, 12) for t in pieces}) == 1
    assert e.words[0].text == "unbelievably"
    assert e.words[0].score == pytest.approx(5 * pieces[0].score)


def test_word_groups_follow_white_space_only():
    # "ab cd,e  f": ab | cd , e | f  (touching pieces join, any gap separates, overlaps join)
    assert word_groups([(0, 1), (1, 2), (3, 5), (5, 6), (6, 7), (9, 10)]) == [0, 0, 1, 1, 1, 2]
    assert word_groups([(0, 4), (2, 4), (5, 6)]) == [0, 0, 1]
    assert word_groups([]) == []
    text = "ab cd,e  f"
    spans = [Span(text[a:b], a, b, s) for (a, b), s in zip([(0, 1), (1, 2), (3, 5), (5, 6), (6, 7), (9, 10)],
                                                           [1.0, 2.0, 0.5, -1.0, 0.25, 3.0])]
    words = merge_words(text, spans)
    assert [(w.text, w.start, w.end, w.score) for w in words] == [("ab", 0, 2, 3.0), ("cd,e", 3, 7, -0.25),
                                                                  ("f", 9, 10, 3.0)]


def test_white_space_tokens_join_the_next_word():
    """A byte-level BPE gives spaces tokens of their own; trimmed, their spans are empty."""
    text = "the  goal"
    offsets = [(0, 3), (3, 3), (4, 4), (5, 9), (9, 9)]  # the, " ", " ", goal, a trailing space
    assert word_groups(offsets) == [0, 1, 1, 1, 1]
    words = merge_words(text, [Span(text[a:b], a, b, 1.0) for a, b in offsets])
    assert [(w.text, w.start, w.end, w.score) for w in words] == [("the", 0, 3, 1.0), ("goal", 5, 9, 4.0)]
    assert word_groups([(2, 2)]) == [0]


def test_offsets_skip_the_leading_space_of_byte_level_tokens():
    from tunelab.explain.attribute import _trim

    assert _trim("hi  there ", 2, 9) == (4, 9)
    assert _trim("   ", 0, 3) == (3, 3)


# ---------------------------------------------------------------------------------------------
# Probabilities for the deletion curves; tasks explain_text cannot take


def test_target_probability_pads_rows_of_any_length(keyword_run):
    rows = [encode(keyword_run, t).ids for t in SENTENCES + ["zebra", "the cat"]]
    batched = target_probability(keyword_run, rows, "a", batch_size=3)
    alone = [target_probability(keyword_run, [r], "a")[0] for r in rows]
    assert batched == pytest.approx(alone, abs=1e-6)
    e = explain_text(keyword_run, SENTENCES[2], "occlusion")
    assert batched[2] == pytest.approx(e.probability, abs=1e-6)
    assert batched[3] > 0.9 and batched[4] < 0.1
    with pytest.raises(TunelabError, match="its labels are: a, b"):
        target_probability(keyword_run, rows, "zebra")


def test_other_tasks_are_refused_with_where_to_go():
    run = SimpleNamespace(task=SimpleNamespace(name="causal_lm"), dir="runs/chat")
    with pytest.raises(TunelabError, match=r"explain works on classification, extractive_qa, token_classification "
                                           r"runs; runs/chat is a causal_lm run; .*--method ablation or ig "
                                           r"\(tunelab.explain.generative\)"):
        explain_text(run, "hello", "ig")
    with pytest.raises(TunelabError, match="deletion curves work on classification runs; runs/chat is a "
                                           "causal_lm run"):
        target_probability(run, [[1, 2]], "a")


# ---------------------------------------------------------------------------------------------
# Extractive QA and NER on tiny trained runs


@pytest.fixture(scope="module")
def qa_run(qa_run_dir):
    """The tiny QA run (tests/explain/conftest.py), loaded with a threshold that always answers."""
    from tunelab.runs import load_run

    return load_run(qa_run_dir, ["qa.no_answer_threshold=1000"])


QUESTION, CONTEXT = "which colour is there ?", "the old house near the red tree was big"


def test_qa_explains_the_predicted_span_over_the_context_words(qa_run):
    [predicted] = qa_run.task.predict(qa_run, [{"question": QUESTION, "context": CONTEXT}], "", print)
    for method in ENCODER_METHODS:
        e = explain_text(qa_run, QUESTION, method, context=CONTEXT, samples=60)
        assert e.text == CONTEXT
        assert [w.text for w in e.words] == CONTEXT.split()
        assert e.target == {"text": predicted["answer"], "start": predicted["start"], "end": predicted["end"]}
        assert e.prediction == {k: predicted[k] for k in ("answer", "start", "end")}
    assert e.target["text"] == "red"
    # the explained scalar is log P(start) + log P(end): its exp is the product of the two softmaxes
    enc = encode(qa_run, QUESTION, CONTEXT)
    with torch.no_grad():
        out = qa_run.model(input_ids=torch.tensor([enc.ids]), token_type_ids=torch.tensor([enc.type_ids]))
    at = enc.offsets.index((23, 26))  # "red"
    expected = float(torch.softmax(out.start_logits, -1)[0, at] * torch.softmax(out.end_logits, -1)[0, at])
    assert e.probability == pytest.approx(expected, rel=1e-5)
    assert enc.part.count(0) == len(QUESTION.split()) and enc.part.count(1) == len(CONTEXT.split())


def test_qa_ig_completeness_and_a_chosen_answer(qa_run):
    e = explain_text(qa_run, QUESTION, "ig", context=CONTEXT, steps=100)
    assert abs(e.delta) < 0.05
    other = explain_text(qa_run, QUESTION, "ig", target="tree", context=CONTEXT)
    assert other.target == {"text": "tree", "start": 27, "end": 31}
    assert other.probability < e.probability
    with pytest.raises(TunelabError, match="'giraffe' does not occur in the part of the context"):
        explain_text(qa_run, QUESTION, "ig", target="giraffe", context=CONTEXT)
    with pytest.raises(TunelabError, match="give the passage as the context"):
        explain_text(qa_run, QUESTION, "ig")


@pytest.fixture(scope="module")
def ner_run(ner_run_dir):
    from tunelab.runs import load_run

    return load_run(ner_run_dir)


SENTENCE = "yesterday anna flew to paris with omar"


def test_ner_explains_a_predicted_entity_over_the_sentence_words(ner_run):
    [predicted] = ner_run.task.predict(ner_run, [{"text": SENTENCE}], "", print)
    assert [e["text"] for e in predicted["entities"]] == ["anna", "paris", "omar"]
    for method in ENCODER_METHODS:
        # window 1: with 3, "yesterday" (first word) is covered only by the window that also covers "anna"
        e = explain_text(ner_run, SENTENCE, method, samples=60, window=1)
        assert e.prediction == predicted["entities"] and e.target == predicted["entities"][0]
        assert [w.text for w in e.words] == SENTENCE.split()
        assert max(e.words, key=lambda w: w.score).text == "anna", method
    paris = explain_text(ner_run, SENTENCE, "ig", target="paris")
    assert paris.target["label"] == "LOC"
    assert max(paris.words, key=lambda w: w.score).text == "paris"
    assert explain_text(ner_run, SENTENCE, "occlusion", target=2).target["text"] == "omar"
    assert paris.probability == pytest.approx(predicted["entities"][1]["score"], abs=1e-3)
    with pytest.raises(TunelabError, match=r"'berlin' is neither .* the entities are 0: 'anna' \(PER\)"):
        explain_text(ner_run, SENTENCE, "ig", target="berlin")


def test_qa_rows_are_the_tasks_first_window(qa_run):
    """The row explained is the one the QA task reads: [CLS] question [SEP] context [SEP], built by the task's
    own helper (a tokenizer's pair template may differ), the question cut to max_length // 2 tokens."""
    from tunelab.tasks.extractive_qa import build_windows

    record = {"question": QUESTION, "context": CONTEXT, "answers": []}
    split = build_windows([record], "", qa_run.tokenizer, 32, None, True)
    enc = encode(qa_run, QUESTION, CONTEXT)
    assert enc.ids == split.windows[0].ids and enc.type_ids == split.windows[0].types
    # a question longer than the row: cut to 16 tokens as in training, the context fills the rest
    long_question = " ".join(["which colour is there"] * 10)  # 40 tokens, over max_length 32 alone
    long_context = f"{CONTEXT} {CONTEXT}"  # 18 tokens: 13 fit
    long = encode(qa_run, long_question, long_context)
    assert long.part.count(0) == 16 and len(long.ids) == 32 and long.part.count(1) == 32 - 16 - 3
    record = {"question": long_question, "context": long_context, "answers": []}
    assert long.ids == build_windows([record], "", qa_run.tokenizer, 32, None, True).windows[0].ids
    e = explain_text(qa_run, long_question, "occlusion", context=long_context)
    assert e.text == long_context and len(e.words) == 13 and e.settings["truncated_at"] == e.words[-1].end


def test_a_context_is_refused_where_the_task_reads_none(keyword_run, ner_run):
    for run, name in ((keyword_run, "classification"), (ner_run, "token_classification")):
        with pytest.raises(TunelabError, match=rf"--context: only an extractive QA run reads a passage .* is a "
                                               rf"{name} run: drop --context"):
            explain_text(run, SENTENCES[0], "ig", context="anything")


def test_ner_explains_the_tags_the_prediction_gave(ner_run, monkeypatch):
    """An unconstrained argmax may start an entity with I-X: the explained quantity is that tag's
    log-probability, not B-X's."""
    real = ner_run.task.predict

    def i_first(run, records, source, log):  # the real prediction with "anna" tagged I-PER
        rows = real(run, records, source, log)
        assert rows[0]["tags"][1] == "B-PER"
        rows[0]["tags"][1] = "I-PER"
        return rows

    monkeypatch.setattr(ner_run, "task", dataclasses.replace(ner_run.task, predict=i_first))
    e = explain_text(ner_run, SENTENCE, "occlusion", window=1)
    assert e.target["text"] == "anna"
    enc = encode(ner_run, SENTENCE)
    at = enc.offsets.index((10, 14))  # "anna"
    with torch.no_grad():
        log_probs = torch.log_softmax(ner_run.model(input_ids=torch.tensor([enc.ids])).logits.float(), -1)[0]
    labels = list(ner_run.meta["labels"])
    assert e.probability == pytest.approx(float(log_probs[at, labels.index("I-PER")].exp()), rel=1e-5)
    assert e.probability != pytest.approx(float(log_probs[at, labels.index("B-PER")].exp()), rel=1e-3)


def test_shap_on_one_word_gives_the_whole_difference(keyword_run):
    """One feature: its SHAP value is exactly F(x) - F(baseline) (captum's sampler cannot draw one feature)."""
    e = explain_text(keyword_run, "zebra", "shap")
    assert [w.text for w in e.words] == ["zebra"]
    assert e.words[0].score == pytest.approx(e.probability - baseline_value(keyword_run, "zebra", "a"), abs=1e-6)
    assert e.words[0].score > 0.5


@pytest.mark.parametrize("setting", ["steps", "window", "samples"])
def test_settings_below_one_are_refused(keyword_run, setting):
    with pytest.raises(TunelabError, match=rf"--{setting}: got 0; give a number of at least 1"):
        explain_text(keyword_run, SENTENCES[0], "ig", **{setting: 0})


# ---------------------------------------------------------------------------------------------
# Models that read pad ids: RoBERTa's positions, a decoder classifier's readout

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "goal", "news", "today", "cat", "dog"]


def tiny_run(model, tokenizer):
    from tunelab.runs import Run

    return Run(Path("tiny"), SimpleNamespace(model=SimpleNamespace(max_length=32)),
               SimpleNamespace(name="classification"), model.eval(), tokenizer, {"labels": ["a", "b"]})


def tiny_roberta_run():
    """A random 2-layer RoBERTa classifier (pad id 0) with a WordPiece tokenizer of TINY_VOCAB."""
    from transformers import BertTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=0, num_labels=2)
    return tiny_run(RobertaForSequenceClassification(config),
                    BertTokenizerFast(vocab={t: i for i, t in enumerate(TINY_VOCAB)}))


def tiny_gpt2_run():
    """A random 2-layer GPT-2 classifier (pad id 0; it reads the last non-pad token) with a word-level
    tokenizer that adds no special tokens, so the last word is the token it reads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TINY_VOCAB)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]",
                                        mask_token="[MASK]")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(TINY_VOCAB), n_embd=32, n_layer=2, n_head=2, n_positions=40,
                        pad_token_id=0, bos_token_id=2, eos_token_id=3, num_labels=2)
    return tiny_run(GPT2ForSequenceClassification(config), tokenizer)


@pytest.mark.parametrize("make", [tiny_roberta_run, tiny_gpt2_run])
def test_models_that_read_pad_ids_get_the_mask_token_and_ig_adds_up(make, monkeypatch):
    """With the pad token as baseline, F(baseline) is not the start of IG's path (RoBERTa's positions, GPT-2's
    readout move), so the delta stays large at any step count; with the mask token it vanishes."""
    from tunelab.explain import attribute

    run = make()
    assert attribute.reads_pad_ids(run.model)
    assert attribute.neutral_id(run) == (4, "the mask token '[MASK]' (the model reads pad ids)")
    text = "the goal news today cat dog"
    e = explain_text(run, text, "ig", steps=100)
    gap = sum(t.score for t in e.tokens) - e.delta  # F(x) - F(baseline)
    assert abs(e.delta) < 1e-2 * abs(gap)
    assert e.settings["baseline"].startswith("the mask token '[MASK]' (the model reads pad ids) in place of")
    monkeypatch.setattr(attribute, "neutral_id", lambda _: (0, "the pad token"))
    padded = explain_text(run, text, "ig", steps=100)
    assert abs(padded.delta) > 0.5 * abs(sum(t.score for t in padded.tokens) - padded.delta)


def test_a_bert_keeps_the_pad_token(keyword_run):
    from tunelab.explain.attribute import neutral_id, reads_pad_ids

    assert not reads_pad_ids(keyword_run.model)
    assert neutral_id(keyword_run) == (0, "the pad token")


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_a_tagging_row_is_the_tasks_first_window(kind):
    """A tagger was trained on pre-split words: a byte-level BPE then gives "anna", not the "Ġanna" of running
    text. The explained row is the task's own first window, offsets into the raw text, whole words only."""
    from tunelab.tasks.token_classification import build_windows
    from tunelab.tokenizer_train import build_tokenizer

    tok = build_tokenizer([SENTENCE] * 20 + ["anna paris omar flew"], 300 if kind == "bpe" else 60, kind=kind)
    text = "yesterday  anna flew to paris, with omar"
    words = ["yesterday", "anna", "flew", "to", "paris", ",", "with", "omar"]
    starts = [0, 11, 16, 21, 24, 29, 31, 36]  # each word's first character in `text`
    for max_length in (64, 8):
        run = SimpleNamespace(tokenizer=tok, task=SimpleNamespace(name="token_classification"),
                              cfg=SimpleNamespace(model=SimpleNamespace(max_length=max_length)))
        enc = encode(run, text)
        window = build_windows([{"tokens": words}], None, "", tok, max_length, None).windows[0]
        assert enc.ids == window.ids
        assert enc.special[0] and enc.special[-1] and not any(enc.special[1:-1])
        read = len(window.word_pos)  # 8 words, or as many whole words as fit in 6 pieces
        assert [enc.offsets[p][0] for p in window.word_pos] == starts[:read]
        ends = window.word_pos[1:] + [len(window.ids) - 1]
        for w, (first, stop) in enumerate(zip(window.word_pos, ends)):  # each piece inside its own word
            for a, b in enc.offsets[first:stop]:
                assert text[a:b] and text[a:b] in words[w] and a >= starts[w]
    shown = merge_words(text, [Span(text[a:b], a, b, 0.0) for (a, b), s in zip(enc.offsets, enc.special) if not s])
    assert read < 8 and [w.text for w in shown] == text.split()[:len(shown)]
