"""The `tunelab` command: parse arguments, call the API, turn user mistakes into one line + exit code 2.

Arguments may come in any order: options before or after positionals, `KEY=VALUE` overrides anywhere
(argparse leaves the ones after an option over; `parse_args` hands them to the command), and `--debug`
on the main command or any subcommand. Everything heavy is imported inside the commands, so
`tunelab --help` answers at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a program stopped by SIGPIPE (`tunelab config | head`)

# `train.lr=1e-4`, `output_dir=runs/x`: a dotted key of identifiers, then `=`. Paths (`a/b=c`) and model
# references (`gguf:x=y`) do not match, so they stay positionals.
OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*=")

CONFIG_HELP = "a YAML run config (see `tunelab config`); relative paths in it are read from the current directory"
RUN_HELP = "a finished run: the output_dir of `tunelab train`"

# Settings of a finished run that `predict` / `eval` may change: the rest was fixed by training.
RUN_SETTINGS = ("data.text_field", "data.label_field", "generate.")

EXAMPLES = {
    (): """examples:
  tunelab validate examples/bbc-news.yaml
  tunelab train examples/bbc-news.yaml --output-dir runs/lora method.name=lora
  tunelab predict runs/lora --text "Shares rose after the merger"
  tunelab COMMAND --help       (each command lists its options with an example)""",
    ("train",): """examples:
  tunelab train examples/bbc-news.yaml
  tunelab train examples/bbc-news.yaml --output-dir runs/lora method.name=lora train.lr=5e-4 --overwrite
options and KEY=VALUE overrides may come in any order; `tunelab config` lists every key.""",
    ("validate",): """examples:
  tunelab validate examples/bbc-news.yaml
  tunelab validate examples/bbc-news.yaml data.train=my.jsonl --show
checks the config, that the data files and the model exist, that the first records have the fields the
task needs, and the early-stopping metric; every problem is listed (exit code 2).""",
    ("config",): """examples:
  tunelab config
  tunelab config | grep generate""",
    ("models",): """examples:
  tunelab models""",
    ("eval",): """examples:
  tunelab eval runs/bbc-news
  tunelab eval runs/bbc-news --data reviews.jsonl --text-field body --label-field topic
  tunelab eval runs/smollm2-lora-alpaca generate.max_new_tokens=32
overrides: data.text_field, data.label_field, generate.* (the rest is fixed by training).""",
    ("predict",): """examples:
  tunelab predict runs/bbc-news --text "Shares rose after the merger" --text "A late goal won it"
  tunelab predict runs/bbc-news --input new.jsonl --output predictions.jsonl --text-field body
  tunelab predict runs/bbc-news --input new.jsonl | head     (JSONL on standard output)
  tunelab predict runs/smollm2-lora-alpaca --input prompts.jsonl generate.max_new_tokens=32
overrides: data.text_field, generate.* (the rest is fixed by training).""",
    ("data",): """examples:
  tunelab data preview examples/smollm2-lora-alpaca.yaml -n 2""",
    ("data", "preview"): """examples:
  tunelab data preview examples/smollm2-lora-alpaca.yaml -n 2
  tunelab data preview examples/smollm2-lora-alpaca.yaml --split validation data.train_on_prompt=true""",
    ("merge",): """examples:
  tunelab merge runs/smollm2-lora-alpaca""",
    ("chat",): """examples:
  tunelab chat runs/smollm2-lora-alpaca
  tunelab chat builtin:smollm2-135m-instruct --system "Answer in one sentence." generate.temperature=0.7
in the chat: /help lists the commands; Ctrl-C stops a reply; Ctrl-C at the prompt, Ctrl-D or /exit quits.""",
    ("pretrain",): """examples:
  tunelab pretrain examples/pretrain-gpt.yaml
  tunelab pretrain examples/pretrain-gpt.yaml --output-dir runs/gpt train.max_steps=200 --overwrite""",
    ("tokenizer",): """examples:
  tunelab tokenizer train --input builtin:bbc-news --vocab-size 8000 --output runs/tokenizers/bbc-bpe""",
    ("tokenizer", "train"): """examples:
  tunelab tokenizer train --input builtin:bbc-news --vocab-size 8000 --output runs/tokenizers/bbc-bpe
  tunelab tokenizer train --input corpus/ --input notes.jsonl --text-field body --kind wordpiece \\
      --vocab-size 4000 --output runs/tokenizers/notes""",
}


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def looks_like_override(word: str) -> bool:
    """True for `key.sub=value` words (config overrides), False for paths and model references."""
    return bool(OVERRIDE.match(word))


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_train(args) -> int:
    from tunelab.config import load_config
    from tunelab.run import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir, ensure_ascii=False)}")  # quoted: a path, never a number
    cfg = load_config(args.config, overrides)
    train(cfg, overwrite=args.overwrite, show_progress=not args.no_progress)
    return 0


def cmd_validate(args) -> int:
    """Load the config strictly, then check what can be checked without training (tunelab.check), and
    list every problem found. When the config has problems of its own, the sections without any are still
    checked; if those add nothing, the config's problems come as one line, as `train` prints them."""
    from tunelab.check import check_config, usable_parts
    from tunelab.config import dump_config, load_config
    from tunelab.errors import ConfigError

    try:
        cfg = load_config(args.config, list(args.overrides))
    except ConfigError as e:
        partial = usable_parts(args.config, list(args.overrides))
        more = check_config(*partial) if partial else []
        if not more:
            raise
        return _report_problems(args.config, [*e.problems, *more])
    problems = check_config(cfg)
    if problems:
        return _report_problems(args.config, problems)
    print(f"{args.config}: OK ({cfg.task}, model {cfg.model.name}, method {cfg.method.name})")
    if args.show:
        print(dump_config(cfg), end="")
    return 0


def _report_problems(source: str, problems: list[str]) -> int:
    """One problem: one line. More: a line that counts them, then one line each (stderr). Exit code 2."""
    if len(problems) == 1:
        print(f"error: {source}: {problems[0]}", file=sys.stderr)
    else:
        print(f"error: {source}: {len(problems)} problems", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE


def cmd_models(args) -> int:
    from tunelab.models.registry import BUILTIN_MODELS

    for name, m in BUILTIN_MODELS.items():
        try:
            where = m.where() if m.where else str(m.locate())
        except Exception as e:  # not installed / not converted: say so instead of failing the listing
            where = f"not available: {e}"
        print(f"builtin:{name:<24} {m.description}\n  {'':<32}package {m.pip_name}\n  {'':<32}{where}")
    return 0


def run_overrides(args, command: str) -> list[str]:
    """The KEY=VALUE settings for a finished run (with --text-field / --label-field folded in), checked
    against RUN_SETTINGS: everything else (model, method, training) is fixed by the run."""
    from tunelab.errors import ConfigError

    overrides = list(args.overrides)
    for option, key in (("text_field", "data.text_field"), ("label_field", "data.label_field")):
        if getattr(args, option, None):
            overrides.append(f"{key}={json.dumps(getattr(args, option), ensure_ascii=False)}")
    allowed = [s for s in RUN_SETTINGS if command == "eval" or s != "data.label_field"]
    bad = [o for o in overrides if not any(_is_setting(o.split("=", 1)[0], s) for s in allowed)]
    if bad:
        names = ", ".join(s + "*" if s.endswith(".") else s for s in allowed)
        raise ConfigError([f"{command} can change only {names} of a finished run (the rest was fixed by "
                           f"training); got {', '.join(bad)}"])
    return overrides


def _is_setting(key: str, setting: str) -> bool:
    """'generate.top_p' is a 'generate.' setting; 'data.text_field' is exactly 'data.text_field'."""
    return key.startswith(setting) if setting.endswith(".") else key == setting


def run_config(args, overrides: list[str]):
    """The run's config with `overrides` applied and validated like any config (None without overrides).

    Field names describe a file given to this command: the run's own test split keeps the run's fields.
    """
    if not overrides:
        return None
    from tunelab.config import load_config
    from tunelab.errors import TunelabError

    fields = [o for o in overrides if o.startswith("data.")]
    if fields and getattr(args, "command", None) == "eval" and getattr(args, "data", None) is None:
        raise TunelabError(f"eval: {', '.join(fields)} describe the file given with --data; the run's own test "
                           "split is read with the run's fields (add --data FILE)")
    path = Path(args.run_dir) / "config.yaml"
    if not path.is_file():
        raise TunelabError(f"{args.run_dir} is not a finished tunelab run (needs config.yaml and model/); "
                           "pass the output_dir of `tunelab train`")
    return load_config(path, overrides)


def cmd_eval(args) -> int:
    from tunelab.cli_causal import eval_causal, is_causal_run
    from tunelab.infer import evaluate_run

    if is_causal_run(args.run_dir):
        return eval_causal(args)
    cfg = _classification_settings(args, "eval")
    fields = {} if cfg is None else {"text_field": cfg.data.text_field, "label_field": cfg.data.label_field}
    metrics, out = evaluate_run(args.run_dir, args.data, **fields)
    auc = metrics.get("roc_auc_ovr")
    print(f"accuracy {metrics['accuracy']:.4f}  f1_macro {metrics['f1_macro']:.4f}  "
          f"f1_weighted {metrics['f1_weighted']:.4f}  roc_auc {auc if auc is None else round(auc, 4)}  "
          f"loss {metrics['loss']:.4f}  (n={metrics['n']})")
    print(f"metrics written to {out}")
    return 0


def _classification_settings(args, command: str):
    """run_config for a classification run, refusing generate.* (a classifier generates nothing)."""
    overrides = run_overrides(args, command)
    gen = [o for o in overrides if o.startswith("generate.")]
    if gen:
        from tunelab.errors import ConfigError

        raise ConfigError([f"{command}: {', '.join(gen)}: generate.* applies to causal_lm runs; "
                           f"{args.run_dir} is a classification run"])
    return run_config(args, overrides)


def cmd_predict(args) -> int:
    from tunelab.cli_causal import is_causal_run, predict_causal

    if is_causal_run(args.run_dir):
        return predict_causal(args)
    inputs = prediction_inputs(args)
    cfg = _classification_settings(args, "predict")
    field = cfg.data.text_field if cfg is not None else None
    with stdout_to_stderr():  # standard output carries only the JSONL
        from tunelab.infer import predict_records

        if args.text:
            field = field or _run_text_field(args.run_dir)
            rows = predict_records(args.run_dir, [{field: t} for t in args.text], "--text", text_field=field)
        else:
            from tunelab.data.sources import load_records

            rows = predict_records(args.run_dir, load_records(inputs), inputs, text_field=field)
    write_rows(rows, args.output, "predictions")
    return 0


def _run_text_field(run_dir: str) -> str:
    """The run's own text field, to name the --text inputs (predict_records then checks it is a run)."""
    from tunelab.config import load_config

    path = Path(run_dir) / "config.yaml"
    return load_config(path).data.text_field if path.is_file() else "text"


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
        out = Path(output)
        if out.is_dir():
            raise TunelabError(f"predict --output: {output} is a folder; give a file such as "
                               f"{out / 'predictions.jsonl'}")
        if inp and _same_file(out, Path(inp)):
            raise TunelabError(f"predict --output: {output} is the input file; it would be overwritten with the "
                               "predictions: give another file")
        parent = next((p for p in out.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise TunelabError(f"predict --output: {output} is under {parent}, which is a file, not a folder")
    return inp


def _same_file(a: Path, b: Path) -> bool:
    """The same file after resolving `..` and links (samefile also catches hard links)."""
    return os.path.samefile(a, b) if a.exists() and b.exists() else a.resolve() == b.resolve()


def write_rows(rows: list[dict], output: str | None, what: str) -> None:
    """JSON lines to `output` (atomically; a count on stdout) or, without one, to standard output."""
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output:
        from tunelab.io import atomic_write_text

        atomic_write_text(output, "".join(lines))
        print(f"{len(rows)} {what} written to {output}")
        return
    for line in lines:
        sys.stdout.write(line)
    sys.stdout.flush()


def stdout_to_stderr():
    """Send prints (loading messages, progress) to stderr while predicting, so stdout stays clean JSONL."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def cmd_config(args) -> int:
    from tunelab.config import reference_markdown

    print(reference_markdown())
    return 0


# ---------------------------------------------------------------------------------------------
# The parser


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph texts as usual; texts with line breaks (the examples) are kept as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunelab", description="Fine-tune language models on ordinary machines.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="fine-tune a model from a YAML config",
                       description="Train from CONFIG; override any key with key.sub=value.")
    t.add_argument("config", help=CONFIG_HELP)
    t.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=1e-4 method.name=lora")
    t.add_argument("--output-dir", help="run directory (overrides output_dir)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs still printed)")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("validate", help="check a config, its data and model reference without training",
                       description="Check CONFIG (with overrides) as far as possible without training.")
    v.add_argument("config", help=CONFIG_HELP)
    v.add_argument("overrides", nargs="*", help="config overrides, e.g. data.train=my.jsonl")
    v.add_argument("--show", action="store_true", help="print the resolved config")
    v.set_defaults(func=cmd_validate)

    c = sub.add_parser("config", help="print every config key with its type, default and meaning")
    c.set_defaults(func=cmd_config)

    m = sub.add_parser("models", help="list the built-in models and where they live")
    m.set_defaults(func=cmd_models)

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

    from tunelab import cli_causal, pretrain, tokenizer_train  # light modules: heavy imports are inside

    cli_causal.add_commands(sub)
    pretrain.add_commands(sub)
    tokenizer_train.add_commands(sub)
    for path, parser in [((), p), *_subparsers(p)]:
        _finish(parser, path)
    return p


def _subparsers(parser: argparse.ArgumentParser, path: tuple = ()):
    """(command path, parser) of every subcommand, depth first. argparse has no public way to list them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _subparsers(child, (*path, name))


def _finish(parser: argparse.ArgumentParser, path: tuple) -> None:
    """Examples under the help, and `--debug` on every subcommand (SUPPRESS: absent unless given, so a
    subcommand never resets the main command's --debug)."""
    parser.formatter_class = _Formatter
    parser.epilog = EXAMPLES.get(path, parser.epilog)
    if path and "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show full tracebacks for errors")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse, with KEY=VALUE overrides accepted anywhere.

    argparse matches a command's positionals in one go, so `train CFG --output-dir x a.b=1` leaves `a.b=1`
    over: words that look like overrides go to the command's overrides; anything else left is an error.
    """
    args, extras = parser.parse_known_args(argv)
    has_overrides = hasattr(args, "overrides")
    unknown = [w for w in extras if not (has_overrides and looks_like_override(w))]
    if unknown:
        path = (args.command, *filter(None, [getattr(args, f"{args.command}_command", None)]))  # `data preview`
        command = dict(_subparsers(parser)).get(path, parser)
        command.error(f"unrecognized arguments: {' '.join(unknown)} (see {command.prog} --help)")
    if has_overrides:
        args.overrides = [*args.overrides, *extras]
        _first_positional_in_place(args)
    return args


def _first_positional_in_place(args: argparse.Namespace) -> None:
    """`train a.b=1 CFG` fills `config` with 'a.b=1': swap in the first word that is not an override."""
    name = "config" if hasattr(args, "config") else "run_dir" if hasattr(args, "run_dir") else None
    first = getattr(args, name, None) if name else None
    if first is None or not looks_like_override(first) or Path(first).exists():
        return
    i = next((i for i, w in enumerate(args.overrides) if not looks_like_override(w)), None)
    if i is not None:
        setattr(args, name, args.overrides[i])
        args.overrides = [first, *args.overrides[:i], *args.overrides[i + 1:]]


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (`tunelab config | head`): stop without a traceback, and point
    stdout at /dev/null so the interpreter's final flush does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests capture it)
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if args.command not in ("validate", "config"):
        _quiet_libraries()
    from tunelab.errors import TunelabError

    try:
        return args.func(args)
    except TunelabError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
