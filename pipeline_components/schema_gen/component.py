"""SchemaGen's spec: ExampleStatistics -> Schema (`schema.yaml`, core/data_schema.py).

    transfer-pipeline schema-gen --statistics S --output G [--config FILE] [KEY=VALUE ...]

Which schema a run uses, in this order:
1. `schema_path` (a file the team edited and committed): used as it is;
2. otherwise the schema behind the currently served model: the one SchemaGen wrote for the
   statistics of the examples that model was trained on (core/lineage.py), so a schema is
   inferred once, on the first run, and then kept (`reuse_served: false` infers every run);
3. otherwise (nothing served yet, or its run is not in this pipeline_root) inferred from this
   run's statistics with the margins below.
Its cache key is the schema it will write, so a run that ends up with the same schema reuses it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pipeline_components.core import artifacts, data_schema, fsutil
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.schema_gen import present
from pipeline_components.schema_gen.config import SchemaGenConfig


class SchemaGen(Component[SchemaGenConfig]):
    name = "SchemaGen"
    description = "the data schema: schema_path, the served model's, or inferred"
    command = "schema-gen"
    config_section = "schema_gen"
    config_class = SchemaGenConfig
    inputs = {"statistics": Input(artifacts.EXAMPLE_STATISTICS)}
    outputs = {"schema": artifacts.SCHEMA}
    presenter = present
    reads = ("pipeline_root", "serving_dir", "model_name")  # the served model's schema

    def preflight(self, config: SchemaGenConfig) -> None:
        if config.schema_path:
            data_schema.load(config.schema_path)

    def external_inputs(self, ctx: ExecutionContext[SchemaGenConfig]) -> dict[str, Any]:
        # the schema it will write, not where it came from: the first run's inferred schema
        # and the same schema inherited by the next run on the same data are one execution
        from pipeline_components.schema_gen import executor

        chosen = executor.choose(ctx.config, ctx.pipeline, ctx.input_uri("statistics"))
        return {"schema_sha256": hashlib.sha256(chosen.text.encode()).hexdigest()}

    def run(self, ctx: ExecutionContext[SchemaGenConfig]) -> dict:
        from pipeline_components.schema_gen import executor

        chosen = executor.choose(ctx.config, ctx.pipeline, ctx.input_uri("statistics"))
        schema = data_schema.loads(chosen.text, chosen.source)
        with fsutil.atomic_dir(ctx.output_dir) as work:
            fsutil.write_atomic(fsutil.join(work, artifacts.SCHEMA_FILE), chosen.text)
        return {
            "source": chosen.source,
            "classes": schema["classes"],
            "formats": schema["formats"],
            "schema": ctx.output_uri(self, "schema"),
        }


COMPONENT = SchemaGen()
