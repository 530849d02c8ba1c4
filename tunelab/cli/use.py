"""Commands on a finished run: eval, predict, merge, chat. Thin: the run is loaded by tunelab.runs and
everything task-specific (metrics, predictions, verbs such as merge and chat) comes from the run's task."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tunelab.cli.common import RUN_HELP, same_file, stdout_to_stderr, write_rows


def run_settings() -> tuple[str, ...]:
    """Settings of a finished run that eval / predict may change (any task's); the rest was fixed by training."""
    from tunelab.tasks import tasks

    registry = tasks()
    return tuple(dict.fromkeys(s for name in registry.names() for s in registry.get(name).settings))


def _is_setting(key: str, setting: str) -> bool:
    """'generate.top_p' is a 'generate.' setting; 'data.text_field' is exactly 'data.text_field'."""
    return key.startswith(setting) if setting.endswith(".") else key == setting


def run_overrides(args, command: str) -> list[str]:
    """The KEY=VALUE settings for a finished run (with --text-field / --label-field folded in), checked
    against `run_settings()`: everything else (model, method, training) is fixed by the run."""
    from tunelab.errors import ConfigError

    overrides = list(getattr(args, "overrides", []))
    for option, key in (("text_field", "data.text_field"), ("label_field", "data.label_field")):
        if getattr(args, option, None):
            overrides.append(f"{key}={json.dumps(getattr(args, option), ensure_ascii=False)}")
    allowed = [s for s in run_settings() if command == "eval" or s != "data.label_field"]
    bad = [o for o in overrides if not any(_is_setting(o.split("=", 1)[0], s) for s in allowed)]
    if bad:
        names = ", ".join(s + "*" if s.endswith(".") else s for s in allowed)
        raise ConfigError([f"{command} can change only {names} of a finished run (the rest was fixed by "
                           f"training); got {', '.join(bad)}"])
    return overrides


def settings_for(args, command: str) -> tuple:
    """(the run's task, keyword settings for tunelab.runs.evaluate_run / predict_records).

    Settings the run's task does not take are refused with the task's reason; field names describe a file
    given to this command (the run's own test split keeps the run's fields).
    """
    from tunelab.errors import ConfigError, TunelabError
    from tunelab.runs import run_task

    overrides = run_overrides(args, command)
    task = run_task(args.run_dir)
    for setting, reason in task.refused_settings.items():
        bad = [o for o in overrides if _is_setting(o.split("=", 1)[0], setting)]
        if bad:
            raise ConfigError([f"{command}: {', '.join(bad)}: {reason.format(run=args.run_dir)}"])
    if not overrides:
        return task, {}
    fields = [o for o in overrides if o.startswith("data.")]
    if fields and command == "eval" and getattr(args, "data", None) is None:
        raise TunelabError(f"eval: {', '.join(fields)} describe the file given with --data; the run's own test "
                           "split is read with the run's fields (add --data FILE)")
    return task, {"overrides": overrides}  # checked like any config when the run loads


def cmd_eval(args) -> int:
    from tunelab.runs import evaluate_run

    task, settings = settings_for(args, "eval")
    metrics, out = evaluate_run(args.run_dir, getattr(args, "data", None), **settings)
    print(task.metrics_line(metrics))
    print(f"metrics written to {out}")
    return 0


def cmd_predict(args) -> int:
    inputs = prediction_inputs(args)
    task, settings = settings_for(args, "predict")
    with stdout_to_stderr():  # standard output carries only the JSONL
        from tunelab import runs

        if inputs is None:
            rows = runs.predict_records(args.run_dir, None, "--text", texts=args.text, **settings)
        else:
            records = runs.read_records(args.run_dir, inputs, settings.get("overrides"))
            rows = runs.predict_records(args.run_dir, records, inputs, **settings)
    write_rows(rows, getattr(args, "output", None), task.outputs)
    return 0


def prediction_inputs(args) -> str | None:
    """Check --text / --input / --output before any model loads; returns the input file (None for --text).

    --output must name a file that is not the input itself (the predictions would replace the records) and
    is not under a file.
    """
    from tunelab.errors import TunelabError

    texts, inp, output = getattr(args, "text", None), getattr(args, "input", None), getattr(args, "output", None)
    if bool(texts) == bool(inp):
        raise TunelabError("predict: give either --text \"...\" or --input FILE (and --output FILE, or the "
                           "predictions go to standard output as JSONL)")
    if output:
        check_output(output, inp, "predict --output")
    return inp


def check_output(output: str, inp: str | None, option: str) -> None:
    """`output` can be written as a new file: not a folder, not the input `inp`, not under a file, writable.
    `option` names the flag in the message (e.g. "predict --output")."""
    from tunelab.errors import TunelabError
    from tunelab.io import nearest_existing

    out = Path(output)
    if out.is_dir():
        raise TunelabError(f"{option}: {output} is a folder; give a file such as {out / 'predictions.jsonl'}")
    if inp and same_file(out, Path(inp)):
        raise TunelabError(f"{option}: {output} is the input file; it would be overwritten with the "
                           "predictions: give another file")
    parent = nearest_existing(out.absolute().parent)
    if not parent.is_dir():
        raise TunelabError(f"{option}: {output} is under {parent}, which is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise TunelabError(f"{option}: {output} cannot be written (no permission in {parent}); "
                           "give a file in a folder you can write to")


def cmd_merge(args) -> int:
    from tunelab.runs import task_verb

    merged, diff = task_verb(args.run_dir, "merge")(args.run_dir)
    print(f"merged model written to {merged}; max |logit difference| merged vs adapter on a sample: {diff:.2e}")
    print(f"load it with transformers.AutoModelForCausalLM.from_pretrained({str(merged)!r})")
    return 0


def cmd_chat(args) -> int:
    """Chat with a finished run (its task's `chat` verb) or, given a model reference, with that model."""
    from tunelab.data.chat_template import require_chat_template
    from tunelab.generation import chat_loop, settings_kwargs
    from tunelab.runs import is_run, task_verb

    if is_run(args.run_dir):
        chat_model = task_verb(args.run_dir, "chat")
    else:  # builtin:NAME, gguf:PATH or a model folder: a causal LM as it is
        from tunelab.tasks.causal_lm import chat_model
    model, tokenizer, gen, max_length = chat_model(args.run_dir, list(args.overrides))
    require_chat_template(tokenizer, "messages")
    kwargs = settings_kwargs(tokenizer, model, gen)
    mode = "greedy" if gen.temperature <= 0 else f"sampling, temperature {gen.temperature}"
    print(f"chatting with {args.run_dir} ({mode}, up to {gen.max_new_tokens} new tokens); "
          "/help lists the commands; Ctrl-C stops a reply, Ctrl-D quits")
    chat_loop(model, tokenizer, kwargs, system=args.system, max_length=max_length)
    return 0


def cmd_translate(args) -> int:
    """Print the run's output for each --text, or for each line of standard input (one sentence per line)."""
    import sys

    from tunelab.runs import task_verb

    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        from tunelab.errors import TunelabError

        raise TunelabError("translate: give --text \"...\" or lines on standard input")
    for line in task_verb(args.run_dir, "translate")(args.run_dir, texts, list(args.overrides)):
        print(line)
    return 0


def add_commands(sub) -> None:
    """Register eval, predict, merge and chat on the main parser's subparsers."""
    e = sub.add_parser("eval", help="evaluate a finished run on labelled data",
                       description="Metrics of RUN_DIR's model on its test split or on --data FILE, written "
                                   "to RUN_DIR/eval-<name>.json.")
    e.add_argument("run_dir", help=RUN_HELP)
    e.add_argument("overrides", nargs="*", help="settings for this evaluation, e.g. generate.max_new_tokens=32")
    e.add_argument("--data", help="labelled file (default: the run's test split)")
    e.add_argument("--text-field", help="field of --data holding the text (default: the run's data.text_field)")
    e.add_argument("--label-field", help="field of --data holding the label (default: the run's "
                                         "data.label_field)")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="predict with a finished run",
                        description="Add predictions (classification) or generations (causal_lm) to each "
                                    "record; JSONL to --output or to standard output.")
    pr.add_argument("run_dir", help=RUN_HELP)
    pr.add_argument("overrides", nargs="*", help="settings for this prediction, e.g. generate.max_new_tokens=32")
    pr.add_argument("--input", help="records to predict (.jsonl/.csv/.parquet/...)")
    pr.add_argument("--output", help="where to write the predictions (.jsonl; default: standard output)")
    pr.add_argument("--text", action="append", help="a text to classify, or a prompt for a causal_lm run "
                                                    "(repeatable)")
    pr.add_argument("--text-field", help="field of --input holding the text (default: the run's "
                                         "data.text_field)")
    pr.set_defaults(func=cmd_predict)

    m = sub.add_parser("merge", help="fold a LoRA run's adapter into the weights (RUN_DIR/merged)")
    m.add_argument("run_dir", help="a finished method: lora run")
    m.set_defaults(func=cmd_merge)

    t = sub.add_parser("translate", help="translate (or summarise) texts with a seq2seq run",
                       description="The run's output for each --text, or for each line of standard input, one "
                                   "per line on standard output.")
    t.add_argument("run_dir", help="a finished seq2seq run")
    t.add_argument("overrides", nargs="*", help="generation settings, e.g. generate.num_beams=4")
    t.add_argument("--text", action="append", help="a text to translate (repeatable); default: standard input")
    t.set_defaults(func=cmd_translate)

    c = sub.add_parser("chat", help="chat in the terminal with a causal_lm run or a model",
                       description="Interactive chat, streaming tokens. RUN_DIR may also be a model "
                                   "reference (builtin:smollm2-135m-instruct, gguf:PATH, a folder).")
    c.add_argument("run_dir", help="a finished causal_lm run, or a model reference")
    c.add_argument("overrides", nargs="*", help="generation settings, e.g. generate.temperature=0.7")
    c.add_argument("--system", help="a system prompt for the conversation")
    c.set_defaults(func=cmd_chat)
