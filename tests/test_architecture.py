"""The architecture rules of DESIGN.md, checked on the source: module size, no import cycles, layers point down.

Imports are read with :mod:`ast` (nothing is imported). Each test collects every violation of its rule and
reports them all in one message.

Layers (``DESIGN.md``: ``cli → run → refine/coarse/track/train → nets/synth/eval → render/io/mesh/geometry →
types``): a module may import modules of its own layer or of lower ones, never of higher ones; ``train`` never
imports ``refine``; nothing imports ``cli``. Imports anywhere in a module count for the layers (a function-level
import is still a dependency); the cycle check uses the imports that run when the module is imported (module
level, outside ``if TYPE_CHECKING:``), since only those can make an import circle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "meshpose"
MAX_LINES = 600

#: Layer of each top-level part of the package (higher may import lower, never the reverse).
LAYERS: dict[str, int] = {
    # the core types; ``meshpose`` itself only re-exports them
    "": 0,
    "types": 0,
    "errors": 0,  # the typed input errors every part raises; imports nothing from meshpose
    # building blocks
    "geometry": 1,
    "mesh": 1,
    "io": 1,
    "render": 1,
    # learned modules, scene engine, metrics, drawing
    "nets": 2,
    "synth": 2,
    "eval": 2,
    "viz": 2,
    # methods and training
    "refine": 3,
    "coarse": 3,
    "track": 3,
    "train": 3,
    # jobs and executors; the demo (a job on the embedded example)
    "run": 4,
    "demo": 4,
    # the command line
    "cli": 5,
}
#: Pairs (importer part, imported part) forbidden whatever their layers.
FORBIDDEN: set[tuple[str, str]] = {("train", "refine")}
#: Parts nothing may import.
TOP_ONLY = {"cli"}
#: Optional heavy dependencies: imported inside the functions that use them, never when a module is imported
#: (the doctests of every module are collected, and ``import meshpose.x`` must stay cheap without them).
LAZY_ONLY = {"mitsuba", "ray"}


@dataclass(frozen=True)
class Import:
    """One import statement's target module, where it is and whether it runs when the importer is imported."""

    target: str
    line: int
    module_level: bool


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (``pkg/__init__.py`` is ``pkg``)."""
    out: dict[str, Path] = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.ImportFrom, name: str, modules: dict[str, Path]) -> str:
    """The dotted module an ``ImportFrom`` of ``node.module`` in module ``name`` refers to (relative ones too)."""
    if not node.level:
        return node.module or ""
    is_package = modules[name].name == "__init__.py"
    base = name.split(".")
    base = base if is_package else base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(name: str, modules: dict[str, Path]) -> list[Import]:
    """The meshpose modules that module ``name`` imports, each with its line and whether at module level.

    ``from a.b import c`` targets the module ``a.b.c`` when that is a module, otherwise ``a.b``.
    """
    tree = ast.parse(modules[name].read_text(encoding="utf-8"), filename=str(modules[name]))
    found: list[Import] = []

    def add(target: str, line: int, module_level: bool) -> None:
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            found.append(Import(target, line, module_level))

    def visit(node: ast.AST, module_level: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            module_level = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)  # only for type checkers: no import at run time
            for child in node.orelse:
                visit(child, module_level)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, module_level)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, name, modules)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno, module_level)
        for child in ast.iter_child_nodes(node):
            visit(child, module_level)

    visit(tree, True)
    return found


def part_of(module: str) -> str:
    """The top-level part of a dotted module name (``meshpose.render.gl`` → ``render``; the root → ``""``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


def test_no_module_over_the_size_limit() -> None:
    modules = module_files()
    too_long = []
    for _name, path in modules.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            too_long.append(f"{_rel(path)}: {n} lines")
    too_long.sort()
    if too_long:
        pytest.fail(
            f"{len(too_long)} module(s) over {MAX_LINES} lines (split by concern):\n" + "\n".join(too_long),
            pytrace=False,
        )


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def test_strongly_connected_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    components = {tuple(c) for c in strongly_connected(graph)}
    assert ("a", "b", "c") in components
    assert ("d",) in components and ("e",) in components


def test_no_import_cycles() -> None:
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    where: dict[tuple[str, str], int] = {}
    for name in modules:
        for imp in imports_of(name, modules):
            if imp.module_level and imp.target in modules:
                graph[name].add(imp.target)
                where.setdefault((name, imp.target), imp.line)
    cycles = []
    for component in strongly_connected(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        edges = [
            f"    {a} -> {b} ({_rel(modules[a])}:{where[(a, b)]})"
            for a in component
            for b in sorted(graph[a] & members)
        ]
        cycles.append(f"cycle among {', '.join(component)}:\n" + "\n".join(edges))
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s) (module-level imports):\n" + "\n".join(cycles), pytrace=False)


def test_layers_point_down() -> None:
    modules = module_files()
    problems = []
    for name, path in modules.items():
        part = part_of(name)
        if part not in LAYERS:
            problems.append(f"{_rel(path)}: part {part!r} has no layer in tests/test_architecture.py LAYERS")
            continue
        for imp in imports_of(name, modules):
            target = part_of(imp.target)
            where = f"{_rel(path)}:{imp.line}: {name} imports {imp.target}"
            if target == part:
                continue
            if part == "types":
                problems.append(f"{where} (types import nothing of meshpose)")
            elif target in TOP_ONLY:
                problems.append(f"{where} (nothing may import {target})")
            elif (part, target) in FORBIDDEN:
                problems.append(f"{where} ({part} must never import {target})")
            elif target not in LAYERS:
                problems.append(f"{where} (part {target!r} has no layer)")
            elif LAYERS[target] > LAYERS[part]:
                problems.append(f"{where} (layer {LAYERS[part]} imports higher layer {LAYERS[target]})")
    if problems:
        unique = sorted(set(problems))
        pytest.fail(f"{len(unique)} layer violation(s):\n" + "\n".join(unique), pytrace=False)


def _module_level_external(path: Path) -> list[tuple[str, int]]:
    """Top-level package names imported when the module at ``path`` is imported, with their lines."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.module.split(".")[0], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def test_optional_heavy_dependencies_are_imported_lazily() -> None:
    problems = [
        f"{_rel(path)}:{line}: imports {name} at module level (import it inside the function that uses it)"
        for path in module_files().values()
        for name, line in _module_level_external(path)
        if name in LAZY_ONLY
    ]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
