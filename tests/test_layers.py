"""The layers import only downwards, and no module imports itself round a cycle.

Read from the source (every `import` and `from ... import`, including those
inside functions), so the rules hold whatever a test happened to import.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pedidos"

# layer: the pedidos layers its modules must never import
FORBIDDEN = {
    "pedidos.domain": ("pedidos",),  # the standard library only
    "pedidos.protocol": ("pedidos.server", "pedidos.processing", "pedidos.storage", "pedidos.client"),
    "pedidos.storage": ("pedidos.server", "pedidos.processing", "pedidos.protocol", "pedidos.client"),
    "pedidos.processing": ("pedidos.server", "pedidos.protocol", "pedidos.client", "pedidos.storage.sqlite"),
    "pedidos.events": ("pedidos.server", "pedidos.processing", "pedidos.storage", "pedidos.client"),
    "pedidos.client": ("pedidos.server", "pedidos.processing", "pedidos.storage"),
    "pedidos.server": ("pedidos.storage.sqlite", "pedidos.client"),
}


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imports_of(name: str) -> set[str]:
    path = PACKAGE.parent / Path(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in found if n.startswith("pedidos")}


MODULES = modules()
PROJECT = set(MODULES)


@pytest.mark.parametrize("name", [m for m in MODULES if not m.endswith("__main__")])  # that one runs
def test_every_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_each_layer_imports_only_what_it_may(name):
    rules = [bad for layer, bad in FORBIDDEN.items() if name == layer or name.startswith(layer + ".")]
    for imported in imports_of(name):
        for bad in (b for rule in rules for b in rule):
            assert not (imported == bad or imported.startswith(bad + ".")), f"{name} imports {imported}"


def test_there_is_no_import_cycle():
    graph = {name: {i for i in imports_of(name) if i in PROJECT and i != name} for name in MODULES}
    # a package's __init__ re-exporting its own modules is no cycle between layers
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name)


def test_no_type_checking_back_references():
    for path in PACKAGE.rglob("*.py"):
        assert "TYPE_CHECKING" not in path.read_text(), path
