"""The package's shape: every module imports, module-level imports form no cycle, tasks come from the
registry (no `if task == ...` dispatch outside tunelab/tasks/), and the registry's own checks."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tunelab"


def module_names() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = module_names()


def module_path(name: str) -> Path:
    base = ROOT.parent.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _top_level(body: list[ast.stmt]):
    """Statements that run on import: the module body, into try/if blocks, but not `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            yield from _top_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _top_level(node.body + node.orelse + node.finalbody
                                  + [s for h in node.handlers for s in h.body])
        else:
            yield node


def imports_at_load(name: str) -> set[str]:
    """tunelab modules that importing `name` imports directly (module level only)."""
    tree = ast.parse(module_path(name).read_text())
    package = name if module_path(name).name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in _top_level(tree.body):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    # importing a.b.c also imports the packages a and a.b
    closed = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 2)}
    return {m for m in closed if m in MODULES and m != name}


def test_every_module_imports():
    assert len(MODULES) > 50, MODULES  # the walk found the package
    for name in MODULES:
        importlib.import_module(name)


def test_no_import_cycle():
    graph = {name: imports_at_load(name) for name in MODULES}
    # a package imports nothing just because a submodule is imported, so drop child -> parent edges
    # that Python resolves before the child runs (the parent __init__ is already loading or loaded).
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue  # a module's own package: loaded before it, never a cycle of real imports
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_walk_sees_module_level_imports():
    assert "tunelab.errors" in imports_at_load("tunelab.registry")
    assert "tunelab.data.corpus" in imports_at_load("tunelab.tasks.pretrain")
    assert "tunelab.run" not in imports_at_load("tunelab.tasks.pretrain")  # imported inside a function


def test_no_task_dispatch_outside_the_registry():
    dispatch = re.compile(r"\btask\s*(==|!=|\bin\b|\bnot in\b)|\bis_causal_run\b")
    outside = [f"{path.relative_to(ROOT.parent)}:{i}: {line.strip()}"
               for path in sorted(ROOT.rglob("*.py")) if "tasks" not in path.relative_to(ROOT).parts
               for i, line in enumerate(path.read_text().splitlines(), 1) if dispatch.search(line)]
    assert not outside, outside


def test_tasks_register_themselves_with_what_the_commands_need():
    from tunelab.tasks import MODULES as TASK_MODULES
    from tunelab.tasks import tasks

    registry = tasks()
    assert registry.names() == TASK_MODULES == ("classification", "causal_lm", "pretrain", "seq2seq",
                                                 "extractive_qa", "retrieval", "token_classification")
    for name in registry.names():
        task = registry.get(name)
        assert task.name == name and task.metrics and task.methods and callable(task.job)
        assert all(o.startswith(("data.", "generate.", "model.", "qa.", "retrieval.", "predict."))
                   for o in registry.options(name))


def test_registry_checks_names_and_says_what_is_known():
    from tunelab.errors import TunelabError
    from tunelab.registry import Registry

    r = Registry("thing")
    r.register("a", 1, options=("data.x",))
    r.register("b", 2)
    with pytest.raises(ValueError, match="registered twice"):
        r.register("a", 3)
    with pytest.raises(ValueError, match="lower-case"):
        r.register("Bad Name", 3)
    with pytest.raises(ValueError, match="dotted config keys"):
        r.register("c", 3, options=("x",))
    with pytest.raises(TunelabError, match="unknown thing 'z'; known: a, b"):
        r.get("z")
    assert r.names() == ("a", "b") and r.owners("data.x") == ["a"] and "a" in r
