"""The house's rules, checked on the source: imports flow one way (scripts -> rlhf_toy -> classic_rl) with no cycles,
classic RL imports no transformers, and no function in the packages is over 60 lines."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("classic_rl", "rlhf_toy")


def modules() -> dict[str, Path]:
    """Every module of the packages by its dotted name (a package's __init__.py by the package's)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a module imports, at any depth of its code ("from a.b import c" names a.b.c where that is
    a module, else a.b)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                         for alias in node.names}
    return {name for name in imported if name.split(".")[0] in (*PACKAGES, "transformers")}


def test_imports_flow_one_way_without_cycles():
    known = modules()
    graph = {name: {m for m in imports_of(path, known) if m in known} for name, path in known.items()}
    assert not {name for name, deps in graph.items() if name.startswith("classic_rl") and
                any(d.startswith("rlhf_toy") for d in deps)}, "classic_rl must not import rlhf_toy"
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            raise AssertionError(f"import cycle: {' -> '.join(on_path[on_path.index(name):] + [name])}")
        if name in done:
            return
        on_path.append(name)
        for dep in graph[name]:
            visit(dep)
        on_path.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_classic_rl_imports_no_transformers():
    known = modules()
    offenders = [name for name, path in known.items() if name.startswith("classic_rl") and
                 any(m.startswith("transformers") for m in imports_of(path, known))]
    assert not offenders


def test_no_function_is_over_60_lines():
    long = [f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in modules().values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60]
    assert not long
