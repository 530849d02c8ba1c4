"""The search space of `tunelab tune`: a YAML file with one entry per dotted config key, checked against the
config schema before any trial runs.

    train.lr: {type: float, low: 1.0e-5, high: 3.0e-4, log: true}
    train.epochs: {type: int, low: 1, high: 3}
    method.name: {type: categorical, choices: [full, lora]}

`float` takes low, high, and log (sample the logarithm evenly) or step; `int` takes low, high, and step or log;
`categorical` takes choices (any values the key accepts, lists included). Every key must be a config key whose
type takes the entry (a float range on an integer key is refused, and so are keys a search cannot vary: task,
output_dir, the objective's metric), and every bound and choice must pass the config's own checks on the base
config (train.lr low 0 is refused as `tunelab train` would refuse it). Keys that depend on each other (method.r
with method.name) are not checked together: a sampled config the config refuses fails that trial, with its
message, not the search.

The values become Optuna distributions under their dotted names; choices that Optuna cannot store (lists,
mappings) are stored as their JSON text and turned back when a trial's config is built.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from tunelab.errors import ConfigError

# keys a search cannot vary: the task decides what is compared, output_dir is each trial's own folder, and the
# metric is the objective itself
FIXED = {"task": "a search compares runs of one task",
         "output_dir": "each trial is written in RUN_DIR/trials/NNN",
         "train.early_stopping.metric": "it is the objective the trials are compared on"}
ENTRY_FIELDS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
                "categorical": ("type", "choices")}
SCALARS = (type(None), bool, int, float, str)  # what an Optuna categorical choice may be


@dataclass
class Param:
    """One searched key: its distribution's settings, in the file's words."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list | None = None

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return CategoricalDistribution([_stored(c) for c in self.choices])

    def value(self, stored: Any) -> Any:
        """The config value of a sampled (stored) value: a list or mapping choice back from its JSON text."""
        if self.type != "categorical":
            return stored
        return next((c for c in self.choices if _stored(c) == stored), stored)

    def spec(self) -> dict:
        """The entry as plain data, defaults filled in: what a study stores to recognise its space."""
        out = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = self.choices
        else:
            out.update(low=self.low, high=self.high, log=self.log, step=self.step)
        return out

    def describe(self) -> str:
        if self.type == "categorical":
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        scale = ", log scale" if self.log else f", step {self.step}" if self.step else ""
        return f"{self.type} in [{self.low}, {self.high}]{scale}"


@dataclass
class Space:
    source: str
    params: list[Param]

    def distributions(self) -> dict:
        return {p.key: p.distribution() for p in self.params}

    def values(self, sampled: dict) -> dict[str, Any]:
        """Config values by key from a trial's params (Optuna's stored values)."""
        return {p.key: p.value(sampled[p.key]) for p in self.params if p.key in sampled}

    def spec(self) -> dict:
        return {p.key: p.spec() for p in self.params}


def _stored(choice: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, lists and mappings as JSON text."""
    return choice if isinstance(choice, SCALARS) else json.dumps(choice, sort_keys=True)


def load_space(path: str | Path, base: dict) -> Space:
    """Read and check the space file against `base` (a resolved config as a dict); one ConfigError naming the
    file with every problem."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError([f"cannot read the space file ({e.strerror or e}); check --space"], str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError([f"not valid YAML{line}: {getattr(e, 'problem', e)}"], str(path)) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(["the space must be a mapping of config keys to entries, e.g. "
                           "'train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}'"], str(path))
    problems: list[str] = []
    params = [p for key, entry in data.items() if (p := _param(str(key), entry, base, problems)) is not None]
    if problems:
        raise ConfigError(problems, str(path))
    return Space(str(path), params)


def _param(key: str, entry: Any, base: dict, problems: list[str]) -> Param | None:
    """One entry, checked: the key, the entry's fields, the field's type, then each bound or choice against the
    config's own checks. Records problems and returns None when anything is wrong."""
    if key in FIXED:
        problems.append(f"{key}: cannot be searched ({FIXED[key]})")
        return None
    try:
        field_type = config_field(key)
    except ValueError as e:
        problems.append(str(e))
        return None
    if not isinstance(entry, dict) or entry.get("type") not in ENTRY_FIELDS:
        problems.append(f"{key}: expected {{type: float | int | categorical, ...}}, got {entry!r}")
        return None
    unknown = sorted(set(entry) - set(ENTRY_FIELDS[entry["type"]]))
    if unknown:
        problems.append(f"{key}: unknown field(s) {', '.join(map(str, unknown))} for type {entry['type']}; "
                        f"allowed: {', '.join(ENTRY_FIELDS[entry['type']][1:])}")
        return None
    before = len(problems)
    param = _categorical(key, entry, problems) if entry["type"] == "categorical" else \
        _numeric(key, entry, field_type, problems)
    if len(problems) > before:
        return None
    for value in (param.choices if param.type == "categorical" else (param.low, param.high)):
        refused = refused_by_config(base, key, value)
        if refused:
            what = "choice" if param.type == "categorical" else "low" if value == param.low else "high"
            problems.append(f"{key}: {what} {json.dumps(value)} is refused by the config ({refused})")
            return None
    return param


def _numeric(key: str, entry: dict, field_type: Any, problems: list[str]) -> Param:
    """A float or int range: the field must take that kind of number; low < high; log needs low > 0 and no step."""
    kind, mine = entry["type"], []
    takes = numeric_kinds(field_type)
    if kind not in takes:
        hint = f"use type: {takes[0]}" if takes else "use type: categorical with its choices"
        problems.append(f"{key}: a {kind} range does not fit this key ({_type_words(field_type)}); {hint}")
        return Param(key, kind)
    number = _as_int if kind == "int" else _as_float
    low, high = number(entry.get("low"), f"{key}: low", mine), number(entry.get("high"), f"{key}: high", mine)
    step = None if entry.get("step") is None else number(entry["step"], f"{key}: step", mine)
    log = entry.get("log", False)
    if not isinstance(log, bool):
        mine.append(f"{key}: log must be true or false, got {log!r}")
    if kind == "int" and log and step == 1:
        step = None  # an int log range steps by 1 anyway
    if not mine:
        if not low < high:
            mine.append(f"{key}: low ({low}) must be below high ({high}); a value that does not vary belongs in "
                        "the config")
        elif log and low <= 0:
            mine.append(f"{key}: log: true needs low > 0 (got {low})")
        elif log and step is not None:
            mine.append(f"{key}: log: true samples without a step; drop step (got {step})")
        elif step is not None and (step <= 0 or not _multiple(high - low, step)):
            mine.append(f"{key}: step {step} must be > 0 and divide high - low ({high} - {low})")
    problems.extend(mine)
    return Param(key, kind, low, high, log is True, step)


def _categorical(key: str, entry: dict, problems: list[str]) -> Param:
    choices = entry.get("choices")
    if not isinstance(choices, list) or not choices:
        problems.append(f"{key}: choices must be a non-empty list, got {choices!r}")
        return Param(key, "categorical")
    stored = [_stored(c) for c in choices]
    if len(set(map(json.dumps, stored))) < len(stored):
        problems.append(f"{key}: choices repeat a value ({json.dumps(choices)}); list each once")
    return Param(key, "categorical", choices=choices)


def _as_float(value: Any, what: str, problems: list[str]) -> float | None:
    if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string, as the config loader knows
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    problems.append(f"{what}: expected a number, got {value!r}")
    return None


def _as_int(value: Any, what: str, problems: list[str]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    problems.append(f"{what}: expected an integer, got {value!r}")
    return None


def _multiple(span: float, step: float) -> bool:
    ratio = span / step
    return abs(ratio - round(ratio)) < 1e-9 * max(1.0, abs(ratio))


# ---------------------------------------------------------------------------------------------
# The config schema, as the space sees it


def config_field(key: str) -> Any:
    """The type of the config value at dotted `key` (e.g. train.lr -> float); ValueError naming what is wrong."""
    from tunelab.config import RunConfig

    node, parts = RunConfig, key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(node)
        where = ".".join(parts[:i])
        if part not in hints:
            known = [f"{where}.{k}" if where else k for k in hints]
            close = difflib.get_close_matches(key, known + _leaf_keys(), n=1)
            hint = f"did you mean {close[0]}?" if close else f"{where or 'the config'} has: {', '.join(known)}"
            raise ValueError(f"{key}: not a config key ({hint})")
        tp = hints[part]
        last = i == len(parts) - 1
        if last and dataclasses.is_dataclass(tp):
            keys = [f"{key}.{k}" for k in typing.get_type_hints(tp)]
            raise ValueError(f"{key}: a section, not a value; name one of its keys "
                             f"({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})")
        if not last and not dataclasses.is_dataclass(tp):
            raise ValueError(f"{key}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = tp
    return node


def _leaf_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every dotted value key of the config (for suggestions)."""
    from tunelab.config import RunConfig

    out = []
    for name, tp in typing.get_type_hints(node or RunConfig).items():
        out += _leaf_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [f"{prefix}{name}"]
    return out


def numeric_kinds(tp: Any) -> tuple[str, ...]:
    """The range types a field takes: a float field floats and ints (train.epochs 1..3), an int field ints,
    anything else (strings, choices of words, booleans, lists) none."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] \
        if typing.get_origin(tp) in (Union, types.UnionType) else [tp]
    if args == [float]:
        return ("float", "int")
    if args == [int]:
        return ("int",)
    return ()


def _type_words(tp: Any) -> str:
    kinds = numeric_kinds(tp)
    return "a float" if "float" in kinds else "an integer" if kinds else "not a number"


def refused_by_config(base: dict, key: str, value: Any) -> str | None:
    """The config's own problem with `key` set to `value` on `base`, or None. Problems of other keys that the
    value causes (an option of another method) are left to the trial that samples them."""
    from tunelab.config import config_from_dict

    data = copy.deepcopy(base)
    set_key(data, key, value)
    try:
        config_from_dict(data)
    except ConfigError as e:
        # the key's own problems: the key itself, an item of a list key (key[1]: ...), a field of a mapping key
        own = [p for p in e.problems if p.startswith((f"{key}:", f"{key}[", f"{key}."))]
        return "; ".join(own) or None
    return None


def set_key(data: dict, key: str, value: Any) -> None:
    """data['a']['b'] = value for key 'a.b', making the sections on the way."""
    *sections, last = key.split(".")
    for section in sections:
        if not isinstance(data.get(section), dict):
            data[section] = {}
        data = data[section]
    data[last] = value
