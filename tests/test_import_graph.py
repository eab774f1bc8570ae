"""No import cycle in pipeline_components/ or serving/: the real import graph, read from the
sources (AST), imports inside functions included (issue 27). A cycle is a layering mistake: an
executor reaching back into its spec, core reaching up into the registry."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable

from pipeline_components.core import codeprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline_components", "serving")


def modules(root: str, packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """{dotted module name: file} of every .py file of the packages under root."""
    found = {}
    for package in packages:
        for folder, _dirs, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def import_graph(root: str, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """{module: the modules of the packages it imports}."""
    found = modules(root, packages)
    return {  # the parser the cache keys use: functions' and relative imports included
        name: {m for m in codeprint.imported_modules(path, name) if m in found and m != name}
        for name, path in found.items()
    }


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def test_no_import_cycle_in_the_packages():
    assert sorted(map(sorted, cycles(import_graph(REPO)))) == []


def test_the_graph_holds_imports_inside_functions():
    graph = import_graph(REPO)
    # the specs import their executors only inside methods: these are edges all the same
    assert (
        "pipeline_components.evaluator.executor" in graph["pipeline_components.evaluator.component"]
    )
    assert "pipeline_components.core.registry" in graph["pipeline_components.core.commandline"]


def test_a_cycle_through_a_function_level_or_relative_import_is_found(tmp_path):
    pkg = tmp_path / "pipeline_components" / "toy"
    pkg.mkdir(parents=True)
    (tmp_path / "pipeline_components" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "component.py").write_text(
        textwrap.dedent(
            """
            def run():
                from pipeline_components.toy import executor
                return executor
            """
        )
    )
    (pkg / "executor.py").write_text("from .component import run\n")
    (pkg / "present.py").write_text("from . import config\n")
    (pkg / "config.py").write_text("X = 1\n")
    found = cycles(import_graph(str(tmp_path), ["pipeline_components"]))
    assert found == {
        frozenset({"pipeline_components.toy.component", "pipeline_components.toy.executor"})
    }


MAX_FUNCTION_LINES = 60


def long_functions(root: str, packages: Iterable[str]) -> list[str]:
    """`file:line name (N lines)` of every function or method over MAX_FUNCTION_LINES."""
    import ast

    found = []
    for path in sorted(modules(root, packages).values()):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    where = os.path.relpath(path, root)
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_60_lines():
    """Issue 27's rule, kept: a function that grows past a screen is split where it has seams
    (CONTRIBUTING.md, Style). Tests are exempt; the benchmarks are not."""
    assert long_functions(REPO, (*PACKAGES, "benchmarks")) == []


def test_the_length_rule_sees_a_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}")
    assert long_functions(str(tmp_path), ("pkg",)) == ["pkg/m.py:5 long (61 lines)"]
