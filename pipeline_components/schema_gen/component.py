"""SchemaGen's spec: ExampleStatistics -> Schema (`schema.yaml`, core/data_schema.py).

    transfer-pipeline schema-gen --statistics S --output G [--config pipeline.yaml] [key=value]

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

import dataclasses
import hashlib
from typing import Any

from pipeline_components.core import artifacts, data_schema, data_stats, fsutil, lineage
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import option
from pipeline_components.core.errors import PipelineError
from pipeline_components.core.reporting import e


@dataclasses.dataclass
class SchemaGenConfig:
    schema_path: str | None = option(None, doc="a schema file used as it is (else inferred)")
    reuse_served: bool = option(True, doc="keep the schema behind the served model")
    class_share_margin: float = option(
        0.1, ge=0, le=1, doc="inferred class-share bounds: the share seen +- this"
    )
    split_size_margin: float = option(
        0.5, ge=0, le=1, doc="inferred minimum split size: (1 - this) x the size seen"
    )
    size_range_factor: float = option(
        2.0, ge=1, le=1000, doc="inferred size ranges: smallest seen / this .. largest x this"
    )
    max_fraction_outside: float = option(
        0.01, ge=0, le=1, doc="inferred schema: share of images allowed outside a size range"
    )


@dataclasses.dataclass
class ChosenSchema:
    text: str
    source: str  # where it came from, in words, for the result and the report


class SchemaGen(Component):
    name = "SchemaGen"
    description = "the data schema: schema_path, the served model's, or inferred"
    command = "schema-gen"
    config_section = "schema_gen"
    config_class = SchemaGenConfig
    inputs = {"statistics": Input(artifacts.EXAMPLE_STATISTICS)}
    outputs = {"schema": artifacts.SCHEMA}

    def preflight(self, config: Any) -> None:
        if config.schema_path:
            data_schema.load(config.schema_path)

    def choose(self, ctx: ExecutionContext) -> ChosenSchema:
        """The schema this execution writes (see the module docstring)."""
        cfg: SchemaGenConfig = ctx.config
        if cfg.schema_path:
            text = _read(cfg.schema_path)
            data_schema.loads(text, f"schema_gen.schema_path {cfg.schema_path}")
            return ChosenSchema(text, f"schema_path {cfg.schema_path}")
        why = "reuse_served is off"
        if cfg.reuse_served and ctx.pipeline is not None:
            served, why = served_schema(ctx.pipeline)
            if served is not None:
                return served
        from pipeline_components.schema_gen import executor

        stats = data_stats.read(ctx.input_uri("statistics"))
        source = f"inferred from this run's statistics ({why})"
        text = data_schema.render(
            executor.infer(stats, cfg), f"Inferred by SchemaGen from {stats.get('examples')}."
        )
        return ChosenSchema(text, source)

    def external_inputs(self, ctx: ExecutionContext) -> dict[str, Any]:
        # the schema it will write, not where it came from: the first run's inferred schema
        # and the same schema inherited by the next run on the same data are one execution
        chosen = self.choose(ctx)
        return {"schema_sha256": hashlib.sha256(chosen.text.encode()).hexdigest()}

    def run(self, ctx: ExecutionContext) -> dict:
        chosen = self.choose(ctx)
        schema = data_schema.loads(chosen.text, chosen.source)
        with fsutil.atomic_dir(ctx.output_dir) as work:
            fsutil.write_atomic(fsutil.join(work, artifacts.SCHEMA_FILE), chosen.text)
        return {
            "source": chosen.source,
            "classes": schema["classes"],
            "formats": schema["formats"],
            "schema": ctx.output_uri(self, "schema"),
        }

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        return f"{len(r.get('classes', []))} classes, {r.get('source', '')}"

    def report_html(self, entry: dict, record: dict) -> str:
        r = entry.get("result") or {}
        path = r.get("schema")
        if not path or not fsutil.exists(path):
            return ""
        return (
            f"<h2>Data schema</h2><p>{e(r.get('source', ''))}: <code>{e(path)}</code> "
            "(edit, commit, and pass it back with <code>schema_gen.schema_path</code>)</p>"
            f"<details><summary>schema.yaml</summary><pre>{e(fsutil.read_text(path))}</pre>"
            "</details>"
        )


def _read(path: str) -> str:
    try:
        return fsutil.read_text(path)
    except Exception:
        raise PipelineError(
            f"schema_gen.schema_path: {path} does not exist or cannot be read"
        ) from None


def served_schema(pipeline: Any) -> tuple[ChosenSchema | None, str]:
    """The schema SchemaGen wrote for the data behind the served model, or (None, why not)."""
    served = lineage.served_examples(
        pipeline.pipeline_root, pipeline.serving_dir, pipeline.model_name
    )
    if served is None:
        return None, "no model is served yet"
    if not served.examples_fingerprint:
        return None, f"{served.describe()}: {served.reason}"
    stats = lineage.find_artifact(
        pipeline.pipeline_root,
        artifacts.EXAMPLE_STATISTICS,
        artifacts.EXAMPLES,
        served.examples_fingerprint,
    )
    if stats is None:
        return None, f"no statistics of the data behind {served.describe()}"
    schema = lineage.find_artifact(
        pipeline.pipeline_root, artifacts.SCHEMA, artifacts.EXAMPLE_STATISTICS, stats.fingerprint()
    )
    if schema is None:
        return None, f"no schema for the data behind {served.describe()}"
    text = fsutil.read_text(schema.uri)
    return ChosenSchema(text, f"the schema behind served version {served.version}"), ""


COMPONENT = SchemaGen()
