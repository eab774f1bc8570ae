"""The component contract: a component registered through it alone is run, cached, shown in the
run table, run.json and report.html, and gets a CLI subcommand, with no edit to the runner, the
CLI or the report. The component is tests/class_counter/, a package laid out as every built-in
one is (config.py, component.py, executor.py, present.py): CONTRIBUTING.md's worked example.
Also: the registry's derived order and the layering of the packages."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from test_pipeline import newest_record, run_cli, write_config

from class_counter.component import COMPONENT, ClassCounter
from pipeline_components import cli
from pipeline_components.core import artifacts, config, fsutil, registry
from pipeline_components.core.artifacts import ArtifactType
from pipeline_components.core.component import Component, Input
from pipeline_components.core.errors import PipelineError


def executions(tmp_path) -> int:
    """How often ClassCounter's run() started: its execution records in pipeline_root."""
    return len(list((tmp_path / "root" / "ClassCounter").glob("*.json")))


@pytest.fixture
def counter():
    with registry.registered(COMPONENT) as component:
        yield component


@pytest.mark.slow
def test_a_registered_component_runs_caches_and_shows_everywhere(
    counter, make_dataset, tmp_path, capsys
):
    data = make_dataset(per_split=(8, 3, 3))
    path = write_config(tmp_path, data, class_counter={"min_per_class": 2})
    code, out, _ = run_cli(path, capsys)
    assert code == 0, out
    record = newest_record(tmp_path)
    entry = record["components"]["ClassCounter"]
    assert entry["status"] == "completed" and executions(tmp_path) == 1
    expected = {"train": {"circles": 8, "squares": 8}, "test": {"circles": 3, "squares": 3}}
    for split, per in expected.items():
        assert entry["result"]["counts"][split] == per
    stats = fsutil.read_json(
        fsutil.join(record["components"]["ExampleGen"]["output_dir"], "stats.json")
    )
    for split, s in stats["splits"].items():
        assert entry["result"]["counts"][split] == s["per_class"]
    assert entry["outputs"]["counts"].endswith("counts.json")
    assert fsutil.read_json(entry["outputs"]["counts"]) == entry["result"]["counts"]
    assert record["config"]["class_counter"] == {"min_per_class": 2}
    # the run table and the report show it
    row = next(line for line in out.splitlines() if line.startswith("ClassCounter"))
    assert "completed" in row and "train: circles=8 squares=8" in row
    html = fsutil.read_text(record["report"])
    assert "<h2>Class counts</h2>" in html and "train: circles=8 squares=8" in html
    assert html.count("ClassCounter") >= 2  # its section and its lineage row

    # unchanged inputs: cached, not run again
    code, out, _ = run_cli(path, capsys)
    again = newest_record(tmp_path)["components"]["ClassCounter"]
    assert code == 0 and again["status"] == "cached" and executions(tmp_path) == 1
    # its own config is part of its key: a change re-runs it (and only it)
    path = write_config(tmp_path, data, name="q.yaml", class_counter={"min_per_class": 3})
    code, out, _ = run_cli(path, capsys)
    record = newest_record(tmp_path)
    assert code == 0 and record["components"]["ClassCounter"]["status"] == "completed"
    assert record["components"]["Trainer"]["status"] == "cached"
    assert executions(tmp_path) == 2
    # a failure inside it fails the run with its one-line message
    path = write_config(tmp_path, data, name="r.yaml", class_counter={"min_per_class": 50})
    code, out, err = run_cli(path, capsys)
    assert code == 1 and "ClassCounter failed: train: class circles has < 50" in err


def test_generic_cli_subcommand_and_config_section(counter, tmp_path, capsys):
    from evalfixtures import solid_png
    from evalfixtures import write_split as write  # tiny TFRecords without Beam

    ex = tmp_path / "ex"
    for split in artifacts.SPLITS:
        write(
            ex, split, [(solid_png(0.1), 0), (solid_png(0.9), 1), (solid_png(0.8), 1)], ["a", "b"]
        )
    assert "count-classes" in cli.usage()

    def count(out: str, *overrides: str) -> int:
        args = ["--examples", str(ex), "--output", str(tmp_path / out), *overrides]
        return cli.main(["count-classes", *args])

    code = count("o")
    assert code == 0
    assert "test: a=1 b=2" in capsys.readouterr().out
    counts = json.loads((tmp_path / "o" / "counts.json").read_text())
    assert counts["validation"] == {"a": 1, "b": 2}
    # bare key=value overrides mean its own section, and its ranges are checked
    code = cli.main(
        [
            "count-classes",
            "--examples",
            str(ex),
            "--output",
            str(tmp_path / "p"),
            "min_per_class=-1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "class_counter.min_per_class: must be >= 0, got -1" in err
    code = cli.main(
        ["count-classes", "--examples", str(ex), "--output", str(tmp_path / "q"), "min_per_class=2"]
    )
    assert code == 1 and "class a has < 2" in capsys.readouterr().err
    assert (
        registry.config_from_dict({"class_counter": {"min_per_class": 4}})
        .sections["class_counter"]
        .min_per_class
        == 4
    )


def test_a_component_package_is_its_code():
    """The cache key covers a component's whole package (config, spec, executor, present), in
    pipeline_components or outside it (a plugin; this test's package): an edit of its executor
    re-runs it."""
    from pipeline_components.core import codeprint

    files = {p.rsplit("/", 1)[-1] for p in codeprint.seeds_for(type(COMPONENT).__module__)}
    assert {"config.py", "component.py", "executor.py", "present.py"} <= files
    assert COMPONENT.code_fingerprint()["files"] >= 5


def test_unregistered_section_is_an_unknown_key():
    with pytest.raises(PipelineError, match="unknown key 'class_counter'"):
        registry.config_from_dict({"class_counter": {}}, source="p.yaml")


def test_pipeline_order_is_derived_from_artifact_types(counter):
    names = [c.name for c in registry.pipeline_order()]
    assert names[:10] == [
        "ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "FeatureGen", "Tuner",
        "Trainer", "Evaluator", "InfraValidator", "Pusher",
    ]  # fmt: skip
    assert names.index("ClassCounter") > names.index("ExampleGen")
    # a failing validation stops everything that spends time on the backbone, in a DAG too
    edges = registry.upstream()
    for spender in ("FeatureGen", "Tuner", "Trainer"):
        assert "ExampleValidator" in edges[spender], spender


def test_runs_before_puts_a_gate_ahead_of_a_producer_it_feeds_nothing():
    """Registered last and consumed by nobody, a gate that runs_before the Model still runs
    before the Trainer (and the Trainer after it in upstream(), the DAG's edges)."""

    class Gate(Component):
        name = "Gate"
        inputs = {"examples": Input(artifacts.EXAMPLES)}
        runs_before = (artifacts.MODEL,)

    with registry.registered(Gate()):
        names = [c.name for c in registry.pipeline_order()]
        assert names.index("ExampleGen") < names.index("Gate") < names.index("Trainer")
        edges = registry.upstream()
        assert edges["Trainer"] == {"ExampleGen", "ExampleValidator", "FeatureGen", "Tuner", "Gate"}
        assert edges["Gate"] == {"ExampleGen"}


def test_registry_refuses_clashes_and_cycles():
    class Twin(ClassCounter):
        name = "Trainer"

    with pytest.raises(PipelineError, match="two components are named Trainer"):
        registry.register(Twin())

    a_type, b_type = ArtifactType("A"), ArtifactType("B")

    class A(Component):
        name, inputs, outputs = "A", {"b": Input(b_type)}, {"a": a_type}

    class B(Component):
        name, inputs, outputs = "B", {"a": Input(a_type)}, {"b": b_type}

    with (
        registry.registered(A()),
        registry.registered(B()),
        pytest.raises(PipelineError, match="cycle: A, B"),
    ):
        registry.pipeline_order()
    assert "A" not in [c.name for c in registry.components()]


def test_every_numeric_option_declares_a_range_and_every_option_a_doc():
    """Every numeric key of every section is range-checked (a declared `option` range), and
    every key has a `doc`: the help of its flag, or of its key in --help's list of the others."""
    import typing

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            yield f"{prefix}.{f.name}", f.metadata, inner[0]
            if dataclasses.is_dataclass(inner[0]):
                yield from walk(inner[0], f"{prefix}.{f.name}")

    options = [
        option
        for c in registry.components()
        if c.config_class
        for option in walk(c.config_class, c.config_section)
    ]
    unchecked = [
        where for where, meta, tp in options if tp in (int, float) and not config.has_range(meta)
    ]
    assert unchecked == []
    assert [where for where, meta, _ in options if not meta.get("doc")] == []


def test_serving_does_not_import_the_orchestration_or_the_components():
    code = (
        "import sys, serving.server, serving.client\n"
        "bad = [m for m in sys.modules if m.startswith(('pipeline_components.orchestration',"
        " 'pipeline_components.trainer', 'pipeline_components.evaluator',"
        " 'pipeline_components.example_gen', 'pipeline_components.pusher',"
        " 'pipeline_components.infra_validator', 'pipeline_components.statistics_gen',"
        " 'pipeline_components.schema_gen', 'pipeline_components.example_validator',"
        " 'apache_beam'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_imports_neither_tensorflow_nor_beam():
    code = (
        "import sys\nfrom pipeline_components import cli\ncli.usage()\n"
        "from pipeline_components.core import commandline, registry\n"
        "[commandline.parser(c).format_help() for c in registry.components() if c.command]\n"
        "print([m for m in ('tensorflow', 'apache_beam', 'keras') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_wheel_holds_every_package():
    """The Docker image installs the wheel: every sub-package (core, each component, ...) must
    be in it, not only the two top-level names."""
    import os

    import setuptools

    tomllib = pytest.importorskip("tomllib")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)["tool"]["setuptools"]
    packages = cfg.get("packages")
    if isinstance(packages, dict):
        packages = setuptools.find_packages(repo, **packages["find"])
    wanted = {
        os.path.relpath(d, repo).replace(os.sep, ".")
        for top in ("pipeline_components", "serving")
        for d, _dirs, files in os.walk(os.path.join(repo, top))
        if "__init__.py" in files
    }
    assert wanted and not wanted - set(packages)
    for module in registry.BUILTIN:
        assert module.rsplit(".", 1)[0] in packages
