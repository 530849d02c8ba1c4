"""`tunelab explain RUN_DIR`: why a finished run's model said what it said (word attributions, attention maps)
and how far each attribution method can be trusted on it (--evaluate: deletion curves). Thin: the work is
done by tunelab.explain; every user mistake is caught here, before a model loads, as one line."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

EPILOG = """examples:
  tunelab explain runs/bbc-news --text "Shares rose after the merger"
  tunelab explain runs/bbc-news --text "A late goal won it" --method occlusion --window 3 --target sports
  tunelab explain runs/bbc-news --text "..." --output why.html --attention-maps maps/
  tunelab explain runs/bbc-news --input new.jsonl --text-field body --output why.jsonl
  tunelab explain runs/squad --text "Who wrote it?" --context "It was written by Ann Lee in 1999."
  tunelab explain runs/smollm2-lora-alpaca --text "Name a fruit." --max-new-tokens 8
  tunelab explain runs/bbc-news --evaluate -n 100 --methods ig,occlusion
methods: ig (integrated gradients on the input embeddings; --steps), occlusion (--window), lime and shap
(--samples, --seed), attention (attention rollout from [CLS]: not an explanation, shown for comparison).
--evaluate deletes each method's top-ranked tokens and random ones and prints the area over the deletion
curve (AOPC) of both: a method whose difference is not above 0 explains no better than chance here."""

OUTPUT_KINDS = (".html", ".jsonl")


def add_commands(sub) -> None:
    """Register `explain` on the main parser's subparsers."""
    e = sub.add_parser("explain", help="why did the run say that: word attributions, attention maps, faithfulness",
                       description="Attribute a finished run's prediction to the words of its input (captum), "
                                   "print them shaded or write HTML / JSONL, or measure each method's "
                                   "faithfulness with deletion curves (--evaluate).",
                       epilog=EPILOG)
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished run: the output_dir of `tunelab train`")
    e.add_argument("--text", help="the text to explain (extractive QA: the question; causal LM: the prompt)")
    e.add_argument("--context", help="extractive QA: the passage the question is answered from")
    e.add_argument("--input", help="a file of records (JSONL, CSV, ...) to explain one by one")
    e.add_argument("--text-field", help="--input: the field holding the text (default: the run's data.text_field; "
                                        "extractive QA: its data.question_field)")
    e.add_argument("--context-field", help="--input, extractive QA: the field holding the passage (default: the "
                                           "run's data.context_field)")
    e.add_argument("--method", help="ig (default), occlusion, lime, shap or attention; causal LM runs: ablation "
                                     "(default) or ig")
    e.add_argument("--target", help="what to explain (default: the prediction): a label (classification), an "
                                     "answer text from the context (extractive QA), an entity's index or text "
                                     "(token classification), the text to explain (causal LM)")
    e.add_argument("--steps", type=int, help="ig: integration steps")
    e.add_argument("--window", type=int, help="occlusion: tokens hidden at a time")
    e.add_argument("--samples", type=int, help="lime / shap: perturbed inputs evaluated")
    e.add_argument("--seed", type=int, help="lime / shap: the seed of the perturbations; --evaluate: of the "
                                            "random deletions")
    e.add_argument("--max-new-tokens", type=int, help="causal LM: tokens generated and explained")
    e.add_argument("--max-prompt-tokens", type=int, help="causal LM: the cap on prompt tokens explained (default "
                                                         "64: cost grows with prompt x generated tokens)")
    e.add_argument("--max-generated-tokens", type=int, help="causal LM: the cap on --max-new-tokens (default 32)")
    e.add_argument("--output", help="OUT.html (one self-contained page) or OUT.jsonl (one row per record)")
    e.add_argument("--attention-maps", metavar="DIR", help="also write per-layer attention heatmaps (PNG) to DIR "
                                                           "(embedded in an --output page)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --output file, attention maps or "
                                                            "--evaluate table")
    e.add_argument("--evaluate", action="store_true", help="measure each method's faithfulness (deletion curves)")
    e.add_argument("--data", help="--evaluate: labelled or unlabelled records (default: the run's test split)")
    e.add_argument("-n", type=int, default=100, help="--evaluate: how many records (default 100)")
    e.add_argument("--methods", help="--evaluate: comma-separated methods (default: all)")
    e.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    from tunelab.cli.common import stdout_to_stderr

    check_arguments(args)
    if args.evaluate:
        return _evaluate(args)
    with stdout_to_stderr():  # loading notes go to stderr; stdout carries the explanation
        from tunelab.runs import load_run

        run = load_run(args.run_dir)
        check_context(run, args)
        check_target(run, args.target)
        records, fields = _records(args, run)
    return _explain(args, run, records, fields)


# ---------------------------------------------------------------------------------------------
# Checks: every mistake in one line before a model loads


def check_arguments(args) -> None:
    """--text / --input / --evaluate, the method, --output's kind and whether it may be written."""
    from tunelab.errors import TunelabError
    from tunelab.explain import METHODS
    from tunelab.explain.generative import GENERATION_METHODS

    for name in ("steps", "window", "samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TunelabError(f"explain --{name}: got {value}; give a number of at least 1")
    if args.evaluate:
        if args.text or args.input:
            raise TunelabError("explain --evaluate measures methods on many records: drop --text / --input and "
                               "give --data FILE (default: the run's test split)")
        args.methods = _method_list(args.methods)
        if args.n < 1:
            raise TunelabError(f"explain -n: got {args.n}; give a number of records of at least 1")
        _check_result(args)
        return
    if bool(args.text) == bool(args.input):
        raise TunelabError('explain: give either --text "..." or --input FILE (with --output OUT.html or '
                           "OUT.jsonl), or --evaluate")
    if args.method is not None and args.method not in (*METHODS, *GENERATION_METHODS):
        raise TunelabError(f"explain --method: unknown method '{args.method}'; known: {', '.join(METHODS)} "
                           f"(causal LM runs: {', '.join(GENERATION_METHODS)})")
    if args.input and not args.output:
        raise TunelabError("explain --input: give --output OUT.html or OUT.jsonl for the explanations")
    if args.output:
        _check_output(args.output, args.input, args.overwrite)
    if args.attention_maps:
        _check_maps_folder(args.attention_maps, args.overwrite)


def _check_maps_folder(folder: str, overwrite: bool) -> None:
    """--attention-maps names a folder (made if missing) that holds no earlier maps unless --overwrite."""
    from tunelab.errors import TunelabError

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise TunelabError(f"explain --attention-maps: {folder} is a file; give a folder for the PNG images")
    earlier = sorted(path.glob("attention*.png")) if path.is_dir() else []
    if earlier and not overwrite:
        raise TunelabError(f"explain --attention-maps: {folder} holds earlier attention maps ({earlier[0].name}, "
                           f"...); add --overwrite to replace them or give another folder")


def _check_result(args) -> None:
    """--evaluate replaces an earlier table only with --overwrite."""
    from tunelab.errors import TunelabError
    from tunelab.explain.faithfulness import result_path

    out = result_path(args.run_dir, args.data)
    if out.exists() and not args.overwrite:
        raise TunelabError(f"explain --evaluate: {out} exists (an earlier table); add --overwrite to replace it")


def _method_list(text: str | None) -> list[str]:
    from tunelab.errors import TunelabError
    from tunelab.explain import METHODS

    methods = [m.strip() for m in (text or ",".join(METHODS)).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise TunelabError(f"explain --methods: unknown method(s) {', '.join(unknown) or '(none given)'}; "
                           f"known: {', '.join(METHODS)} (comma-separated)")
    return methods


def _check_output(output: str, inp: str | None, overwrite: bool) -> None:
    from tunelab.cli.use import check_output
    from tunelab.errors import TunelabError

    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_KINDS:
        raise TunelabError(f"explain --output: {output} ends in '{suffix}'; give OUT.html (a page) or OUT.jsonl "
                           "(one row per record)")
    if Path(output).exists() and not overwrite:
        raise TunelabError(f"explain --output: {output} exists; add --overwrite to replace it or give another file")
    check_output(output, inp, "explain --output")


def check_target(run, target: str | None) -> None:
    """--target names one of a classifier's labels (other tasks' targets are checked where they are explained:
    a QA answer against the context, an entity against the predicted ones)."""
    from tunelab.errors import TunelabError
    from tunelab.explain.attribute import explains_a_label

    labels = run.meta.get("labels") if isinstance(run.meta, dict) else None
    if target is not None and labels and explains_a_label(run) and target not in labels:
        raise TunelabError(f"explain --target: '{target}' is not a label of {run.dir}; known: {', '.join(labels)}")


def check_context(run, args) -> None:
    """--context / --context-field belong to extractive QA runs (any other task would read a text pair)."""
    from tunelab.errors import TunelabError
    from tunelab.explain.attribute import takes_context

    given = [flag for flag, value in (("--context", args.context), ("--context-field", args.context_field))
             if value is not None]
    if given and not takes_context(run):
        raise TunelabError(f"explain {given[0]}: only an extractive QA run reads a passage; {run.dir} is a "
                           f"{run.task.name} run: drop {given[0]}")


class Fields(NamedTuple):
    """Which record fields hold the text to explain and (extractive QA) the passage."""

    text: str
    context: str | None


def _fields(args, run) -> Fields:
    """--text-field / --context-field, else the run's own: data.text_field, or for an extractive QA run
    data.question_field and data.context_field."""
    from tunelab.explain.attribute import takes_context

    d = run.cfg.data
    if takes_context(run):
        return Fields(args.text_field or d.question_field, args.context_field or d.context_field)
    return Fields(args.text_field or getattr(d, "text_field", "text"), None)


def _records(args, run) -> tuple[list[dict], Fields]:
    """(the records to explain, their fields). --text (and --context) become one record."""
    from tunelab.errors import DataError
    from tunelab.runs import read_records

    fields = _fields(args, run)
    if args.text:
        record = {fields.text: args.text}
        return [record if args.context is None else {**record, fields.context: args.context}], fields
    records = read_records(args.run_dir, args.input)
    for i, r in enumerate(records):
        for field, what, flag in ((fields.text, "text", "--text-field"), (fields.context, "passage",
                                                                           "--context-field")):
            if field is not None and (not isinstance(r.get(field), str) or not r[field].strip()):
                raise DataError(r.get("_file", args.input), f"record {i + 1}: no {what} in field '{field}'; give "
                                                            f"{flag} FIELD", r.get("_line"))
    return records, fields


# ---------------------------------------------------------------------------------------------
# Explaining


def settings_of(args) -> dict:
    """The method settings given on the command line (the rest keep tunelab.explain's defaults)."""
    names = ("steps", "window", "samples", "seed")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _explain(args, run, records: list[dict], fields: Fields) -> int:
    from tunelab.explain import render

    generative = _generates(run)
    explain = explain_generation if generative else explain_record
    explanations, maps = [], []
    with stdout_to_stderr_if(bool(args.output)):
        for i, record in enumerate(records):
            explanations.append(explain(run, record, fields, args))
            if args.attention_maps:
                maps.append(_attention_maps(args, run, record, fields, i if len(records) > 1 else None))
    if args.output:
        _write(args, run, records, explanations, maps, generative, fields)
        return 0
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for expl in explanations:
        print(render.generation_terminal(expl, colour) if generative else render.terminal(expl, colour))
    if args.attention_maps:
        print(f"{sum(len(m) for m in maps)} attention maps written to {args.attention_maps}")
    return 0


def explain_record(run, record: dict, fields: Fields, args):
    """An encoder run's Explanation of one record (--method default: ig)."""
    from tunelab.explain.faithfulness import explain_any

    context = record[fields.context] if fields.context else None
    return explain_any(run, record[fields.text], args.method or "ig", args.target, context=context,
                       **settings_of(args))


def explain_generation(run, record: dict, fields: Fields, args):
    """A causal LM run's GenerationExplanation of one prompt (--method default: ablation)."""
    from tunelab.explain import generative

    options = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("steps", args.steps),
                                 ("max_prompt_tokens", args.max_prompt_tokens),
                                 ("max_generated_tokens", args.max_generated_tokens)) if v is not None}
    return generative.explain_generation(run, record[fields.text], method=args.method or "ablation",
                                         target=args.target, **options)


def stdout_to_stderr_if(flag: bool):
    import contextlib

    from tunelab.cli.common import stdout_to_stderr

    return stdout_to_stderr() if flag else contextlib.nullcontext()


def _attention_maps(args, run, record: dict, fields: Fields, index: int | None) -> list[Path]:
    """Write the attention heatmaps of one record to --attention-maps (attention-NNN-* for record NNN of many)."""
    from tunelab.explain.attention import attention_maps

    prefix = "attention" if index is None else f"attention-{index + 1:03d}"
    context = record[fields.context] if fields.context else None
    return attention_maps(run, record[fields.text], Path(args.attention_maps), context=context, prefix=prefix,
                          overwrite=args.overwrite)


def _write(args, run, records: list[dict], explanations: list, maps: list[list[Path]], generative: bool,
           fields: Fields) -> None:
    """--output: JSONL rows, or the page (each explanation with its per-layer mean attention maps)."""
    from tunelab.cli.common import write_rows
    from tunelab.explain import render

    if Path(args.output).suffix.lower() == ".jsonl":
        if generative:
            rows = [render.generation_row(r, e) for r, e in zip(records, explanations)]
        else:  # offsets index the passage of a QA record, else its text
            rows = [render.jsonl_row(r, e, offsets_in=fields.context or fields.text)
                    for r, e in zip(records, explanations)]
        write_rows(rows, args.output, "explanations")
        return
    many = len(explanations) > 1
    blocks = []
    for i, e in enumerate(explanations):
        heading = f"Record {i + 1}" if many else ""
        images = [p.read_bytes() for p in maps[i] if p.name.endswith("-mean.png")] if maps else []
        blocks.append((render.generation_html if generative else render.explanation_html)(e, heading, images))
    render.write_page(args.output, f"tunelab explain: {run.dir.name}", blocks, _page_notes(run, args))
    print(f"{len(explanations)} explanation{'s' if many else ''} written to {args.output}")


def _page_notes(run, args) -> list[str]:
    notes = [f"run {run.dir}"]
    if args.attention_maps:
        notes.append(f"Under each text: its attention per layer, averaged over heads (each head's map is in "
                     f"{args.attention_maps}). Attention shows where the model read from, not why it decided: "
                     "it is not an attribution.")
    return notes


# ---------------------------------------------------------------------------------------------
# Causal LMs: which prompt tokens drove each generated token


def _generates(run) -> bool:
    """True for a run whose model writes text: it is explained token by token (tunelab.explain.generative,
    which refuses any model other than a causal LM in one line)."""
    return callable(getattr(run.model, "generate", None))


# ---------------------------------------------------------------------------------------------
# --evaluate


def _evaluate(args) -> int:
    from tunelab.explain.faithfulness import evaluate_run, table

    with stdout_to_stderr_if(True):
        rows, out = evaluate_run(args.run_dir, args.methods, data=args.data, n=args.n,
                                 seed=args.seed or 0, settings=settings_of(args))
    print(table(rows))
    print(f"written to {out}")
    return 0
