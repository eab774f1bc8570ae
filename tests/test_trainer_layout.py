"""The Trainer's modules import one way (issue 27): the executor picks a runtime and calls the one
training skeleton; the skeleton imports the runtimes' interface; the runtimes never import the
skeleton or the executor back. Read from the source (module- and function-level imports alike),
so a lazy import inside a function cannot hide a loop."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[1] / "pipeline_components" / "trainer"
PACKAGE = "pipeline_components.trainer"


def _imports() -> dict[str, set[str]]:
    """module -> the trainer modules it imports, anywhere in its source. Imports of the config
    classes from component.py are left out: they are data, and move to their own module with
    issue 27's config/spec split (component.py itself imports the executor, lazily)."""
    modules = {p.stem for p in TRAINER.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules:
        for node in ast.walk(ast.parse((TRAINER / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [a.name for a in node.names]
                if node.module == PACKAGE:
                    graph[m] |= {n for n in names if n in modules}
                elif node.module.startswith(PACKAGE + "."):
                    target = node.module.rsplit(".", 1)[1]
                    config_only = all(n.endswith("Config") for n in names)
                    if not (target == "component" and config_only):
                        graph[m].add(target)
            elif isinstance(node, ast.Import):
                graph[m] |= {
                    a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith(PACKAGE + ".")
                }
        graph[m].discard(m)
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in graph[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


def test_the_trainer_modules_have_no_import_cycle():
    graph = _imports()
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError on a loop
    assert set(order) == set(graph)


def test_the_runtimes_never_import_the_skeleton_or_the_executor():
    graph = _imports()
    assert {"training", "runtime", "fit", "distributed"} <= _reaches(graph, "executor")
    assert "runtime" in graph["training"]
    assert not {"fit", "distributed", "steps", "executor"} & _reaches(graph, "training")
    for runtime in ("runtime", "fit", "distributed", "steps", "datasets", "plan"):
        assert not {"training", "executor"} & _reaches(graph, runtime), runtime
