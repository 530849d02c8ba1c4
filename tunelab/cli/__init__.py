"""The `tunelab` command: parse arguments, call the API, turn user mistakes into one line + exit code 2.

The commands live in one thin module per group, each with `add_commands(subparsers)`: tunelab.cli.train
(train, pretrain, validate, config, models), tunelab.cli.use (eval, predict, merge, chat on a finished run)
and tunelab.cli.data (data preview, tokenizer train); tunelab.cli.common holds what they share (the run
arguments, JSONL output). This module holds the parser, the examples under each command's help and `main`.

Arguments may come in any order: options before or after positionals, `KEY=VALUE` overrides anywhere
(argparse leaves the ones after an option over; `parse_args` hands them to the command), and `--debug`
on the main command or any subcommand. Everything heavy is imported inside the commands, so
`tunelab --help` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

from tunelab.cli.common import EXIT_USAGE

EXIT_BROKEN_PIPE = 141  # what a shell reports for a program stopped by SIGPIPE (`tunelab config | head`)

# `train.lr=1e-4`, `output_dir=runs/x`: a dotted key of identifiers, then `=`. Paths (`a/b=c`) and model
# references (`gguf:x=y`) do not match, so they stay positionals.
OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*=")

# The modules under tunelab.cli that add commands (each has `add_commands(subparsers)`), one per line, in
# the order `tunelab --help` lists them. A group may give its commands' examples as their `epilog`.
COMMAND_GROUPS = (
    "train",
    "use",
    "data",
    "index",
    "ask",
    "explain",
    "export",
    "compress",
    "serve",
    "tune",
    "ensemble",
)

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
    ("resume",): """examples:
  tunelab resume runs/bbc-news
  tunelab resume runs/bbc-news train.max_steps=400     (train a finished run further)
  torchrun --nproc-per-node 2 -m tunelab resume runs/bbc-news   (a run trained by 2 processes)""",
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
  tunelab data preview examples/smollm2-lora-alpaca.yaml -n 2
  tunelab data check examples/bbc-news.yaml""",
    ("data", "check"): """examples:
  tunelab data check examples/bbc-news.yaml
  tunelab data check examples/bbc-news.yaml data.train=my.jsonl --examples 5
  tunelab data check my-config.yaml --json check.json
duplicates, train/validation/test leakage, labels, lengths, charset, chat turns and PII, as training will read
the data; exit code 0 (findings are warnings) unless the data cannot be read (2).""",
    ("data", "preview"): """examples:
  tunelab data preview examples/smollm2-lora-alpaca.yaml -n 2
  tunelab data preview examples/smollm2-lora-alpaca.yaml --split validation data.train_on_prompt=true""",
    ("merge",): """examples:
  tunelab merge runs/smollm2-lora-alpaca""",
    ("translate",): """examples:
  tunelab translate runs/gettext-de-en --text "Datei öffnen"
  tunelab translate runs/gettext-de-en generate.num_beams=4 < sentences.txt     (one sentence per line)""",
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

    for name in COMMAND_GROUPS:  # light modules: heavy imports are inside the commands
        importlib.import_module(f"tunelab.cli.{name}").add_commands(sub)
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
    from tunelab.train.interrupt import Interrupted

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
    except Interrupted as e:  # stopped by a signal after writing a checkpoint: exit as the signal says
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
