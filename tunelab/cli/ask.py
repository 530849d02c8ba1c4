"""`tunelab ask`: answer questions two ways. With --index, generatively: retrieve passages from a vector
index and have a causal LM (a run or a model reference) answer from them (tunelab.retrieval.rag). With
--context FILE, extractively: an extractive_qa run picks the answer span out of the file (its task's `ask`
verb). Thin: the work is done by tunelab.retrieval.rag and the run's task."""
from __future__ import annotations

import sys
import time
from pathlib import Path

EPILOG = """examples:
  tunelab ask builtin:smollm2-135m-instruct --index runs/bbc-index --question "Who bought the club?" -k 3
  tunelab ask runs/smollm2-rag --index runs/bbc-index --input questions.jsonl --output answers.jsonl
  tunelab ask runs/squad-minilm --context article.txt --question "Who founded it?" --question "When?"
--index: a causal_lm run (LoRA included) or a model reference answers from the retrieved passages, then the
ids and scores of the passages its prompt held are printed; --input records with gold `answers` (a string, a
list, or {"text": [...]}) give EM/F1, also written to OUTPUT's stem + .metrics.json.
--context: an extractive_qa run; prints each answer with its score and character span.
overrides: generate.* for --index (e.g. generate.max_new_tokens=48); the run's own settings for --context."""


def _form(args) -> str:
    """'index' or 'context', or one line saying how to call ask."""
    from tunelab.errors import TunelabError

    if bool(args.index) == bool(args.context):
        raise TunelabError("ask: give either --index INDEX (generate an answer from retrieved passages with a "
                           "causal_lm run or a model) or --context FILE (pick the answer out of FILE with an "
                           "extractive_qa run)" + (", not both" if args.index else ""))
    return "index" if args.index else "context"


def _check_run_fits(ref: str, form: str) -> None:
    """A run given to the wrong form: one line saying which form fits which run."""
    from tunelab.errors import TunelabError
    from tunelab.runs import is_run, run_task

    verb = "chat" if form == "index" else "ask"
    if form == "context" and not is_run(ref):
        raise TunelabError(f"ask --context: {ref} is not a finished run; --context FILE needs an extractive_qa "
                           "run (a model reference or causal_lm run answers with --index INDEX)")
    if is_run(ref) and verb not in run_task(ref).verbs:
        task = run_task(ref).name
        other = "--context FILE" if form == "index" else "--index INDEX"
        article = "an" if task[0] in "aeiou" else "a"
        raise TunelabError(f"ask --{form}: {ref} is {article} {task} run; --index answers with a causal_lm run or a "
                           f"model reference, --context with an extractive_qa run: use {other} for this run")


def cmd_ask(args) -> int:
    form = _form(args)
    _check_run_fits(args.run_dir, form)
    return _ask_index(args) if form == "index" else _ask_context(args)


# ---------------------------------------------------------------------------------------------
# --index: generative


def _questions(args) -> tuple[list[str], list[dict] | None]:
    """The questions (--question, or --input's question field) and the input records (None for --question)."""
    from tunelab.errors import DataError, TunelabError

    if bool(args.question) == bool(args.input):
        raise TunelabError("ask --index: give --question \"...\" (repeatable) or --input FILE of records with a "
                           f"{args.question_field!r} field")
    if args.question:
        return list(args.question), None
    from tunelab.data.sources import load_records

    records = load_records(args.input)
    questions = []
    for i, rec in enumerate(records):
        q = rec.get(args.question_field)
        if not isinstance(q, str) or not q.strip():
            what = "missing" if args.question_field not in rec else f"not a non-empty string ({q!r:.40})"
            raise DataError(rec.get("_file", args.input), f"record {i + 1}: field {args.question_field!r} is "
                                                          f"{what}; set --question-field", rec.get("_line"))
        questions.append(q)
    return questions, records


def _metrics_path(output: str) -> Path:
    """A.jsonl -> A.metrics.json, beside the output."""
    return Path(output).with_suffix(".metrics.json")


def _check_files(args) -> None:
    from tunelab.cli.common import same_file
    from tunelab.cli.use import check_output
    from tunelab.errors import TunelabError

    if args.output and not args.input:
        raise TunelabError("ask --output: goes with --input FILE (a --question's answer is printed)")
    if args.output:
        check_output(args.output, args.input, "ask --output")
        if same_file(_metrics_path(args.output), Path(args.input)):
            raise TunelabError(f"ask --output: the metrics would go to {_metrics_path(args.output)}, which is the "
                               "input file; give another --output")
    if args.k < 1:
        raise TunelabError(f"ask -k: got {args.k}; retrieve at least 1 passage")


def _used(answer) -> str:
    """'passages: [1] id (score 0.61), [2] id (score 0.55, cut to fit); 1 left out to fit'."""
    parts = [f"[{n}] {p.id} (score {p.score:.3f}{', cut to fit' if p.cut else ''})"
             for n, p in enumerate(answer.passages, 1)]
    left = f"; {answer.dropped} left out to fit" if answer.dropped else ""
    return "passages: " + (", ".join(parts) or "none") + left


def _ask_index(args) -> int:
    from tunelab.cli.common import stdout_to_stderr
    from tunelab.retrieval.rag import answer_questions, load_generator

    _check_files(args)
    questions, records = _questions(args)
    with stdout_to_stderr():  # loading messages; standard output carries the answers
        from tunelab.retrieval.index import load_index

        index = load_index(args.index)
        index.encoder()  # loaded now, so the seconds per question count retrieval and generation only
        generator = load_generator(args.run_dir, list(args.overrides), args.max_length)
        start = time.perf_counter()
        answers = answer_questions(generator, index, questions, args.k)
        seconds = time.perf_counter() - start
    if records is None:
        for answer in answers:
            if len(answers) > 1:
                print(f"Q: {answer.question}")
            print(answer.text or "(the model answered nothing)")
            print(_used(answer))
        print(f"({seconds / len(answers):.1f} s per question)", file=sys.stderr)
        return 0
    _write_answers(args, records, answers, seconds)
    return 0


def _write_answers(args, records: list[dict], answers, seconds: float) -> None:
    """Answers (+ passages used) for each record to --output or stdout; EM/F1 where gold answers are given."""
    from tunelab.cli.common import write_rows
    from tunelab.evaluate.qa_metrics import qa_metrics
    from tunelab.retrieval.rag import gold_answers, scored_answer

    rows, preds, golds = [], [], []
    for i, (rec, answer) in enumerate(zip(records, answers)):
        field = args.answers_field
        if field == "answers" and field not in rec and "answer" in rec:  # the rag training layout's field
            field = "answer"
        gold = gold_answers(rec.get(field), rec.get("_file", args.input), rec.get("_line"), i, field)
        if gold is not None:
            preds.append(scored_answer(answer.text))
            golds.append(gold)
        row = {k: v for k, v in rec.items() if not k.startswith("_")}
        row["answer"] = answer.text
        row["passages"] = [{"id": p.id, "doc_id": p.doc_id, "score": p.score, "cut": p.cut}
                           for p in answer.passages]
        rows.append(row)
    write_rows(rows, args.output, "answers")
    note = f"{len(rows)} questions in {seconds:.1f} s ({seconds / max(1, len(rows)):.1f} s per question)"
    if not golds:
        print(f"{note}; no gold {args.answers_field!r} in the input, so no EM/F1", file=sys.stderr)
        return
    m = qa_metrics(preds, golds)
    split = "".join(f"; {name} {m[f'{name}_exact_match']:.3f} / {m[f'{name}_f1']:.3f} (n={m[f'{name}_n']})"
                    for name in ("has_answer", "no_answer") if m[f"{name}_n"] and m[f"{name}_n"] < m["n"])
    print(f"exact_match {m['exact_match']:.3f}  f1 {m['f1']:.3f}{split}  (n={m['n']} with gold answers; {note})",
          file=sys.stderr if not args.output else sys.stdout)
    if args.output:
        from tunelab.io import atomic_write_json

        atomic_write_json(_metrics_path(args.output), {**m, "k": args.k, "seconds": round(seconds, 3)})
        print(f"metrics written to {_metrics_path(args.output)}")


# ---------------------------------------------------------------------------------------------
# --context: extractive


def _read_context(path: str) -> str:
    from tunelab.errors import TunelabError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TunelabError(f"ask --context: {path} does not exist; give a text file to answer from") from None
    except IsADirectoryError:
        raise TunelabError(f"ask --context: {path} is a folder; give one text file") from None
    except UnicodeDecodeError as e:
        raise TunelabError(f"ask --context: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise TunelabError(f"ask --context: {path} is empty; give the text to answer from")
    return text


def _ask_context(args) -> int:
    from tunelab.cli.common import stdout_to_stderr
    from tunelab.errors import TunelabError
    from tunelab.runs import task_verb

    if not args.question:
        raise TunelabError("ask --context: give --question \"...\" (repeatable)")
    if args.input or args.output or args.max_length is not None:
        raise TunelabError("ask --context: --input/--output/--max-length go with --index; for a file of "
                           "questions with an extractive_qa run use `tunelab predict RUN --input FILE`")
    context = _read_context(args.context)
    with stdout_to_stderr():
        rows = task_verb(args.run_dir, "ask")(args.run_dir, context, list(args.question), list(args.overrides))
    for row in rows:
        if len(rows) > 1:
            print(f"Q: {row['question']}")
        if row.get("answer"):
            print(f"{row['answer']}  (score {row['score']:.3f}, characters {row['start']}-{row['end']})")
        else:
            print(f"no answer  (score {row['score']:.3f})")
    return 0


def add_commands(sub) -> None:
    """Register `ask` on the main parser's subparsers."""
    a = sub.add_parser("ask", help="answer questions: from retrieved passages (--index) or a text (--context)",
                       description="Answer questions generatively from passages retrieved out of an index "
                                   "(--index, with a causal_lm run or a model reference), or extractively from "
                                   "a text file (--context, with an extractive_qa run).", epilog=EPILOG)
    a.add_argument("run_dir", metavar="RUN_OR_MODEL", help="a finished run, or (with --index) a model reference "
                                                           "such as builtin:smollm2-135m-instruct")
    a.add_argument("overrides", nargs="*", help="settings, e.g. generate.max_new_tokens=48")
    a.add_argument("--index", help="an index folder (`tunelab index build`): answer generatively")
    a.add_argument("--context", help="a UTF-8 text file: answer extractively from it")
    a.add_argument("--question", action="append", help="a question (repeatable)")
    a.add_argument("-k", type=int, default=3, help="passages retrieved per question (--index; default 3)")
    a.add_argument("--input", help="--index: records with a question each (.jsonl/.csv/...)")
    a.add_argument("--output", help="--index: where to write the answers (.jsonl; default: standard output)")
    a.add_argument("--question-field", default="question", help="field of --input holding the question")
    a.add_argument("--answers-field", default="answers",
                   help="field of --input holding gold answers (optional; default answers, or answer where "
                        "records have that field: the rag training layout)")
    a.add_argument("--max-length", type=int, help="--index: tokens the prompt + answer may take (default: the "
                                                  "run's model.max_length, or the model's positions)")
    a.set_defaults(func=cmd_ask)
