"""What the command groups share: the run arguments of `train` / `pretrain`, the argument of a finished run,
and writing results as JSON lines. Light: nothing heavy is imported at module level."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

EXIT_USAGE = 2

CONFIG_HELP = "a YAML run config (see `tunelab config`); relative paths in it are read from the current directory"
RUN_HELP = "a finished run: the output_dir of `tunelab train`"


def add_config_arguments(parser, overrides_help: str) -> None:
    """CONFIG and its KEY=VALUE overrides."""
    parser.add_argument("config", help=CONFIG_HELP)
    parser.add_argument("overrides", nargs="*", help=overrides_help)


def add_run_arguments(parser) -> None:
    """What every command that writes a run takes: where, whether to replace one, the progress bar."""
    parser.add_argument("--output-dir", help="run directory (overrides output_dir)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still printed)")


def run_config_of(args):
    """The RunConfig of CONFIG with the overrides and --output-dir applied."""
    from tunelab.config import load_config

    overrides = list(args.overrides)
    if args.output_dir:  # quoted: a path, never a number (`--output-dir 2024`)
        overrides.append(f"output_dir={json.dumps(args.output_dir, ensure_ascii=False)}")
    return load_config(args.config, overrides)


def report_problems(source: str, problems: list[str]) -> int:
    """One problem: one line. More: a line that counts them, then one line each (stderr). Exit code 2."""
    if len(problems) == 1:
        print(f"error: {source}: {problems[0]}", file=sys.stderr)
    else:
        print(f"error: {source}: {len(problems)} problems", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE


def write_rows(rows: list[dict], output: str | None, what: str) -> None:
    """JSON lines to `output` (atomically; a count on stdout) or, without one, to standard output."""
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output:
        from tunelab.errors import TunelabError
        from tunelab.io import atomic_write_text

        try:
            atomic_write_text(output, "".join(lines))
        except OSError as e:  # checked before predicting; what is left: a full disk, a folder that changed
            raise TunelabError(f"--output {output}: cannot write it ({e.strerror or e}); nothing was written, "
                               "free space or give another file and run again") from None
        print(f"{len(rows)} {what} written to {output}")
        return
    for line in lines:
        sys.stdout.write(line)
    sys.stdout.flush()


def stdout_to_stderr():
    """Send prints (loading messages, progress) to stderr while predicting, so stdout stays clean JSONL."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def same_file(a: Path, b: Path) -> bool:
    """The same file after resolving `..` and links (samefile also catches hard links)."""
    return os.path.samefile(a, b) if a.exists() and b.exists() else a.resolve() == b.resolve()
