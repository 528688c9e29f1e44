"""The house's rules, checked on the source: imports flow one way (scripts -> rlhf_toy -> classic_rl) with no cycles,
classic RL imports no transformers, and no function in the packages is over 60 lines."""

import ast

from classic_rl.infra.import_graph import find_cycle, import_graph, imported_names, project_modules
from tests.conftest import ROOT

PACKAGES = ("classic_rl", "rlhf_toy")


def test_imports_flow_one_way_without_cycles():
    graph = import_graph(ROOT, PACKAGES)
    assert sum(map(len, graph.values())) > 200  # the graph is read, not empty
    assert not [name for name, deps in graph.items() if name.startswith("classic_rl") and any(d.startswith("rlhf_toy") for d in deps)]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) in (["a", "b", "c", "a"], ["b", "c", "a", "b"])
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_classic_rl_imports_no_transformers():
    known = project_modules(ROOT, PACKAGES)
    offenders = [name for name, path in known.items() if name.startswith("classic_rl") and
                 any(m.split(".")[0] == "transformers" for m in imported_names(path, known))]
    assert not offenders


def test_no_function_is_over_60_lines():
    long = [f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in project_modules(ROOT, PACKAGES).values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60]
    assert not long


def test_the_house_drawn_from_the_source_has_no_folders_that_import_each_other(tmp_path, monkeypatch, capsys):
    """scripts/draw_design.py lays the folders out in rows, each above what it imports, and refuses a cycle among them."""
    from tests.conftest import run_script
    code, out, err = run_script("draw_design.py", ["--out-dir", str(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "house.png").stat().st_size > 10_000 and (tmp_path / "grpo_step.png").stat().st_size > 10_000
