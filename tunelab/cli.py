"""The `tunelab` command: parse arguments, call the API, turn user mistakes into one line + exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


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
    from tunelab.config import dump_config, load_config

    cfg = load_config(args.config, list(args.overrides))
    print(f"{args.config}: OK ({cfg.task}, model {cfg.model.name}, method {cfg.method.name})")
    if args.show:
        print(dump_config(cfg), end="")
    return 0


def cmd_models(args) -> int:
    from tunelab.models.registry import BUILTIN_MODELS

    for name, m in BUILTIN_MODELS.items():
        try:
            where = m.where() if m.where else str(m.locate())
        except Exception as e:  # not installed / not converted: say so instead of failing the listing
            where = f"not available: {e}"
        print(f"builtin:{name:<24} {m.description}\n  {'':<32}package {m.pip_name}\n  {'':<32}{where}")
    return 0


def cmd_eval(args) -> int:
    from tunelab.cli_causal import eval_causal, is_causal_run
    from tunelab.infer import evaluate_run

    if is_causal_run(args.run_dir):
        return eval_causal(args)

    metrics, out = evaluate_run(args.run_dir, args.data)
    auc = metrics.get("roc_auc_ovr")
    print(f"accuracy {metrics['accuracy']:.4f}  f1_macro {metrics['f1_macro']:.4f}  "
          f"f1_weighted {metrics['f1_weighted']:.4f}  roc_auc {auc if auc is None else round(auc, 4)}  "
          f"loss {metrics['loss']:.4f}  (n={metrics['n']})")
    print(f"metrics written to {out}")
    return 0


def cmd_predict(args) -> int:
    from tunelab.cli_causal import is_causal_run, predict_causal
    from tunelab.data.sources import load_records
    from tunelab.errors import TunelabError
    from tunelab.infer import predict_records
    from tunelab.io import atomic_write_text

    if is_causal_run(args.run_dir):
        return predict_causal(args)
    if bool(args.text) == bool(args.input):
        raise TunelabError("predict: give either --text \"...\" or --input FILE (with --output FILE)")
    if args.text:
        from tunelab.config import load_config

        field = load_config(Path(args.run_dir) / "config.yaml").data.text_field
        for rec in predict_records(args.run_dir, [{field: t} for t in args.text], "--text"):
            print(json.dumps(rec, ensure_ascii=False))
        return 0
    if not args.output:
        raise TunelabError("predict: --input needs --output FILE.jsonl for the predictions")
    out = predict_records(args.run_dir, load_records(args.input), args.input)
    atomic_write_text(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    print(f"{len(out)} predictions written to {args.output}")
    return 0


def cmd_config(args) -> int:
    from tunelab.config import reference_markdown

    print(reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunelab", description="Fine-tune language models on ordinary machines.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="fine-tune a model from a YAML config",
                       description="Train from CONFIG; override any key with key.sub=value.")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=1e-4 method.name=lora")
    t.add_argument("--output-dir", help="run directory (overrides output_dir)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs still printed)")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("validate", help="check a config without training")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")
    v.add_argument("--show", action="store_true", help="print the resolved config")
    v.set_defaults(func=cmd_validate)

    c = sub.add_parser("config", help="print every config key with its type, default and meaning")
    c.set_defaults(func=cmd_config)

    m = sub.add_parser("models", help="list the built-in models and where they live")
    m.set_defaults(func=cmd_models)

    e = sub.add_parser("eval", help="evaluate a finished run on labelled data")
    e.add_argument("run_dir")
    e.add_argument("--data", help="labelled file (default: the run's test split)")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="predict with a finished run")
    pr.add_argument("run_dir")
    pr.add_argument("--input", help="records to predict (.jsonl/.csv/.parquet/...)")
    pr.add_argument("--output", help="where to write the predictions (.jsonl)")
    pr.add_argument("--text", action="append", help="a text to classify, or a prompt for a causal_lm run "
                                                    "(repeatable)")
    pr.set_defaults(func=cmd_predict)

    from tunelab import cli_causal, pretrain, tokenizer_train  # light modules: heavy imports are inside

    cli_causal.add_commands(sub)
    pretrain.add_commands(sub)
    tokenizer_train.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
