"""Import layers of the production packages, read from the source with ``ast`` (nothing is imported).

Layers, lowest first: ``rules`` and ``adapters`` (the product's parts), ``connector`` (the application that
wires them), ``sandbox`` (emulators of the outside systems, independent of the product). So:

* ``rules/``, ``adapters/`` and ``sandbox/`` import nothing from ``connector/``;
* ``sandbox/`` imports nothing from ``adapters/`` (the emulators read their seed data with their own
  ``sandbox/dataset.py``, so a product bug cannot hide behind a test that compares the product with
  itself);
* no import cycle among the modules of ``connector``, ``adapters``, ``rules`` and ``sandbox``.

Every import counts for the layers: top level, inside functions and methods, relative ones, and those under
``if TYPE_CHECKING:`` (a type-only import is still a dependency). The cycle check leaves out only the
``if TYPE_CHECKING:`` ones, which never run, so a type annotation may name a module that imports this one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("connector", "adapters", "rules", "sandbox")

# Upward imports allowed, as (importing module, imported module): none since the architecture work
# (issue 12). The sandbox must never get one.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()

# Import cycles allowed, each as the sorted module names of one strongly connected component: none.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The longest known module that ``name`` (a module or a module.attribute) starts with."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) bodies."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for statement in node.body:
                inside |= {id(n) for n in ast.walk(statement) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inside


def _imports(module: str, path: Path, *, runtime_only: bool) -> set[str]:
    """Production modules that ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    skip = _type_checking_only(tree) if runtime_only else set()
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (found := _resolve(alias.name)) is not None:
                    targets.add(found)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
                found = _resolve(f"{base}.{alias.name}") if alias.name != "*" else _resolve(base)
                if found is not None:
                    targets.add(found)
    targets.discard(module)
    return targets


GRAPH = {module: _imports(module, path, runtime_only=False) for module, path in MODULES.items()}
RUNTIME_GRAPH = {module: _imports(module, path, runtime_only=True) for module, path in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".", 1)[0]


def _upward_imports() -> set[tuple[str, str]]:
    bad: set[tuple[str, str]] = set()
    for module, targets in GRAPH.items():
        for target in targets:
            if _layer(module) in ("rules", "adapters", "sandbox") and _layer(target) == "connector":
                bad.add((module, target))
            if _layer(module) == "sandbox" and _layer(target) == "adapters":
                bad.add((module, target))
    return bad


def _cycles() -> set[tuple[str, ...]]:
    """Strongly connected components of RUNTIME_GRAPH with more than one module (Tarjan, iterative)."""
    graph = RUNTIME_GRAPH
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: set[tuple[str, ...]] = set()
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    components.add(tuple(sorted(members)))
    return components


def test_the_walk_sees_every_package_and_function_level_imports():
    for package in PACKAGES:
        assert package in MODULES and sum(m.startswith(package + ".") for m in MODULES) >= 3, package
    # a function-level relative import (`from . import seed as seeding` inside create_server)
    assert "sandbox.bitrix24.seed" in GRAPH["sandbox.bitrix24.cli"]
    assert "sandbox.dataset" in GRAPH["sandbox.bitrix24.seed"] and "sandbox.dataset" in GRAPH["sandbox.amocrm.seed"]
    # a function-level absolute import (`from connector.executor import execute` inside _sync)
    assert "connector.executor" in GRAPH["connector.pipeline"]
    # a type-only import counts for the layers, not for cycles (sandbox/amocrm/api.py names Account)
    assert "sandbox.amocrm.account" in GRAPH["sandbox.amocrm.api"]
    assert "sandbox.amocrm.account" not in RUNTIME_GRAPH["sandbox.amocrm.api"]


def test_no_new_upward_import():
    found = _upward_imports()
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, "upward imports (rules/adapters/sandbox -> connector, sandbox -> adapters): " + ", ".join(
        f"{a} -> {b}" for a, b in new)
    gone = sorted(KNOWN_VIOLATIONS - found)
    assert not gone, "remove from KNOWN_VIOLATIONS, the import is gone: " + ", ".join(f"{a} -> {b}" for a, b in gone)


def test_sandbox_imports_neither_adapters_nor_connector_and_has_no_allowance():
    assert not [pair for pair in KNOWN_VIOLATIONS if _layer(pair[0]) == "sandbox"]
    leaks = sorted((m, t) for m, targets in GRAPH.items() if _layer(m) == "sandbox"
                   for t in targets if _layer(t) in ("adapters", "connector"))
    assert leaks == []


def test_no_import_cycle():
    cycles = _cycles()
    new = sorted(cycles - KNOWN_CYCLES)
    assert not new, "import cycles: " + "; ".join(" <-> ".join(c) for c in new)
    assert not (KNOWN_CYCLES - cycles), "remove from KNOWN_CYCLES, the cycle is gone"


def test_the_checks_catch_what_they_are_for(monkeypatch):
    """The checks fail on a planted upward import and a planted cycle (so a pass means something)."""
    planted = {m: set(t) for m, t in GRAPH.items()}
    planted["sandbox.dataset"].add("adapters.csv_files")
    planted["rules.language"].add("connector.store")
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", planted)
    runtime = {m: set(t) for m, t in RUNTIME_GRAPH.items()}
    runtime["connector.store"].add("connector.cli")
    runtime["connector.cli"].add("connector.store")
    monkeypatch.setattr(sys.modules[__name__], "RUNTIME_GRAPH", runtime)
    assert {("sandbox.dataset", "adapters.csv_files"), ("rules.language", "connector.store")} <= (
        _upward_imports() - KNOWN_VIOLATIONS)
    assert any({"connector.store", "connector.cli"} <= set(c) for c in _cycles())
