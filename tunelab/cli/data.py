"""Commands on data before training: data preview (causal_lm rendering and masks), tokenizer train."""
from __future__ import annotations

import sys

from tunelab.tokenizer_train import KINDS  # light: the training imports are inside


def cmd_data_preview(args) -> int:
    from tunelab.config import load_config
    from tunelab.tasks.causal_lm import preview

    cfg = load_config(args.config, list(args.overrides))
    color = not args.no_color and sys.stdout.isatty()
    print(preview(cfg, n=args.n, split=args.split, color=color))
    return 0


def cmd_data_check(args) -> int:
    from tunelab.data.checks import run_check

    return run_check(args)


def cmd_tokenizer_train(args) -> int:
    import json

    from tunelab.tokenizer_train import INFO_NAME, train_tokenizer

    out = train_tokenizer(args.input, args.vocab_size, args.output, args.kind, args.lowercase, args.text_field)
    info = json.loads((out / INFO_NAME).read_text())
    note = (f" (the corpus supported only {info['vocab_size']} of the {info['vocab_size_asked']} asked for)"
            if info["vocab_size"] < info["vocab_size_asked"] else "")
    print(f"{info['kind']} tokenizer with {info['vocab_size']} tokens{note}, trained on {info['documents']} "
          f"documents, saved to {out}")
    print(f"use it with model.tokenizer: {out}")
    return 0


def add_commands(sub) -> None:
    """Register `data preview` and `tokenizer train` on the main parser's subparsers."""
    d = sub.add_parser("data", help="inspect and check training data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    pv = dsub.add_parser("preview", help="show rendered examples, trained vs masked tokens, lengths",
                         description="Render examples the way training sees them: trained tokens in green "
                                     "(or [[brackets]] when not a terminal), token counts and a length histogram.")
    pv.add_argument("config", help="a YAML run config with task: causal_lm")
    pv.add_argument("overrides", nargs="*", help="config overrides, e.g. data.train_on_prompt=true")
    pv.add_argument("-n", type=int, default=3, help="examples to show (default 3)")
    pv.add_argument("--split", default="train", help="train | validation | test (default train)")
    pv.add_argument("--no-color", action="store_true", help="mark trained tokens with [[ ]] instead of colour")
    pv.set_defaults(func=cmd_data_preview)
    ck = dsub.add_parser("check", help="check data for duplicates, leakage, label balance, odd records and PII",
                         description="Read the data as `tunelab train CONFIG` will, then report exact and near "
                                     "duplicates, train/validation/test leakage, label balance, empty and "
                                     "extreme-length records, charset oddities, chat turns and PII (what "
                                     "data.dedup and data.redact_pii would change).")
    ck.add_argument("config", help="a YAML run config")
    ck.add_argument("overrides", nargs="*", help="config overrides, e.g. data.train=my.jsonl")
    ck.add_argument("--examples", type=int, default=3, help="examples shown per finding (default 3)")
    ck.add_argument("--json", default=None, help="also write the whole report as JSON to this file")
    ck.set_defaults(func=cmd_data_check)

    t = sub.add_parser("tokenizer", help="train a tokenizer for scratch models")
    tsub = t.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    tr = tsub.add_parser("train", help="train a BPE or WordPiece tokenizer on text",
                         description="Train a tokenizer on text files, folders of .txt, .jsonl records or "
                                     "builtin:NAME, and save it where model.tokenizer can point.")
    tr.add_argument("--input", action="append", required=True,
                    help="a .txt file, a folder of .txt files, a .jsonl/.csv/.parquet file or builtin:NAME "
                         "(repeatable)")
    tr.add_argument("--vocab-size", type=int, required=True, help="tokens in the vocabulary, special ones included")
    tr.add_argument("--output", required=True, help="folder to write the tokenizer to")
    tr.add_argument("--kind", choices=KINDS, default="bpe", help="bpe (byte-level, default) or wordpiece")
    tr.add_argument("--lowercase", action="store_true", help="lowercase text before tokenising")
    tr.add_argument("--text-field", default="text", help="field holding the text in record files (default: text)")
    tr.set_defaults(func=cmd_tokenizer_train)
