"""User-facing errors.

Every mistake a user can make (bad config, bad data, missing files) raises a `TunelabError`.
The CLI turns it into one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations


class TunelabError(Exception):
    """A problem with the user's input; the message says what was wrong and how to fix it."""


class ConfigError(TunelabError):
    """One or more problems in a config; all of them are listed in the message."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f"{source}: " if source else ""
        if len(problems) == 1:
            msg = f"{where}{problems[0]}"
        else:
            msg = f"{where}{len(problems)} problems: " + "; ".join(problems)
        super().__init__(msg)


class DataError(TunelabError):
    """Bad data, located by file and (when it has one) line."""

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
