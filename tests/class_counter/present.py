"""ClassCounter's line in the run table and its section of report.html."""

from __future__ import annotations

from pipeline_components.core.reporting import e, result, section


def summary(entry: dict) -> str:
    counts = result(entry).get("counts", {})
    return "; ".join(
        f"{split}: " + " ".join(f"{c}={n}" for c, n in per.items()) for split, per in counts.items()
    )


def report_html(entry: dict, record: dict) -> str:
    return section("Class counts", f"<p>{e(summary(entry))}</p>")
