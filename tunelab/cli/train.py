"""Commands that start a run or check what one would do: train, pretrain, validate, config, models."""
from __future__ import annotations

from pathlib import Path

from tunelab.cli.common import add_config_arguments, add_run_arguments, report_problems, run_config_of


def cmd_train(args) -> int:
    from tunelab.run import train

    train(run_config_of(args), overwrite=args.overwrite, resume=args.resume, show_progress=not args.no_progress)
    return 0


def cmd_pretrain(args) -> int:
    """`train` for a pretraining config: refuses configs that would train anything else."""
    from tunelab.tasks.pretrain import pretrain

    pretrain(run_config_of(args), overwrite=args.overwrite, resume=args.resume,
             show_progress=not args.no_progress)
    return 0


def cmd_resume(args) -> int:
    """Go on with RUN_DIR from its newest checkpoint, with the config the run was trained with."""
    from tunelab.compress.pipeline import resume_compressed
    from tunelab.resume import resume_config
    from tunelab.run import train

    # a compressed variant's retraining rebuilds the compressed model first (its checkpoints fit only that)
    if resume_compressed(Path(args.run_dir), list(args.overrides), show_progress=not args.no_progress):
        return 0
    cfg = resume_config(Path(args.run_dir), list(args.overrides))
    train(cfg, resume=True, show_progress=not args.no_progress)
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
        return report_problems(args.config, [*e.problems, *more])
    problems = check_config(cfg)
    if problems:
        return report_problems(args.config, problems)
    print(f"{args.config}: OK ({cfg.task}, model {cfg.model.name}, method {cfg.method.name})")
    if args.show:
        print(dump_config(cfg), end="")
    return 0


def cmd_config(args) -> int:
    from tunelab.config import reference_markdown

    print(reference_markdown())
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


def add_resume_argument(parser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="go on from the newest checkpoint of output_dir (same settings; a larger "
                             "train.max_steps or train.epochs trains a finished run further)")


def add_commands(sub) -> None:
    """Register train, pretrain, validate, config and models on the main parser's subparsers."""
    t = sub.add_parser("train", help="fine-tune a model from a YAML config",
                       description="Train from CONFIG; override any key with key.sub=value.")
    add_config_arguments(t, "config overrides, e.g. train.lr=1e-4 method.name=lora")
    add_run_arguments(t)
    add_resume_argument(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="go on with an interrupted run from its newest checkpoint",
                       description="Continue RUN_DIR (a run stopped by Ctrl-C, SIGTERM, a crash or a full disk, "
                                   "or a finished run to train longer) from its newest complete checkpoint, "
                                   "with the settings it was trained with.")
    r.add_argument("run_dir", help="the output_dir of the run")
    r.add_argument("overrides", nargs="*", help="only train.max_steps, train.epochs and where/how often it "
                                                "saves may change, e.g. train.max_steps=400")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (logs still printed)")
    r.set_defaults(func=cmd_resume)

    p = sub.add_parser("pretrain", help="pretrain a scratch GPT on a text corpus",
                       description="Causal-LM pretraining of model.name: scratch:gpt on data.train (a .txt, a "
                                   "folder of .txt, a .jsonl text field or builtin:NAME): `tunelab train` for "
                                   "task: pretrain configs; override any key with key.sub=value.")
    add_config_arguments(p, "config overrides, e.g. train.max_steps=200 model.layers=4")
    add_run_arguments(p)
    add_resume_argument(p)
    p.set_defaults(func=cmd_pretrain)

    v = sub.add_parser("validate", help="check a config, its data and model reference without training",
                       description="Check CONFIG (with overrides) as far as possible without training.")
    add_config_arguments(v, "config overrides, e.g. data.train=my.jsonl")
    v.add_argument("--show", action="store_true", help="print the resolved config")
    v.set_defaults(func=cmd_validate)

    c = sub.add_parser("config", help="print every config key with its type, default and meaning")
    c.set_defaults(func=cmd_config)

    m = sub.add_parser("models", help="list the built-in models and where they live")
    m.set_defaults(func=cmd_models)
