"""StatisticsGen's line in the run table and its section of report.html."""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts, data_stats, fsutil
from pipeline_components.core.reporting import e, figures, img, pairs, result, section, table


def summary(entry: dict) -> str:
    r = result(entry)
    formats = ",".join(r.get("formats", []))
    return f"{pairs(r.get('splits'))} classes={r.get('classes')} formats={formats}"


def report_html(entry: dict, record: dict) -> str:
    out = entry.get("output_dir")
    if not out or not fsutil.exists(path := fsutil.join(out, artifacts.STATISTICS_FILE)):
        return ""
    plots = fsutil.join(out, artifacts.PLOTS_DIR)
    return section(
        "Data statistics",
        statistics_table(data_stats.read(path))
        + figures(
            img(fsutil.join(plots, artifacts.CLASS_SHARES_PNG), "class shares per split"),
            img(fsutil.join(plots, artifacts.SIZES_PNG), "image sizes per split"),
        ),
    )


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "—"


def _quantiles(feature: dict) -> str:
    return " / ".join(
        "—" if (v := data_stats.quantile(feature, p)) is None else f"{v:.4g}"
        for p in (0.01, 0.5, 0.99)
    )


def statistics_table(stats: dict) -> str:
    """One column per split: examples, class shares, formats, channels, sizes, skipped."""
    splits = list(stats["splits"])
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, fn: Any) -> None:
        rows.append((name, [fn(stats["splits"][s]) for s in splits]))

    row("examples", lambda s: str(s["num_examples"]))
    for label in stats["labels"]:
        row(
            f"class {label}",
            lambda s, c=label: f"{s['classes'].get(c, 0)} ({s['class_shares'].get(c, 0):.1%})",
        )
    row("formats", lambda s: _counts(s["formats"]))
    row("channels", lambda s: _counts(s["channels"]))
    for feature in data_stats.FEATURES:
        row(f"{feature} p1 / median / p99", lambda s, f=feature: _quantiles(s["features"][f]))
    row("skipped (bad / ignored)", lambda s: f"{s['skipped']['bad']} / {s['skipped']['ignored']}")
    row("skip reasons", lambda s: _counts(s["skipped"]["by_reason"]))
    row(
        "duplicates (in split / shared)",
        lambda s: (
            f"{s['duplicates']['within_split']} / {s['duplicates']['shared_with_other_splits']}"
        ),
    )
    q = stats.get("quantiles", {})
    note = (
        f"<p class=muted>Counts and histograms exact; quantiles from Beam's sketch (rank error "
        f"&lt; {e(q.get('epsilon'))} &times; N).</p>"
    )
    body = [(name, *values) for name, values in rows]
    return table(body, ("", *splits), num=range(1, len(splits) + 1), row_heads=True) + note
