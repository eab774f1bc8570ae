"""The ExampleValidator's spec: ExampleStatistics + Schema -> ExampleAnomalies (`anomalies.json`).

    transfer-pipeline validate-examples --statistics S --schema G/schema.yaml --output A
        [--config FILE] [KEY=VALUE ...]

It compares this run's statistics with the schema and with the baseline: the statistics of the
data behind the currently served model (core/lineage.py), whose fingerprint is part of its cache
key. Every anomaly has the severity its kind is given in `example_validator.severity`: `warn` is
recorded and shown, `fail` stops the run before FeatureGen, the Tuner and the Trainer
(`runs_before` the producers of Features, HyperParameters and the Model, so a Kubeflow DAG
orders them after it too): exit 1, every failing anomaly named in one line, the list in
run.json (`anomalies`).
`transfer-pipeline validate-data` runs StatisticsGen, SchemaGen and this one on an Examples folder.
"""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.example_validator import present
from pipeline_components.example_validator.config import ExampleValidatorConfig


class ExampleValidator(Component[ExampleValidatorConfig]):
    name = "ExampleValidator"
    description = "check the statistics against the schema and the served model's data"
    command = "validate-examples"
    config_section = "example_validator"
    config_class = ExampleValidatorConfig
    inputs = {
        "statistics": Input(artifacts.EXAMPLE_STATISTICS),
        "schema": Input(artifacts.SCHEMA),
    }
    outputs = {"anomalies": artifacts.EXAMPLE_ANOMALIES}
    # a failing validation stops the run before anything spends time on the backbone
    runs_before = (artifacts.FEATURES, artifacts.HYPERPARAMETERS, artifacts.MODEL)
    presenter = present
    reads = ("pipeline_root", "serving_dir", "model_name")  # the served model's data

    def external_inputs(self, ctx: ExecutionContext[ExampleValidatorConfig]) -> dict[str, Any]:
        from pipeline_components.example_validator import executor

        return {"baseline": executor.find_baseline(ctx.pipeline)}

    def run(self, ctx: ExecutionContext[ExampleValidatorConfig]) -> dict:
        from pipeline_components.example_validator import executor

        return executor.run_validator(
            ctx.input_uri("statistics"),
            ctx.input_uri("schema"),
            ctx.external.get("baseline"),
            ctx.config,
            ctx.output_dir,
            ctx.output_uri(self, "anomalies"),
        )


COMPONENT = ExampleValidator()
