"""`transfer-pipeline validate-data`: data validation alone, on an ExampleGen output folder.

    transfer-pipeline validate-data --examples O [--schema S] [--baseline-stats P]
        [--output D] [--config pipeline.yaml] [section.key=value ...] [-- BEAM_ARGS]

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

from pipeline_components.core import artifacts, data_stats, fsutil, registry
from pipeline_components.core.artifacts import Artifact, ArtifactType
from pipeline_components.core.component import Component, ExecutionContext, load_for_cli
from pipeline_components.core.errors import PipelineError


def _producer(artifact_type: ArtifactType) -> Component:
    for component in registry.components():
        if any(t.name == artifact_type.name for t in component.outputs.values()):
            return component
    raise PipelineError(f"no registered component produces {artifact_type.name}")


def _context(
    component: Component, pipeline: Any, inputs: dict, output_dir: str
) -> ExecutionContext:
    config = pipeline.section(component.config_section) if component.config_section else None
    return ExecutionContext(pipeline, config, inputs, output_dir)


def _input_name(component: Component, artifact_type: ArtifactType) -> str:
    return next(n for n, s in component.inputs.items() if s.type.name == artifact_type.name)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else None
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        prog="transfer-pipeline validate-data",
        description="Statistics, schema and anomalies of an ExampleGen output folder.",
        epilog="Beam options for the statistics go after --.",
    )
    p.add_argument("--examples", required=True, help="an ExampleGen output folder")
    p.add_argument("--schema", help="a schema.yaml to use as it is (default: inferred)")
    p.add_argument(
        "--baseline-stats", help="statistics.json of a previous run (or its folder) to compare"
    )
    p.add_argument(
        "--output", default="data_validation", help="where to write (default: %(default)s)"
    )
    p.add_argument("--config", help="pipeline.yaml (thresholds, severities, Beam options)")
    p.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE")
    args = p.parse_args(own)
    pipeline = load_for_cli(args.config, args.overrides, None)
    stats_gen = _producer(artifacts.EXAMPLE_STATISTICS)
    schema_gen = _producer(artifacts.SCHEMA)
    validator = _producer(artifacts.EXAMPLE_ANOMALIES)
    if beam_args is not None and stats_gen.config_section:
        section = pipeline.section(stats_gen.config_section)
        pipeline.sections[stats_gen.config_section] = dataclasses.replace(
            section, beam_args=beam_args
        )
    if schema_gen.config_section:  # standalone: a given schema, or one inferred here
        section = pipeline.section(schema_gen.config_section)
        pipeline.sections[schema_gen.config_section] = dataclasses.replace(
            section, schema_path=args.schema, reuse_served=False
        )
    baseline = None
    if args.baseline_stats:
        path = data_stats.statistics_path(args.baseline_stats)
        data_stats.read(path, "--baseline-stats")
        baseline = {"statistics": path, "fingerprint": artifacts.content_fingerprint(path)}

    out = {name: fsutil.join(args.output, name) for name in ("statistics", "schema", "anomalies")}
    examples = Artifact(artifacts.EXAMPLES, args.examples)
    stats_gen.run(
        _context(
            stats_gen,
            pipeline,
            {_input_name(stats_gen, artifacts.EXAMPLES): examples},
            out["statistics"],
        )
    )
    statistics = Artifact(artifacts.EXAMPLE_STATISTICS, out["statistics"])
    schema_ctx = _context(
        schema_gen,
        pipeline,
        {_input_name(schema_gen, artifacts.EXAMPLE_STATISTICS): statistics},
        out["schema"],
    )
    schema_result = schema_gen.run(schema_ctx)
    schema = Artifact(artifacts.SCHEMA, schema_ctx.output_uri(schema_gen, "schema"))
    inputs = {
        _input_name(validator, artifacts.EXAMPLE_STATISTICS): statistics,
        _input_name(validator, artifacts.SCHEMA): schema,
    }
    ctx = _context(validator, pipeline, inputs, out["anomalies"])
    ctx.external = {"baseline": baseline}
    print(f"statistics: {data_stats.statistics_path(out['statistics'])}")
    print(f"schema:     {schema.uri} ({schema_result.get('source', '')})")
    try:
        result = validator.run(ctx)
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
