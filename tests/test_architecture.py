"""The package's shape, read from the source (ast): who may import what, no import cycles, and
modules and classes of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tracker"
DRIVERS = {"sqlite3", "sqlite_utils"}
CORE = {"tracker.events", "tracker.state", "tracker.records", "tracker.render", "tracker.errors"}
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 250


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str] | None = None) -> set[str]:
    """Every module ``path`` imports (at any level, under TYPE_CHECKING too), by full name; a
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    known = set(modules()) if known is None else known
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def test_modules_are_found() -> None:
    names = set(modules())
    assert {"tracker.events", "tracker.storage", "tracker.http.app", "tracker.cli"} <= names


def test_nothing_outside_the_storage_package_imports_a_database_driver() -> None:
    offenders = {
        name: sorted(imported & DRIVERS)
        for name, path in modules().items()
        if not (name == "tracker.storage" or name.startswith("tracker.storage."))
        for imported in [{i.split(".")[0] for i in imports(name, path)}]
        if imported & DRIVERS
    }
    assert offenders == {}


def test_one_backend_never_imports_the_other() -> None:
    """What both need (the projection's rows, shared SQL) lives beside the interface."""
    backends = ("tracker.storage.sqlite", "tracker.storage.postgres")
    offenders = {
        name: sorted(i for i in imports(name, path) if i.startswith(other))
        for name, path in modules().items()
        for own, other in (backends, backends[::-1])
        if name == own or name.startswith(own + ".")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_pure_core_imports_nothing_from_the_shell() -> None:
    found = modules()
    offenders = {
        name: sorted(
            i for i in imports(name, found[name]) if i.startswith("tracker") and i not in CORE
        )
        for name in CORE
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` meets (each as the path that closes it)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_there_is_no_import_cycle() -> None:
    found = modules()
    graph = {
        name: {i for i in imports(name, path) if i in found and i != name}
        for name, path in found.items()
    }
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    # two modules that import each other, one of them inside a function (as app and forward did)
    (tmp_path / "a.py").write_text("from tracker.http import b\n")
    (tmp_path / "b.py").write_text("def f():\n    import tracker.http.a\n")
    pair = {"tracker.http.a", "tracker.http.b"}
    graph = {name: imports(name, tmp_path / f"{name[-1]}.py", pair) & pair for name in pair}
    assert find_cycles(graph) == [["tracker.http.a", "tracker.http.b", "tracker.http.a"]]


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
        and name not in {"tracker.events"}  # the v1/v2 payload Structs, one per event type
    }
    assert long == {}


def test_no_class_is_longer_than_the_limit() -> None:
    long = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    long[f"{name}.{node.name}"] = size
    assert long == {}
