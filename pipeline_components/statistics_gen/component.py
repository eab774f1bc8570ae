"""StatisticsGen's spec: Examples -> ExampleStatistics (executor.py runs the Beam job).

    transfer-pipeline statistics-gen --examples O --output S [--config pipeline.yaml] [key=value]

Per split: examples per class and class shares; width, height, megapixels and encoded bytes
(exact min/max/mean and histograms, sketched quantiles); formats; channels; skipped files by
reason; duplicates. Written as `statistics.json` (core/data_stats.py) with plots.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline_components.core import artifacts, data_stats, fsutil
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import option
from pipeline_components.core.reporting import e, figures, img


@dataclasses.dataclass
class StatisticsGenConfig:
    num_quantiles: int = option(
        101, ge=3, le=1001, doc="quantiles kept per feature, min and max included"
    )
    quantile_epsilon: float = option(
        0.01, gt=0, le=0.1, doc="the sketch's rank error bound, as a share of the examples"
    )
    # null: the same Beam options as example_gen.beam_args (one Dataflow setup for both)
    beam_args: list[str] | None = option(None, key=False)


class StatisticsGen(Component):
    name = "StatisticsGen"
    description = "statistics of every split of the examples (Apache Beam)"
    command = "statistics-gen"
    config_section = "statistics_gen"
    config_class = StatisticsGenConfig
    inputs = {"examples": Input(artifacts.EXAMPLES)}
    outputs = {"statistics": artifacts.EXAMPLE_STATISTICS}

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.statistics_gen import executor

        cfg: StatisticsGenConfig = ctx.config
        beam_args = cfg.beam_args
        if beam_args is None:  # like ExampleGen's, when the pipeline has that section
            example_gen = ctx.pipeline.sections.get("example_gen") if ctx.pipeline else None
            beam_args = getattr(example_gen, "beam_args", None)
        stats = executor.run_statistics_gen(
            ctx.input_uri("examples"),
            ctx.output_dir,
            num_quantiles=cfg.num_quantiles,
            epsilon=cfg.quantile_epsilon,
            beam_args=beam_args,
        )
        return {
            "splits": {s: v["num_examples"] for s, v in stats["splits"].items()},
            "classes": len(stats["labels"]),
            "formats": sorted({f for v in stats["splits"].values() for f in v["formats"]}),
            "skipped": sum(v["skipped"]["bad"] for v in stats["splits"].values()),
        }

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        splits = " ".join(f"{s}={n}" for s, n in r.get("splits", {}).items())
        return f"{splits} classes={r.get('classes')} formats={','.join(r.get('formats', []))}"

    def report_html(self, entry: dict, record: dict) -> str:
        out = entry.get("output_dir")
        if not out or not fsutil.exists(path := fsutil.join(out, artifacts.STATISTICS_FILE)):
            return ""
        stats = data_stats.read(path)
        plots = fsutil.join(out, artifacts.PLOTS_DIR)
        return (
            "<h2>Data statistics</h2>"
            + statistics_table(stats)
            + figures(
                img(fsutil.join(plots, artifacts.CLASS_SHARES_PNG), "class shares per split"),
                img(fsutil.join(plots, artifacts.SIZES_PNG), "image sizes per split"),
            )
        )


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "—"


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
        row(
            f"{feature} p1 / median / p99",
            lambda s, f=feature: " / ".join(
                "—" if (v := data_stats.quantile(s["features"][f], p)) is None else f"{v:.4g}"
                for p in (0.01, 0.5, 0.99)
            ),
        )
    row("skipped (bad / ignored)", lambda s: f"{s['skipped']['bad']} / {s['skipped']['ignored']}")
    row("skip reasons", lambda s: _counts(s["skipped"]["by_reason"]))
    row(
        "duplicates (in split / shared)",
        lambda s: (
            f"{s['duplicates']['within_split']} / {s['duplicates']['shared_with_other_splits']}"
        ),
    )
    head = "".join(f"<th>{e(s)}</th>" for s in splits)
    body = "".join(
        f"<tr><th>{e(name)}</th>" + "".join(f"<td class=num>{e(v)}</td>" for v in values) + "</tr>"
        for name, values in rows
    )
    q = stats.get("quantiles", {})
    note = (
        f"<p class=muted>Counts and histograms exact; quantiles from Beam's sketch (rank error "
        f"&lt; {e(q.get('epsilon'))} &times; N).</p>"
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>{note}"


COMPONENT = StatisticsGen()
