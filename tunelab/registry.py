"""One small registry per kind of plug-in (tasks, methods): names checked when registered, lookups that
say what is known.

Written by hand (a dict with checks) because the checks and the messages are the point: a second
registration under one name is a programming error that says how to fix it, and a lookup miss is a user's
mistake that lists the known names ("unknown task 'x'; known: a, b, c").
"""
from __future__ import annotations

import re
from typing import Generic, Iterator, TypeVar

from tunelab.errors import TunelabError

T = TypeVar("T")
NAME = re.compile(r"[a-z][a-z0-9_]*\Z")  # what a config value can name without quoting


class Registry(Generic[T]):
    """Named objects of one `kind` (e.g. "task"), each with the config keys (`options`) that belong to it."""

    def __init__(self, kind: str, order: tuple[str, ...] = ()):
        """`order`: names listed first, in this order, whatever order they registered in (imports vary)."""
        self.kind, self.order = kind, order
        self._items: dict[str, T] = {}
        self._options: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, obj: T, options: tuple[str, ...] | list[str] = ()) -> T:
        """Add `obj` under `name`; `options` are the config keys (e.g. "method.r") that apply only to it."""
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r}: use lower-case letters, digits and _ (a config value)")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice: each {self.kind} module registers "
                             "itself once; pick another name")
        bad = [o for o in options if not isinstance(o, str) or "." not in o]
        if bad:
            raise ValueError(f"{self.kind} {name!r}: options must be dotted config keys such as "
                             f"'method.r', got {bad}")
        self._items[name] = obj
        self._options[name] = tuple(options)
        return obj

    def get(self, name: str) -> T:
        if name not in self._items:
            raise TunelabError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]

    def options(self, name: str) -> tuple[str, ...]:
        """The config keys that belong to `name` (empty for an unknown name)."""
        return self._options.get(name, ())

    def owners(self, key: str) -> list[str]:
        """The names whose options include the config key `key`."""
        return [n for n in self.names() if key in self._options[n]]

    def names(self) -> tuple[str, ...]:
        first = [n for n in self.order if n in self._items]
        return (*first, *(n for n in self._items if n not in first))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
