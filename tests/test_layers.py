"""The layers import only downwards, and no module imports itself round a cycle.

Read from the source (every `import` and `from ... import`, including those
inside functions), so the rules hold whatever a test happened to import.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from conftest import has_open, wait_for, workers_ready, writer_pid

PACKAGE = Path(__file__).resolve().parent.parent / "pedidos"

# layer: the pedidos layers its modules must never import
FORBIDDEN = {
    "pedidos.domain": ("pedidos",),  # the standard library only
    "pedidos.background": ("pedidos",),
    "pedidos.descriptors": ("pedidos",),
    "pedidos.protocol": ("pedidos.server", "pedidos.processing", "pedidos.storage", "pedidos.client"),
    "pedidos.storage": ("pedidos.server", "pedidos.processing", "pedidos.protocol", "pedidos.client"),
    "pedidos.processing": ("pedidos.server", "pedidos.protocol", "pedidos.client", "pedidos.storage.sqlite"),
    "pedidos.events": ("pedidos.server", "pedidos.processing", "pedidos.storage", "pedidos.client"),
    "pedidos.client": ("pedidos.server", "pedidos.processing", "pedidos.storage"),
    "pedidos.server": ("pedidos.storage.sqlite", "pedidos.client"),
    # What the panel reads of the server is handed to it (PanelSource).
    "pedidos.panel": ("pedidos.server", "pedidos.processing", "pedidos.storage", "pedidos.client"),
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


@pytest.mark.parametrize("package", sorted(p.parent for p in PACKAGE.rglob("__init__.py")), ids=str)
def test_each_package_docstring_names_every_module_in_it(package: Path) -> None:
    # A reader starts at the folder's docstring: a module it leaves out is one
    # they will not know to look for (six packages had drifted so).
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    names = [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    names += [p.name for p in package.iterdir() if (p / "__init__.py").exists()]
    missing = [name for name in sorted(names) if not re.search(rf"`{name}[`/.(]", doc)]
    assert missing == [], f"{package}/__init__.py does not name {missing}"


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


def type_checking_imports(tree: ast.AST) -> list[tuple[str, str]]:
    """(module imported, statement) for each statement under `if TYPE_CHECKING:`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom):
                    found.append((inner.module or "", ast.unparse(inner)))
                elif isinstance(inner, ast.Import):
                    found += [(alias.name, ast.unparse(inner)) for alias in inner.names]
                else:
                    found.append(("?", ast.unparse(inner)))
    return found


def test_no_type_checking_back_references():
    # `if TYPE_CHECKING:` may import a standard module that only annotations use
    # (the worker and writer processes import no event loop they never run);
    # never a module of pedidos: that would be an import cycle kept out of sight.
    for path in PACKAGE.rglob("*.py"):
        for module, statement in type_checking_imports(ast.parse(path.read_text())):
            assert module != "?" and module.split(".")[0] != "pedidos", (path, statement)


def maps_library(pid: int, name: str) -> bool:
    """Whether process `pid` has the shared library `name` (e.g. `_asyncio`) mapped."""
    return f"/{name}." in Path(f"/proc/{pid}/maps").read_text()


def test_the_writer_and_the_workers_load_no_event_loop(server, connect):
    # A worker or the writer imports only what it runs: no asyncio, nor the ssl
    # it brings (about 5 MB less each, and a quicker start and replacement).
    # Seen in the libraries each process has mapped after an order went through
    # them all; the server's own, which has both, shows that the check sees them.
    client = connect()
    order = client.ask({"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"})
    done = client.ask({"accion": "esperar", "id": order["id"], "timeout": 20})
    assert done["pedido"]["estado"] == "listo", done
    writer = writer_pid(server)
    workers = wait_for(lambda: len(workers_ready(server)) == 2 and workers_ready(server))
    assert writer is not None and has_open(writer, server.db)
    assert maps_library(server.pid, "_asyncio") and maps_library(server.pid, "_ssl")
    for pid in (writer, *workers):
        assert not maps_library(pid, "_asyncio") and not maps_library(pid, "_ssl"), pid
