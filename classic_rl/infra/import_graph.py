"""The project's own import graph, read from the source with ast: what tests/test_architecture.py checks (one way, no
cycles) and scripts/draw_design.py draws (docs/house.png)."""

from __future__ import annotations

import ast
from pathlib import Path


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module of the packages under root by its dotted name (a package's __init__.py by the package's)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(path: Path, known: dict[str, Path]) -> set[str]:
    """The absolute module names a file imports, at any depth of its code ("from a.b import c" names a.b.c where that is
    one of the known modules, else a.b)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                         for alias in node.names}
    return imported


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    known = project_modules(root, packages)
    return {name: {m for m in imported_names(path, known) if m in known} for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done, on_path = set(), []

    def visit(name: str) -> list[str] | None:
        if name in on_path:
            return on_path[on_path.index(name):] + [name]
        if name in done:
            return None
        on_path.append(name)
        for dep in sorted(graph[name]):
            if cycle := visit(dep):
                return cycle
        on_path.pop()
        done.add(name)
        return None

    return next((cycle for name in graph if (cycle := visit(name))), None)
