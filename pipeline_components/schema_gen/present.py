"""SchemaGen's line in the run table and its section of report.html."""

from __future__ import annotations

from pipeline_components.core import fsutil
from pipeline_components.core.reporting import code, e, result, section


def summary(entry: dict) -> str:
    r = result(entry)
    return f"{len(r.get('classes', []))} classes, {r.get('source', '')}"


def report_html(entry: dict, record: dict) -> str:
    r = result(entry)
    path = r.get("schema")
    if not path or not fsutil.exists(path):
        return ""
    return section(
        "Data schema",
        f"<p>{e(r.get('source', ''))}: {code(path)} "
        "(edit, commit, and pass it back with <code>schema_gen.schema_path</code>)</p>"
        f"<details><summary>schema.yaml</summary><pre>{e(fsutil.read_text(path))}</pre>"
        "</details>",
    )
