"""`tunelab compress`: make a finished run's model smaller (tunelab.compress.pipeline) and measure the
trade-off against the run (tunelab.compress.report). Thin: the options become a pipeline Request."""
from __future__ import annotations

from pathlib import Path

from tunelab.cli.common import RUN_HELP

EPILOG = """examples:
  tunelab compress runs/bbc-news --prune structured --sparsity 0.5 --retrain-steps 200
  tunelab compress runs/bbc-news --quantize int8-dynamic
  tunelab compress runs/bbc-news --low-rank 64 --retrain-steps 200 --quantize int8-dynamic train.lr=2e-5
  tunelab compress runs/bbc-news --prune magnitude --sparsity 0.3 --name mag30
  tunelab compress runs/bbc-news --report --compare runs/bbc-student --threads 2
steps run as prune -> low rank -> retrain -> int8 whatever the order of the options; each result is a run
in RUN_DIR/compressed/NAME (eval, predict and chat take it); --report writes RUN_DIR/compressed/tradeoff.*"""


def request_of(args):
    from tunelab.compress.pipeline import Request

    return Request(prune=args.prune, sparsity=args.sparsity, low_rank=args.low_rank,
                   low_rank_energy=args.low_rank_energy, retrain_steps=args.retrain_steps, quantize=args.quantize,
                   name=args.name, overwrite=args.overwrite, overrides=list(args.overrides))


def cmd_compress(args) -> int:
    from tunelab.compress.pipeline import COMPRESSED, check_request
    from tunelab.errors import TunelabError
    from tunelab.runs import run_config

    req = request_of(args)
    check_request(req)
    run_config(args.run_dir)  # a finished run, before anything loads
    if args.compare and not args.report:
        raise TunelabError("compress: --compare runs are measured beside RUN_DIR's variants; add --report")
    if not req.compresses and not args.report:
        raise TunelabError("compress: nothing to do; give --prune, --low-rank, --quantize or --report")
    if args.threads is not None and args.threads < 1:
        raise TunelabError(f"--threads: {args.threads}; give a positive number of threads")
    if not req.compresses and req.overrides:
        raise TunelabError(f"compress: {req.overrides[0]} applies to the retraining; add --retrain-steps N")
    for other in args.compare or []:
        run_config(other)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if req.compresses:
        from tunelab.compress.pipeline import compress_run

        compress_run(args.run_dir, req, show_progress=not args.no_progress)
    if args.report:
        from tunelab.compress.report import measure_variants, table_markdown, cpu_flags, write_tradeoff

        rows = measure_variants(args.run_dir, args.compare or [], threads=args.threads)
        paths = write_tradeoff(rows, Path(args.run_dir) / COMPRESSED)
        print(table_markdown(rows, cpu_flags()), end="")
        print(f"trade-off written to {', '.join(str(p) for p in paths)}")
    return 0


def add_commands(sub) -> None:
    """Register `compress` on the main parser's subparsers."""
    c = sub.add_parser("compress", help="prune, factorise or quantize a finished run; measure the trade-off",
                       description="Compress RUN_DIR's model into RUN_DIR/compressed/NAME (a run of its own) "
                                   "and/or measure every variant on the run's test split (--report).",
                       epilog=EPILOG)
    c.add_argument("run_dir", help=RUN_HELP)
    c.add_argument("overrides", nargs="*", help="train.* settings for the retraining, e.g. train.lr=2e-5")
    c.add_argument("--prune", choices=("structured", "magnitude"),
                   help="structured: remove attention heads and FFN neurons; magnitude: zero the smallest weights "
                        "(sparsity only, no speed-up)")
    c.add_argument("--sparsity", type=float, help="with --prune: the share removed, in (0, 1)")
    c.add_argument("--low-rank", type=int, metavar="R", help="factorise Linear layers to rank R (truncated SVD)")
    c.add_argument("--low-rank-energy", type=float, metavar="E",
                   help="factorise each Linear layer to the rank that keeps a share E of its spectrum's energy")
    c.add_argument("--retrain-steps", type=int, metavar="N",
                   help="after pruning / low rank: train N steps with the run's own loop and data")
    c.add_argument("--quantize", choices=("int8-dynamic", "int8-weight-only"),
                   help="int8-dynamic: int8 matrix products (faster on CPU); int8-weight-only: int8 weights (smaller)")
    c.add_argument("--name", help="the result's folder under RUN_DIR/compressed (default: from the steps)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing RUN_DIR/compressed/NAME")
    c.add_argument("--no-progress", action="store_true", help="no progress bar while retraining")
    c.add_argument("--report", action="store_true",
                   help="measure the run, every RUN_DIR/compressed/* and --compare runs; write tradeoff.md/json/png")
    c.add_argument("--compare", action="append", metavar="OTHER_RUN",
                   help="with --report: another run measured on RUN_DIR's test split (repeatable)")
    c.add_argument("--threads", type=int, help="torch threads for compressing and measuring (default: torch's)")
    c.set_defaults(func=cmd_compress)
