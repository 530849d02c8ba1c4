"""`tunelab ask`: retrieve from an index, answer with a causal LM from the rag prompt (a model folder, a
causal_lm run trained on the rag format), --input/--output with EM/F1, the --context form's printing, and
every user mistake as one line with exit code 2.

Tiny models: a random 2-layer Llama with a character tokenizer (greedy output pinned) and an index built with
the index API on the tiny_bert encoder. One integration test asks the real SmolLM2 over a MiniLM index.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "causal"))  # the tiny Llama of the causal-LM tests

from causal_tiny import write_tiny_model  # noqa: E402
from tunelab.cli import main  # noqa: E402

QUIET = lambda *a, **k: None  # noqa: E731
# Documents in tiny_bert's vocabulary (written here), one passage each.
DOCS = [{"id": "food", "text": "the soup and bread taste very new today"},
        {"id": "sport", "text": "the team player will score a goal this match"},
        {"id": "tech", "text": "the robot runs new software on a chip"},
        {"id": "music", "text": "some music about a guitar today"}]
QUESTION = "which team will score a goal"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("ask-llama"))


@pytest.fixture(scope="module")
def tiny_index(tiny_bert, tmp_path_factory) -> Path:
    from tunelab.retrieval.embed import load_encoder
    from tunelab.retrieval.index import build_index

    base = tmp_path_factory.mktemp("ask-index")
    build_index(write_jsonl(base / "docs.jsonl", DOCS), base / "index", load_encoder(str(tiny_bert)),
                chunk_size=16, overlap=4, desc=None)
    return base / "index"


def ask(capsys, *argv) -> tuple[int, list[str], str]:
    code = main(["ask", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_answer_then_the_passages_its_prompt_held(tiny_llama, tiny_index, capsys):
    code, lines, err = ask(capsys, tiny_llama, "--index", tiny_index, "--question", QUESTION, "-k", 2,
                           "generate.max_new_tokens=6")
    assert code == 0, err
    assert lines == ["7nTc:", "passages: [1] sport#0 (score 0.948), [2] tech#0 (score 0.932)"]
    assert "s per question" in err


def test_the_prompt_is_the_rag_builders_and_fits_the_context(tiny_llama, tiny_index):
    """answer_questions generates from exactly fit_prompt's ids over the index's top-k hits."""
    from tunelab.generation import generate_texts, settings_kwargs
    from tunelab.retrieval.index import load_index
    from tunelab.retrieval.rag import answer_questions, fit_prompt, load_generator, passages_of_hits

    gen = load_generator(str(tiny_llama), ["generate.max_new_tokens=6"], max_length=340)
    assert (gen.context, gen.budget) == (340, 334)
    index = load_index(tiny_index)
    answer = answer_questions(gen, index, [QUESTION], k=3)[0]
    hits = index.query([QUESTION], 3)[0]
    fitted = fit_prompt(gen.tokenizer, QUESTION, passages_of_hits(hits), 334)
    assert len(fitted.ids) == 334 and fitted.dropped == 1  # the third passage left out, the second cut
    assert [p.id for p in answer.passages] == ["sport#0", "tech#0"] and answer.passages[1].cut
    kwargs = settings_kwargs(gen.tokenizer, gen.model, gen.gen)
    assert answer.text == generate_texts(gen.model, gen.tokenizer, [fitted.ids], kwargs)[0]
    assert load_generator(str(tiny_llama), []).context == 512  # a bare model: its positions


def test_a_question_that_cannot_fit_is_one_line(tiny_llama, tiny_index, capsys):
    code, _, err = ask(capsys, tiny_llama, "--index", tiny_index, "--question", QUESTION, "--max-length", 242,
                       "generate.max_new_tokens=6")  # 236 prompt tokens left; the question alone takes 237
    assert code == 2
    assert err.strip() == ("error: ask: the question 'which team will score a goal' takes 237 prompt tokens "
                           "without any passage, but only 236 are left (--max-length 242 minus "
                           "generate.max_new_tokens 6); shorten the question, lower generate.max_new_tokens or "
                           "raise --max-length")


def test_a_file_of_questions_gives_answers_and_em_f1(tiny_llama, tiny_index, tmp_path, capsys):
    records = [{"id": 1, "question": QUESTION, "answers": "7nTc:"},  # the pinned greedy answer: EM 1
               {"id": 2, "question": "what soup to cook", "answers": ["soup", "bread"]},
               {"id": 3, "question": "a robot chip", "answers": {"text": ["chip"], "answer_start": [0]}},
               {"id": 4, "question": "some guitar music"}]  # no gold: answered, not scored
    source = write_jsonl(tmp_path / "q.jsonl", records)
    out = tmp_path / "a.jsonl"
    code, lines, err = ask(capsys, tiny_llama, "--index", tiny_index, "--input", source, "--output", out, "-k", 2,
                           "generate.max_new_tokens=6")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4] and rows[0]["answer"] == "7nTc:"
    assert rows[0]["passages"] == [{"id": "sport#0", "doc_id": "sport", "score": pytest.approx(0.948, abs=1e-3),
                                    "cut": False},
                                   {"id": "tech#0", "doc_id": "tech", "score": pytest.approx(0.932, abs=1e-3),
                                    "cut": False}]
    metrics = json.loads((tmp_path / "a.metrics.json").read_text())
    from tunelab.evaluate.qa_metrics import qa_metrics

    expected = qa_metrics([r["answer"] for r in rows[:3]], [["7nTc:"], ["soup", "bread"], ["chip"]])
    assert metrics["n"] == 3 and metrics["exact_match"] == pytest.approx(1 / 3) and metrics["k"] == 2
    assert {k: metrics[k] for k in expected} == expected
    assert lines[0] == "4 answers written to " + str(out)
    assert lines[1].startswith("exact_match 0.333  f1 ") and "(n=3 with gold answers;" in lines[1]
    assert lines[2] == f"metrics written to {tmp_path / 'a.metrics.json'}"


def test_a_refusal_scores_as_no_answer_and_the_rag_answer_field_is_read(tiny_llama, tiny_index, tmp_path,
                                                                         capsys):
    from tunelab.retrieval.rag import scored_answer

    assert scored_answer("The passages do not contain the answer.") == ""
    assert scored_answer("They don't contain it") == "" and scored_answer("Paris") == "Paris"
    # rag training records hold `answer`; an empty list is a question whose passages hold no answer
    records = [{"question": QUESTION, "answer": "7nTc:"}, {"question": "what soup to cook", "answer": []}]
    source = write_jsonl(tmp_path / "q.jsonl", records)
    code, lines, err = ask(capsys, tiny_llama, "--index", tiny_index, "--input", source, "--output",
                           tmp_path / "a.jsonl", "-k", 2, "generate.max_new_tokens=6")
    assert code == 0, err
    metrics = json.loads((tmp_path / "a.metrics.json").read_text())
    assert (metrics["n"], metrics["has_answer_n"], metrics["no_answer_n"]) == (2, 1, 1)
    assert metrics["has_answer_exact_match"] == 1.0
    assert "; has_answer 1.000 / 1.000 (n=1); no_answer " in lines[1]


@pytest.fixture(scope="module")
def rag_run(tiny_llama, tmp_path_factory) -> Path:
    """A causal_lm run of the tiny Llama trained 2 steps on rag records (with LoRA: the adapter path)."""
    from tunelab.config import config_from_dict
    from tunelab.run import train

    base = tmp_path_factory.mktemp("ask-run")
    records = [{"question": f"which {w} is new", "passages": [{"id": f"d{i}", "text": f"the {w} is new"}, "today"],
                "answer": w} for i, w in enumerate(["soup", "goal", "chip", "robot", "bread", "team"] * 2)]
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(tiny_llama), "max_length": 320},
        "data": {"train": str(write_jsonl(base / "rag.jsonl", records))}, "method": {"name": "lora"},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "precision": "fp32"},
        "generate": {"max_new_tokens": 5, "samples_in_eval": 1}, "output_dir": str(base / "run")})
    return train(cfg, show_progress=False, log=QUIET)


def test_a_rag_trained_lora_run_answers_within_its_max_length(rag_run, tiny_index, capsys):
    assert json.loads((rag_run / "data_format.json").read_text())["format"] == "rag"
    from tunelab.retrieval.rag import load_generator

    gen = load_generator(str(rag_run), [])
    assert (gen.context, gen.gen.max_new_tokens, gen.budget) == (320, 5, 315)
    assert gen.context_from == "the run's model.max_length 320"
    code, lines, err = ask(capsys, rag_run, "--index", tiny_index, "--question", QUESTION, "-k", 3)
    assert code == 0, err
    assert lines[1] == "passages: [1] sport#0 (score 0.948), [2] tech#0 (score 0.932, cut to fit); 1 left out to fit"
    assert lines[0] == "7nTc"


@pytest.fixture(scope="module")
def extractive_run(tmp_path_factory) -> Path:
    """An extractive_qa run of 4 steps on the extractive tests' synthetic reading task (tiny word-level BERT)."""
    sys.path.insert(0, str(Path(__file__).parent / "extractive"))
    from extractive_helpers import qa_config, reading_records, write_tiny_bert
    from tunelab.run import train

    base = tmp_path_factory.mktemp("ask-qa")
    cfg = qa_config(write_tiny_bert(base / "bert"), write_jsonl(base / "qa.jsonl", reading_records(60)),
                    base / "run", **{"qa.no_answer_threshold": 1000.0})  # always answer: a span to print
    return train(cfg, show_progress=False, log=QUIET)


def test_context_form_prints_answer_score_and_span(extractive_run, tmp_path, capsys):
    """--context hands the file's text to the extractive_qa run's `ask` verb and prints each row."""
    from tunelab.runs import task_verb

    text = tmp_path / "ctx.txt"
    context = "the red fox sits here and the cat waits"
    text.write_text(context + "\n", encoding="utf-8")
    questions = ["which colour is there ?", "which animal is there ?"]
    code, lines, err = ask(capsys, extractive_run, "--context", text, *[a for q in questions
                                                                      for a in ("--question", q)])
    assert code == 0, err
    rows = task_verb(extractive_run, "ask")(extractive_run, context + "\n", questions, [])
    assert lines == [line for row in rows for line in
                     (f"Q: {row['question']}", f"{row['answer']}  (score {row['score']:.3f}, characters "
                                               f"{row['start']}-{row['end']})")]
    assert all(row["answer"] == context[row["start"]:row["end"]] for row in rows)
    code, lines, err = ask(capsys, extractive_run, "--context", text, "--question", "q",
                           "qa.no_answer_threshold=-1000000000")
    assert code == 0 and lines[0].startswith("no answer  (score ")


@pytest.mark.parametrize("argv, message", [
    (["--question", "q"], "ask: give either --index INDEX"),
    (["--index", "IDX", "--context", "c.txt", "--question", "q"], "or --context FILE (pick the answer out of "
                                                                   "FILE with an extractive_qa run), not both"),
    (["--index", "IDX"], "ask --index: give --question \"...\" (repeatable) or --input FILE"),
    (["--index", "IDX", "--question", "q", "--input", "Q"], "ask --index: give --question"),
    (["--index", "IDX", "--question", "q", "--output", "out.jsonl"], "ask --output: goes with --input FILE"),
    (["--index", "IDX", "--input", "Q", "--output", "Q"], "ask --output: {Q} is the input file"),
    (["--index", "IDX", "--input", "Q", "--output", "OUTDIR"], "ask --output: {OUTDIR} is a folder; give a file"),
    (["--index", "IDX", "--question", "q", "-k", "0"], "ask -k: got 0; retrieve at least 1 passage"),
    (["--index", "NOINDEX", "--question", "q"], "index {NOINDEX} does not exist; build one with `tunelab index"),
    (["--index", "IDX", "--input", "BADQ"], "{BADQ}:2: record 2: field 'question' is missing; set "
                                            "--question-field"),
    (["--index", "IDX", "--input", "BADGOLD"], "{BADGOLD}:1: record 1: field 'answers' must be a string, a list "
                                               "of strings or {{\"text\": [...]}}"),
    (["--index", "IDX", "--question", "q", "--max-length", "9999"], "ask --max-length: got 9999; the model reads "
                                                                     "1 to 512 tokens"),
    (["--context", "c.txt", "--question", "q"], "is a causal_lm run; --index answers with a causal_lm run or a "
                                                "model reference, --context with an extractive_qa run: use "
                                                "--index INDEX for this run"),

    (["--index", "IDX", "--question", "q", "EXTRACTIVE"], "is an extractive_qa run; --index answers with a "
                                                          "causal_lm run or a model reference, --context with an "
                                                          "extractive_qa run: use --context FILE for this run"),
])
def test_mistakes_are_one_line_and_exit_2(tiny_llama, rag_run, extractive_run, tiny_index, tmp_path, capsys, argv,
                                         message):
    files = {"IDX": str(tiny_index), "NOINDEX": str(tmp_path / "none"), "Q": str(tmp_path / "q.jsonl"),
             "OUTDIR": str(tmp_path), "BADQ": str(tmp_path / "badq.jsonl"), "BADGOLD": str(tmp_path / "bg.jsonl")}
    write_jsonl(tmp_path / "q.jsonl", [{"question": QUESTION}])
    write_jsonl(tmp_path / "badq.jsonl", [{"question": QUESTION}, {"query": "x"}])
    write_jsonl(tmp_path / "bg.jsonl", [{"question": QUESTION, "answers": 3}])
    ref = rag_run if "--context" in argv and "--index" not in argv else tiny_llama
    if "EXTRACTIVE" in argv:
        ref, argv = extractive_run, [a for a in argv if a != "EXTRACTIVE"]
    code, _, err = ask(capsys, ref, *[files.get(a, a) for a in argv], "generate.max_new_tokens=4")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert message.format(**files) in err, err


@pytest.mark.integration
def test_smollm2_answers_a_made_up_fact_from_a_minilm_index(tmp_path, capsys):
    """The real models: MiniLM finds the one passage stating an invented fact, SmolLM2 answers from it."""
    from tunelab.retrieval.index import build_index

    docs = [{"id": "bridge", "text": "The Vellmar Bridge in Oskarsby was painted bright orange in 1987 by the "
                                     "engineer Tilda Brenn, who also designed its lamps."},
            {"id": "bakery", "text": "The oldest bakery in Oskarsby sells rye bread with caraway every morning."},
            {"id": "river", "text": "The river Oska floods the lower town of Oskarsby almost every spring."},
            {"id": "school", "text": "Oskarsby's music school teaches violin and piano to about 200 children."}]
    build_index(write_jsonl(tmp_path / "docs.jsonl", docs), tmp_path / "index", desc=None)
    code, lines, err = ask(capsys, "builtin:smollm2-135m-instruct", "--index", tmp_path / "index", "--question",
                           "Who painted the Vellmar Bridge orange?", "-k", 2, "generate.max_new_tokens=40")
    assert code == 0, err
    print(lines)
    assert "Tilda Brenn" in lines[0]
    assert lines[1].startswith("passages: [1] bridge#0 (score ")
