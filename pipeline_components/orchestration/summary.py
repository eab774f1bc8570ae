"""The run table: one row per component of a run record, with its one-line result (the
components' own `summary`), shared by `transfer-pipeline run` and report.html."""

from __future__ import annotations

from pipeline_components.core import registry


def component_names(record: dict) -> list[str]:
    """The registered components in pipeline order, then any others the record holds."""
    names = [c.name for c in registry.pipeline_order()]
    return names + [n for n in record.get("components", {}) if n not in names]


def has_result(entry: dict) -> bool:
    """A completed or cached entry, or a failed one that recorded what it found
    (PipelineError.result): its record_fields, report section and alerts apply."""
    status = entry.get("status")
    return status in ("completed", "cached") or (status == "failed" and bool(entry.get("result")))


def result_text(name: str, entry: dict) -> str:
    """The one-line result of a component's run.json entry (table and report)."""
    if entry.get("status") == "failed":
        return entry.get("error", "")
    if entry.get("status") == "skipped":
        return entry.get("reason", "")
    try:
        return registry.get(name).summary(entry)
    except KeyError:  # a component no longer registered: the record still shows
        return ""


def summary_table(record: dict) -> str:
    rows = [("component", "status", "time", "result")]
    for name in component_names(record):
        c = record["components"].get(name)
        if not c:
            rows.append((name, "not run", "", ""))
            continue
        took = f"{c.get('duration_s', 0):.1f}s" if c.get("status") != "skipped" else ""
        rows.append((name, c["status"], took, result_text(name, c)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.insert(1, "-" * min(100, max(len(line) for line in lines)))
    head = f"run {record['run_id']}: {record['status'].upper()}"
    if record.get("error"):
        head += f" — {record['error']}"
    return "\n".join([head, *lines])
