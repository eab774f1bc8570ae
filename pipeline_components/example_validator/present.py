"""The ExampleValidator's line in the run table, its alerts at the top of report.html, its
section there and its field of run.json (`anomalies`)."""

from __future__ import annotations

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.reporting import code, e, figures, img, result, section, table


def summary(entry: dict) -> str:
    r = result(entry)
    against = baseline_words(r.get("baseline"))
    if not r.get("anomalies"):
        return f"passed: no anomalies ({against})"
    warns = [a for a in r["anomalies"] if a["severity"] == "warn"]
    head = "passed" if r.get("passed") else "FAILED"
    first = f": {warns[0]['message']}" if warns and r.get("passed") else ""
    return f"{head} with {r.get('fail', 0)} fail, {len(warns)} warn ({against}){first}"


def record_fields(entry: dict) -> dict:
    r = result(entry)
    return {"anomalies": r.get("anomalies", [])} if r else {}


def report_alerts(entry: dict) -> list[tuple[str, str]]:
    return [
        (a["severity"], f"{a['message']} [{a['kind']}]") for a in result(entry).get("anomalies", [])
    ]


def report_html(entry: dict, record: dict) -> str:
    r = result(entry)
    if not r:
        return ""
    anomalies = r.get("anomalies", [])
    rows = [(a["severity"], a["kind"], a["split"] or "", a["message"]) for a in anomalies]
    found = (
        table(rows, ("severity", "kind", "split", "anomaly")) if rows else "<p>No anomalies.</p>"
    )
    plots = fsutil.join(entry.get("output_dir", ""), artifacts.PLOTS_DIR)
    side_by_side = figures(
        img(fsutil.join(plots, artifacts.CLASS_SHARES_PNG), "class shares: baseline and now"),
        img(fsutil.join(plots, artifacts.SIZES_PNG), "image sizes: now (solid), baseline"),
    )
    return section(
        "Data validation",
        f"<p>Compared with the schema {code(r.get('schema'))} and "
        f"{e(baseline_words(r.get('baseline')))}.</p>{found}{side_by_side}",
    )


def baseline_words(spec: dict | None) -> str:
    if not spec:
        return "no baseline: nothing served yet"
    if spec.get("missing"):
        return f"no baseline: {spec['missing']}"
    if spec.get("served_version") is not None:
        return f"baseline: the data behind served version {spec['served_version']}"
    return f"baseline: {spec.get('statistics')}"
