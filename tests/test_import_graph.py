"""The modules of channels/ import each other in one direction only.

Every intra-package import counts as an edge: top-level, under ``if TYPE_CHECKING:``, and lazy
imports inside functions, so that a cycle cannot hide behind a deferred import. The package's
own ``__init__`` is the public facade: no module inside channels/ imports a name from it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "channels"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int, str]]:
    """(imported module, line, imported name or "") for each intra-package import."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield alias.name, node.lineno, ""
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, is_package, node)
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                # `from pkg import sub` imports the submodule pkg.sub, not a name of pkg
                sub = f"{target}.{alias.name}"
                yield (sub, node.lineno, "") if sub in modules else (target, node.lineno, alias.name)


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    facade: list[str] = []
    for name, path in modules.items():
        for target, line, imported in _imports(name, path, modules):
            if target == PACKAGE and name != PACKAGE:
                facade.append(f"{path.relative_to(ROOT.parent)}:{line} imports {imported!r}")
            elif target in modules and target != name:
                edges[name].add(target)
    return edges, facade


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _describe(component: list[str], edges: dict[str, set[str]]) -> str:
    members = set(component)
    lines = [f"  {m} -> {', '.join(sorted(edges[m] & members))}" for m in component]
    return f"cycle of {len(component)} modules:\n" + "\n".join(lines)


def test_the_graph_sees_imports() -> None:
    edges, _ = _graph()
    assert "channels.endpoint" in edges
    assert "channels.client.socket" in edges
    assert "channels.socket" in edges["channels.endpoint"]


def test_no_import_cycles_in_channels() -> None:
    edges, _ = _graph()
    cycles = _cycles(edges)
    assert not cycles, "\n".join(_describe(c, edges) for c in cycles)


def test_nothing_inside_channels_imports_from_the_facade() -> None:
    _, facade = _graph()
    assert not facade, "channels/__init__.py is the public facade:\n" + "\n".join(facade)


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
