"""`tunelab ensemble`: combine finished runs into one that averages their probabilities (tunelab.ensemble)."""
from __future__ import annotations

EPILOG = """examples:
  tunelab ensemble runs/bbc-minilm runs/bbc-lora --output runs/bbc-ensemble
  tunelab ensemble runs/a runs/b runs/c --weights 2 1 1 --output runs/abc
  tunelab eval runs/bbc-ensemble      (an ensemble is used like a run: eval, predict, serve)
classification and token_classification runs with the same labels; prints each member's test scores beside
the ensemble's and how many times the inference cost of one member it has"""


def cmd_ensemble(args) -> int:
    from tunelab.ensemble import build_ensemble_cli

    return build_ensemble_cli(args)


def add_commands(sub) -> None:
    """Register `ensemble` on the main parser's subparsers."""
    p = sub.add_parser("ensemble", help="average the probabilities of finished runs into one run",
                       description="Combine classification (or token_classification) runs with the same labels "
                                   "into an ensemble run that averages their probabilities; it is evaluated on "
                                   "the members' test split and then used like any run.",
                       epilog=EPILOG)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs (two or more)")
    p.add_argument("--output", required=True, help="folder to write the ensemble run to")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per run, 0 or more, in the order of the runs (default: equal); a run of weight "
                        "0 is scored beside the ensemble but left out of its mean")
    p.add_argument("--overwrite", action="store_true", help="replace an ensemble already at --output")
    p.set_defaults(func=cmd_ensemble)
