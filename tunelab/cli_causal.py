"""The causal-LM commands of `tunelab`: `data preview`, `merge`, `chat`, and predict / eval for causal runs.

`tunelab.cli` calls `add_commands(subparsers)` to register the first three, and hands `predict` / `eval`
to `predict_causal(args)` / `eval_causal(args)` when the run's task is causal_lm (`is_causal_run`).
Every command returns an exit code; user mistakes raise `TunelabError` (the main CLI prints them).
"""
from __future__ import annotations

import sys
from pathlib import Path


def is_causal_run(run_dir: str) -> bool:
    from tunelab.infer import is_causal_run as check

    return check(run_dir)


def cmd_data_preview(args) -> int:
    from tunelab.config import load_config
    from tunelab.tasks.causal_lm import preview

    cfg = load_config(args.config, list(args.overrides))
    color = not args.no_color and sys.stdout.isatty()
    print(preview(cfg, n=args.n, split=args.split, color=color))
    return 0


def cmd_merge(args) -> int:
    from tunelab.infer import merge_run

    merged, diff = merge_run(args.run_dir)
    print(f"merged model written to {merged}; max |logit difference| merged vs adapter on a sample: {diff:.2e}")
    print(f"load it with transformers.AutoModelForCausalLM.from_pretrained({str(merged)!r})")
    return 0


def _chat_model(ref: str, overrides: list[str]):
    """(model, tokenizer, generate config, max_length) from a run directory or a model reference."""
    from tunelab.config import GenerateConfig, RunConfig, apply_overrides, config_from_dict

    bad = [o for o in overrides if not o.startswith("generate.")]
    if bad:
        from tunelab.errors import TunelabError

        raise TunelabError(f"chat: only generate.* settings can be overridden here, got {', '.join(bad)}")
    run_dir = Path(ref)
    if (run_dir / "config.yaml").is_file() and (run_dir / "model").is_dir():
        from tunelab.infer import load_causal_run

        cfg, model, tokenizer, _ = load_causal_run(run_dir)
    else:  # builtin:NAME, gguf:PATH or a model folder: chat with it as it is
        from tunelab.models.build import load_causal_lm_and_tokenizer

        cfg = RunConfig(task="causal_lm")
        model, tokenizer = load_causal_lm_and_tokenizer(ref)
        model.eval()
        cfg.model.max_length = 2048
    data = cfg.to_dict()
    gen: GenerateConfig = config_from_dict(apply_overrides(data, overrides)).generate
    return model, tokenizer, gen, cfg.model.max_length


def cmd_chat(args) -> int:
    from tunelab.data.chat_template import require_chat_template
    from tunelab.generation import chat_loop, settings_kwargs

    model, tokenizer, gen, max_length = _chat_model(args.run_dir, list(args.overrides))
    require_chat_template(tokenizer, "messages")
    kwargs = settings_kwargs(tokenizer, model, gen)
    mode = "greedy" if gen.temperature <= 0 else f"sampling, temperature {gen.temperature}"
    print(f"chatting with {args.run_dir} ({mode}, up to {gen.max_new_tokens} new tokens); "
          "/help lists the commands; Ctrl-C stops a reply, Ctrl-D quits")
    chat_loop(model, tokenizer, kwargs, system=args.system, max_length=max_length)
    return 0


def _causal_settings(args, command: str) -> dict:
    """Keyword arguments for predict_causal_records / evaluate_causal_run from --text-field and overrides
    (empty without any: the run's own settings apply)."""
    from tunelab.cli import run_config, run_overrides

    overrides = run_overrides(args, command) if hasattr(args, "overrides") else []
    labels = [o for o in overrides if o.startswith("data.label_field")]
    if labels:
        from tunelab.errors import ConfigError

        raise ConfigError([f"{command}: {labels[0]}: a causal_lm run has no labels (its references come from "
                           "the records' format); leave out --label-field"])
    cfg = run_config(args, overrides)
    return {} if cfg is None else {"text_field": cfg.data.text_field, "generate": cfg.generate}


def predict_causal(args) -> int:
    """`tunelab predict RUN_DIR --input IN [--output OUT]` (or --text) for a causal_lm run."""
    from tunelab.cli import stdout_to_stderr, prediction_inputs, write_rows
    from tunelab.infer import predict_causal_records

    inp = prediction_inputs(args)
    settings = _causal_settings(args, "predict")
    with stdout_to_stderr():  # standard output carries only the JSONL
        if inp is None:
            rows = predict_causal_records(args.run_dir, None, "--text", texts=args.text, **settings)
        else:
            from tunelab.data.sources import load_records

            rows = predict_causal_records(args.run_dir, load_records(inp), inp, **settings)
    write_rows(rows, getattr(args, "output", None), "generations")
    return 0


def eval_causal(args) -> int:
    """`tunelab eval RUN_DIR [--data FILE] [generate.KEY=VALUE ...]` for a causal_lm run."""
    from tunelab.infer import evaluate_causal_run
    from tunelab.tasks.causal_lm import metrics_line

    metrics, out = evaluate_causal_run(args.run_dir, getattr(args, "data", None),
                                       **_causal_settings(args, "eval"))
    print(metrics_line(metrics))
    print(f"metrics written to {out}")
    return 0


def add_commands(subparsers) -> None:
    """Register `data` (with `preview`), `merge` and `chat` on the main CLI's subparsers."""
    d = subparsers.add_parser("data", help="inspect training data (causal_lm)")
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

    m = subparsers.add_parser("merge", help="fold a LoRA run's adapter into the weights (RUN_DIR/merged)")
    m.add_argument("run_dir", help="a finished method: lora run")
    m.set_defaults(func=cmd_merge)

    c = subparsers.add_parser("chat", help="chat in the terminal with a causal_lm run or a model",
                              description="Interactive chat, streaming tokens. RUN_DIR may also be a model "
                                          "reference (builtin:smollm2-135m-instruct, gguf:PATH, a folder).")
    c.add_argument("run_dir", help="a finished causal_lm run, or a model reference")
    c.add_argument("overrides", nargs="*", help="generation settings, e.g. generate.temperature=0.7")
    c.add_argument("--system", help="a system prompt for the conversation")
    c.set_defaults(func=cmd_chat)
