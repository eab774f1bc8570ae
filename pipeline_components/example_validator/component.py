"""The ExampleValidator's spec: ExampleStatistics + Schema -> ExampleAnomalies (`anomalies.json`).

    transfer-pipeline validate-examples --statistics S --schema G/schema.yaml --output A
        [--config pipeline.yaml] [key=value ...]

It compares this run's statistics with the schema and with the baseline: the statistics of the
data behind the currently served model (core/lineage.py), whose fingerprint is part of its cache
key. Every anomaly has the severity its kind is given in `example_validator.severity`: `warn` is
recorded and shown, `fail` stops the run before the Trainer (`runs_before` the Model's producer):
exit 1, every failing anomaly named in one line, the list in run.json (`anomalies`).
`transfer-pipeline validate-data` runs StatisticsGen, SchemaGen and this one on an Examples folder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline_components.core import artifacts, data_schema, data_stats, fsutil, lineage
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import option
from pipeline_components.core.errors import PipelineError
from pipeline_components.core.reporting import e, figures, img

SEVERITIES = ("fail", "warn", "off")


def _severity(default: str, doc: str) -> Any:
    return option(default, choices=SEVERITIES, doc=doc)


@dataclasses.dataclass
class SeverityConfig:
    """What each kind of anomaly does: fail (stop before the Trainer), warn (report), off."""

    missing_class: str = _severity("fail", "a class of the schema or the baseline is gone")
    new_class: str = _severity("fail", "a class the schema does not list")
    class_share_out_of_bounds: str = _severity("fail", "a class share outside the schema's")
    class_share_drift: str = _severity("warn", "class shares moved from the baseline's")
    split_size_out_of_range: str = _severity("fail", "a split size outside the schema's")
    split_shrank: str = _severity("fail", "a split much smaller than the baseline's")
    image_size_out_of_range: str = _severity("fail", "images outside the schema's size ranges")
    image_size_drift: str = _severity("fail", "image sizes moved from the baseline's")
    encoded_size_drift: str = _severity("warn", "encoded bytes moved from the baseline's")
    new_format: str = _severity("warn", "an image format the schema does not list")
    unexpected_channels: str = _severity("warn", "a channel count the schema does not list")
    skipped_files_jump: str = _severity("warn", "many more unusable files than the baseline")
    cross_split_duplicates: str = _severity("warn", "more images shared between splits")
    baseline_missing: str = _severity("warn", "a model is served, its data's statistics unknown")


@dataclasses.dataclass
class ExampleValidatorConfig:
    severity: SeverityConfig = option(factory=SeverityConfig)
    max_class_share_drift: float = option(
        0.1, gt=0, le=1, doc="L-infinity distance of class shares from the baseline's"
    )
    max_size_drift: float = option(
        0.1, gt=0, le=1, doc="Jensen-Shannon divergence of width/height/megapixel histograms"
    )
    max_encoded_size_drift: float = option(
        0.2, gt=0, le=1, doc="Jensen-Shannon divergence of encoded-bytes histograms"
    )
    max_split_shrink: float = option(
        0.2, gt=0, le=1, doc="a split may be this share smaller than the baseline's"
    )
    max_skipped_increase: float = option(
        0.02, ge=0, le=1, doc="rise of a split's unusable-file share over the baseline's"
    )
    min_examples_for_drift: int = option(
        10, ge=1, le=10**9, doc="a class's size drift is judged with this many examples in both"
    )


class ExampleValidator(Component):
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
    runs_before = (artifacts.MODEL,)  # a failing validation stops the run before training

    def external_inputs(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {"baseline": find_baseline(ctx.pipeline) if ctx.pipeline is not None else None}

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.example_validator import executor

        stats = data_stats.read(ctx.input_uri("statistics"))
        schema = data_schema.load(ctx.input_uri("schema"))
        spec = ctx.external.get("baseline") or {}
        baseline = None
        if spec.get("statistics"):
            baseline = data_stats.read(spec["statistics"], "baseline statistics")
        anomalies = executor.validate(
            stats, schema, baseline, ctx.config, baseline_missing=spec.get("missing")
        )
        failed = [a for a in anomalies if a["severity"] == "fail"]
        result = {
            "passed": not failed,
            "fail": len(failed),
            "warn": len(anomalies) - len(failed),
            "anomalies": anomalies,
            "baseline": spec or None,
            "statistics": data_stats.statistics_path(ctx.input_uri("statistics")),
            "schema": ctx.input_uri("schema"),
        }
        path = ctx.output_uri(self, "anomalies")
        with fsutil.atomic_dir(ctx.output_dir) as work:
            fsutil.write_json(fsutil.join(work, artifacts.ANOMALIES_FILE), result)
            if baseline is not None:  # this run next to the baseline, for the report
                data_stats.write_plots(stats, fsutil.join(work, artifacts.PLOTS_DIR), baseline)
        if failed:
            raise PipelineError(executor.failure_line(anomalies, path), result=result)
        return result

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        against = _baseline_words(r.get("baseline"))
        if not r.get("anomalies"):
            return f"passed: no anomalies ({against})"
        warns = [a for a in r["anomalies"] if a["severity"] == "warn"]
        head = "passed" if r.get("passed") else "FAILED"
        first = f": {warns[0]['message']}" if warns and r.get("passed") else ""
        return f"{head} with {r.get('fail', 0)} fail, {len(warns)} warn ({against}){first}"

    def record_fields(self, entry: dict) -> dict:
        r = entry.get("result") or {}
        return {"anomalies": r.get("anomalies", [])} if r else {}

    def report_alerts(self, entry: dict) -> list[tuple[str, str]]:
        r = entry.get("result") or {}
        return [(a["severity"], f"{a['message']} [{a['kind']}]") for a in r.get("anomalies", [])]

    def report_html(self, entry: dict, record: dict) -> str:
        r = entry.get("result") or {}
        if not r:
            return ""
        rows = "".join(
            f"<tr><td>{e(a['severity'])}</td><td>{e(a['kind'])}</td><td>{e(a['split'] or '')}"
            f"</td><td>{e(a['message'])}</td></tr>"
            for a in r.get("anomalies", [])
        )
        table = (
            "<table><tr><th>severity</th><th>kind</th><th>split</th><th>anomaly</th></tr>"
            f"{rows}</table>"
            if rows
            else "<p>No anomalies.</p>"
        )
        plots = fsutil.join(entry.get("output_dir", ""), artifacts.PLOTS_DIR)
        side_by_side = figures(
            img(fsutil.join(plots, artifacts.CLASS_SHARES_PNG), "class shares: baseline and now"),
            img(fsutil.join(plots, artifacts.SIZES_PNG), "image sizes: now (solid), baseline"),
        )
        return (
            f"<h2>Data validation</h2><p>Compared with the schema <code>{e(r.get('schema'))}"
            f"</code> and {e(_baseline_words(r.get('baseline')))}.</p>{table}{side_by_side}"
        )


def _baseline_words(spec: dict | None) -> str:
    if not spec:
        return "no baseline: nothing served yet"
    if spec.get("missing"):
        return f"no baseline: {spec['missing']}"
    if spec.get("served_version") is not None:
        return f"baseline: the data behind served version {spec['served_version']}"
    return f"baseline: {spec.get('statistics')}"


def find_baseline(pipeline: Any) -> dict | None:
    """{statistics, fingerprint, served_version} of the data behind the served model; None
    when nothing is served; {missing: why} when a model is served but its statistics are not
    in pipeline_root."""
    served = lineage.served_examples(
        pipeline.pipeline_root, pipeline.serving_dir, pipeline.model_name
    )
    if served is None:
        return None
    if not served.examples_fingerprint:
        return {
            "served_version": served.version,
            "missing": f"{served.describe()}: {served.reason}",
        }
    stats = lineage.find_artifact(
        pipeline.pipeline_root,
        artifacts.EXAMPLE_STATISTICS,
        artifacts.EXAMPLES,
        served.examples_fingerprint,
    )
    if stats is None:
        return {
            "served_version": served.version,
            "missing": f"no statistics of the data behind {served.describe()} in "
            f"{pipeline.pipeline_root}",
        }
    return {
        "served_version": served.version,
        "statistics": data_stats.statistics_path(stats.uri),
        "fingerprint": stats.fingerprint(),
        "run_id": served.run_id,
    }


COMPONENT = ExampleValidator()
