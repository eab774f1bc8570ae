"""The BulkInferrer's line in the run table and its section of report.html."""

from __future__ import annotations

from pipeline_components.core.reporting import e, pairs, result, section, table


def summary(entry: dict) -> str:
    r = result(entry)
    return (
        f"labelled {r.get('num_predictions', 0)} images with version "
        f"{r.get('model_version')} ({pairs(r.get('per_class'))}), {r.get('num_errors', 0)} error(s)"
    )


def report_html(entry: dict, record: dict) -> str:
    r = result(entry)
    if not r:
        return ""
    return section(
        "Batch predictions",
        f"<p>{e(r.get('input'))} labelled with version {e(r.get('model_version'))}; errors: "
        f"{e(r.get('num_errors', 0))} (errors-*.jsonl)</p>"
        + table((r.get("per_class") or {}).items(), ("class", "images"), num=(1,)),
    )
