"""ExampleGen's line in the run table and its section of report.html."""

from __future__ import annotations

from pipeline_components.core.reporting import e, pairs, result, section, table


def summary(entry: dict) -> str:
    r = result(entry)
    return (
        f"{pairs(r.get('splits'))} classes={len(r.get('labels', []))} skipped={r.get('skipped', 0)}"
    )


def report_html(entry: dict, record: dict) -> str:
    r = result(entry)
    if not r:
        return ""
    warn = ""
    if r.get("dropped_duplicates"):
        warn = (
            f"<p><b>Note:</b> {e(r['dropped_duplicates'])} train/validation cop(ies) of "
            f"{e(r['duplicates'])} image(s) also in a more held-out split were dropped "
            "(train/test leakage); see stats.json dropped_duplicates.</p>"
        )
    elif r.get("duplicates"):
        warn = (
            f"<p><b>Warning:</b> {e(r['duplicates'])} identical image(s) appear in more "
            "than one split (train/test leakage); see stats.json.</p>"
        )
    return section(
        "Data",
        f"<p>classes: {e(', '.join(r.get('labels', [])))}; "
        f"skipped files: {e(r.get('skipped', 0))}</p>"
        + table(r["splits"].items(), ("split", "examples"), num=(1,))
        + warn,
    )
