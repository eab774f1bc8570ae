"""`transfer-pipeline validate-data`: data validation alone, on an ExampleGen output folder.

    transfer-pipeline validate-data --examples O --output D [--schema S] [--baseline-stats P]
        [--config FILE] [section.key=value ...] [-- BEAM_ARGS]

Runs the registered StatisticsGen, SchemaGen and ExampleValidator (the same `run` a pipeline
run uses) into `D/statistics/`, `D/schema/` and `D/anomalies/`. Without `--schema` the schema is
inferred from these statistics (D/schema/schema.yaml: the file to edit and commit); without
`--baseline-stats` (a statistics.json, or a folder holding one) nothing is compared with a
previous run. Exit 1 with every failing anomaly in one line; warnings are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pipeline_components.core import artifacts, commandline, data_stats, fsutil, registry
from pipeline_components.core.artifacts import Artifact, ArtifactType
from pipeline_components.core.component import Component, ExecutionContext
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError

DEFAULT_OUTPUT = "data_validation"  # the deprecated default, in the current directory


def _producer(artifact_type: ArtifactType) -> Component[Any]:
    for component in registry.components():
        if any(t.name == artifact_type.name for t in component.outputs.values()):
            return component
    raise PipelineError(f"no registered component produces {artifact_type.name}")


def _input_name(component: Component[Any], artifact_type: ArtifactType) -> str:
    return next(n for n, s in component.inputs.items() if s.type.name == artifact_type.name)


def _run(
    component: Component[Any],
    pipeline: PipelineConfig,
    inputs: dict[str, Artifact],
    output_dir: str,
    external: dict[str, Any] | None = None,
) -> tuple[dict, ExecutionContext[Any]]:
    """Run one component on `inputs` ({artifact type name: artifact})."""
    named: dict[str, Artifact | None] = {
        _input_name(component, artifact.type): artifact for artifact in inputs.values()
    }
    ctx = ExecutionContext(pipeline, component.section_of(pipeline), named, output_dir)
    ctx.external = external or {}
    return component.run(ctx), ctx


def build_parser() -> argparse.ArgumentParser:
    p = commandline.new_parser(
        "validate-data",
        "Statistics, schema and anomalies of an ExampleGen output folder.",
        "Beam options for the statistics go after --.",
    )
    p.add_argument("--examples", required=True, metavar="URI", help="an ExampleGen output folder")
    p.add_argument("--output", metavar="DIR", help="writes DIR/statistics, schema, anomalies")
    p.add_argument("--schema", metavar="FILE", help="a schema.yaml to use as it is (else inferred)")
    p.add_argument(
        "--baseline-stats",
        metavar="PATH",
        help="statistics.json of a previous run (or its folder) to compare with",
    )
    commandline.add_config_arguments(p, None)
    return p


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Its command line (and the Beam options after `--`)."""
    own, beam_args = commandline.split_beam_args(argv)
    args = build_parser().parse_intermixed_args(own)
    if args.output is None:
        old = commandline.deprecated("validate-data", commandline.NO_OUTPUT)
        assert old is not None
        old.warn()
        args.output = DEFAULT_OUTPUT
    return args, beam_args


def _pipeline(args: argparse.Namespace, beam_args: list[str], stats_gen: Component[Any]) -> Any:
    flags = {f"{stats_gen.config_section}.beam_args": beam_args} if beam_args else {}
    pipeline, _ = commandline.load_config(args.config, args.overrides, None, flags)
    schema_gen = _producer(artifacts.SCHEMA)
    if schema_gen.config_section:  # standalone: a given schema, or one inferred here
        section = schema_gen.section_of(pipeline)
        pipeline.sections[schema_gen.config_section] = dataclasses.replace(
            section, schema_path=args.schema, reuse_served=False
        )
    return pipeline


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(list(argv or []))
    stats_gen = _producer(artifacts.EXAMPLE_STATISTICS)
    schema_gen = _producer(artifacts.SCHEMA)
    validator = _producer(artifacts.EXAMPLE_ANOMALIES)
    pipeline = _pipeline(args, beam_args, stats_gen)
    baseline = None
    if args.baseline_stats:
        path = data_stats.statistics_path(args.baseline_stats)
        data_stats.read(path, "--baseline-stats")
        baseline = {"statistics": path, "fingerprint": artifacts.content_fingerprint(path)}

    out = {name: fsutil.join(args.output, name) for name in ("statistics", "schema", "anomalies")}
    examples = Artifact(artifacts.EXAMPLES, args.examples)
    _run(stats_gen, pipeline, {"examples": examples}, out["statistics"])
    statistics = Artifact(artifacts.EXAMPLE_STATISTICS, out["statistics"])
    schema_result, schema_ctx = _run(schema_gen, pipeline, {"s": statistics}, out["schema"])
    schema = Artifact(artifacts.SCHEMA, schema_ctx.output_uri(schema_gen, "schema"))
    print(f"statistics: {data_stats.statistics_path(out['statistics'])}")
    print(f"schema:     {schema.uri} ({schema_result.get('source', '')})")
    try:
        result, ctx = _run(
            validator,
            pipeline,
            {"s": statistics, "schema": schema},
            out["anomalies"],
            {"baseline": baseline},
        )
    except PipelineError as e:
        _print_anomalies((e.result or {}).get("anomalies", []))
        raise
    _print_anomalies(result.get("anomalies", []))
    print(f"anomalies:  {ctx.output_uri(validator, 'anomalies')}")
    print(validator.summary({"status": "completed", "result": result}))
    return 0


def _print_anomalies(anomalies: list[dict]) -> None:
    for a in anomalies:
        print(f"  {a['severity'].upper():<4}  {a['kind']:<26} {a['message']}")
