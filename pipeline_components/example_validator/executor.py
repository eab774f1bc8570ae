"""The ExampleValidator's checks: one run's statistics (core/data_stats.py) against the schema
(core/data_schema.py) and against the statistics of the data behind the served model (the
baseline). Pure functions over dicts: every anomaly is a dict

    {"kind", "severity": "fail" | "warn", "split" (or null), "classes": [...],
     "message": one line, "value", "threshold"}

and its severity comes from the config (`off` drops it).

Against the schema: missing_class, new_class, class_share_out_of_bounds,
split_size_out_of_range, image_size_out_of_range (width, height, megapixels, bytes), new_format,
unexpected_channels, cross_split_duplicates. Against the baseline: class_share_drift (L-infinity
distance of the class shares), image_size_drift (Jensen-Shannon divergence of the width, height
and megapixel histograms, per split and per class), encoded_size_drift (the same for bytes),
split_shrank, skipped_files_jump, missing_class; baseline_missing when a model is served but the
statistics of its data cannot be found.

`run_validator` is the execution around them (reads the statistics, the schema and the baseline,
writes anomalies.json and the side-by-side plots); `find_baseline` finds the baseline through
core/lineage.py.
"""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts, data_schema, data_stats, fsutil, lineage
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_validator.config import ExampleValidatorConfig

KINDS = (
    "missing_class",
    "new_class",
    "class_share_out_of_bounds",
    "class_share_drift",
    "split_size_out_of_range",
    "split_shrank",
    "image_size_out_of_range",
    "image_size_drift",
    "encoded_size_drift",
    "new_format",
    "unexpected_channels",
    "skipped_files_jump",
    "cross_split_duplicates",
    "baseline_missing",
)


def _pct(v: float) -> str:
    return f"{v:.1%}"


def _range(b: dict, fmt: Any = str) -> str:
    lo = "-inf" if b.get("min") is None else fmt(b["min"])
    hi = "inf" if b.get("max") is None else fmt(b["max"])
    return f"[{lo}, {hi}]"


def _outside(value: float, b: dict) -> bool:
    return (b.get("min") is not None and value < b["min"]) or (
        b.get("max") is not None and value > b["max"]
    )


class _Found:
    def __init__(self, severity: Any):
        self.severity = severity
        self.items: list[dict] = []

    def add(
        self,
        kind: str,
        message: str,
        *,
        split: str | None = None,
        classes: list[str] | None = None,
        value: Any = None,
        threshold: Any = None,
    ) -> None:
        level = getattr(self.severity, kind)
        if level == "off":
            return
        if any(a["kind"] == kind and a["message"] == message for a in self.items):
            return
        self.items.append(
            {
                "kind": kind,
                "severity": level,
                "split": split,
                "classes": classes or [],
                "message": message,
                "value": value,
                "threshold": threshold,
            }
        )


def _drift(
    now: dict, before: dict, features: tuple[str, ...], min_examples: int
) -> list[tuple[str, str, float]]:
    """[(class or '' for the split, feature, JS divergence)] for the split and each class in
    both runs with at least min_examples examples in both."""
    out = []
    scopes = [("", now["features"], before["features"])]
    for c, feats in now.get("per_class", {}).items():
        old = before.get("per_class", {}).get(c)
        if old is None:
            continue
        n_now, n_old = feats["width"]["count"], old["width"]["count"]
        if n_now >= min_examples and n_old >= min_examples:
            scopes.append((c, feats, old))
    for scope, feats, old in scopes:
        for f in features:
            out.append(
                (scope, f, data_stats.js_divergence(feats[f]["histogram"], old[f]["histogram"]))
            )
    return out


def _drift_anomaly(
    found: _Found, kind: str, split: str, drifts: list, threshold: float, what: str
) -> None:
    over = [(c, f, d) for c, f, d in drifts if d > threshold]
    if not over:
        return
    worst: dict[str, tuple[str, float]] = {}
    for c, f, d in over:  # the worst feature of each scope
        if c not in worst or d > worst[c][1]:
            worst[c] = (f, d)
    parts = [
        f"{'all images' if c == '' else repr(c)} {f} JS {d:.2f}"
        for c, (f, d) in sorted(worst.items(), key=lambda kv: -kv[1][1])
    ]
    found.add(
        kind,
        f"{split}: {what} drifted from the baseline: {', '.join(parts)} (> {threshold:g})",
        split=split,
        classes=sorted(c for c in worst if c),
        value=round(max(d for _, d in worst.values()), 4),
        threshold=threshold,
    )


def _schema_classes(found: _Found, labels: list[str], expected: list[str]) -> None:
    for c in expected:
        if c not in labels:
            found.add(
                "missing_class", f"class {c!r} of the schema is missing from the data", classes=[c]
            )
    for c in labels:
        if c not in expected:
            found.add(
                "new_class",
                f"class {c!r} is not in the schema (classes: {', '.join(expected)})",
                classes=[c],
            )


def validate(
    stats: dict,
    schema: dict,
    baseline: dict | None,
    config: ExampleValidatorConfig,
    baseline_missing: str | None = None,
) -> list[dict]:
    """Every anomaly of `stats` against the schema and the baseline statistics (if any)."""
    found = _Found(config.severity)
    labels = list(stats["labels"])
    _schema_classes(found, labels, list(schema["classes"]))
    formats, channels = set(schema["formats"]), {str(c) for c in schema["channels"]}
    for split, s in stats["splits"].items():
        for c in labels:
            if s["classes"].get(c, 0) == 0:
                found.add(
                    "missing_class",
                    f"{split}: class {c!r} has no examples",
                    split=split,
                    classes=[c],
                )
        for fmt, n in s["formats"].items():
            if fmt not in formats:
                found.add(
                    "new_format",
                    f"{split}: {n} image(s) in format {fmt}, not in the "
                    f"schema's {', '.join(sorted(formats))}",
                    split=split,
                    value=n,
                )
        for ch, n in s["channels"].items():
            if ch not in channels:
                found.add(
                    "unexpected_channels",
                    f"{split}: {n} image(s) with {ch} channel(s), "
                    f"not in the schema's {', '.join(sorted(channels))}",
                    split=split,
                    value=n,
                )
        _schema_split(found, schema, split, s, labels)
        shared = s["duplicates"]["shared_with_other_splits"]
        old_shared = (baseline or {}).get("splits", {}).get(split, {}).get("duplicates", {})
        if shared and shared > old_shared.get("shared_with_other_splits", 0):
            found.add(
                "cross_split_duplicates",
                f"{split}: {shared} image(s) also appear in another split (train/test leakage)",
                split=split,
                value=shared,
            )
    if baseline is not None:
        _against_baseline(found, stats, baseline, config)
    elif baseline_missing:
        found.add("baseline_missing", f"no baseline statistics to compare with: {baseline_missing}")
    return found.items


def _schema_split(found: _Found, schema: dict, split: str, s: dict, labels: list[str]) -> None:
    spec = schema["splits"].get(split)
    if spec is not None:
        bounds = spec.get("num_examples")
        if bounds and _outside(s["num_examples"], bounds):
            found.add(
                "split_size_out_of_range",
                f"{split}: {s['num_examples']} examples, outside the schema's {_range(bounds)}",
                split=split,
                value=s["num_examples"],
                threshold=bounds,
            )
        for c, b in spec.get("class_shares", {}).items():
            if c not in labels:
                continue  # reported as missing_class
            share = s["class_shares"].get(c, 0.0)
            if _outside(share, b):
                found.add(
                    "class_share_out_of_bounds",
                    f"{split}: class {c!r} is {_pct(share)} "
                    f"of the examples, outside the schema's {_range(b, _pct)}",
                    split=split,
                    classes=[c],
                    value=round(share, 4),
                    threshold=b,
                )
    limit = schema["max_fraction_outside"]
    outside = []
    for feature, b in schema.get("image", {}).items():
        feats = s["features"].get(feature)
        if not feats or not feats["count"]:
            continue
        frac = data_stats.fraction_outside(feats, b.get("min"), b.get("max"))
        if frac > limit:
            outside.append((frac, feature, b, feats))
    if outside:
        parts = [
            f"{_pct(frac)} have {feature} outside {_range(b)} {data_stats.UNITS[feature]} "
            f"(seen {feats['min']:g} to {feats['max']:g})"
            for frac, feature, b, feats in outside
        ]
        found.add(
            "image_size_out_of_range",
            f"{split}: images outside the schema's ranges (> {_pct(limit)}): {', '.join(parts)}",
            split=split,
            value=round(max(o[0] for o in outside), 4),
            threshold=limit,
        )


def _against_baseline(
    found: _Found, stats: dict, baseline: dict, config: ExampleValidatorConfig
) -> None:
    for c in baseline.get("labels", []):
        if c not in stats["labels"]:
            found.add(
                "missing_class",
                f"class {c!r} of the baseline is missing from the data",
                classes=[c],
            )
    for split, s in stats["splits"].items():
        old = baseline["splits"].get(split)
        if old is None:
            continue
        shares, old_shares = s["class_shares"], old["class_shares"]
        dist = data_stats.linf_distance(shares, old_shares)
        if dist > config.max_class_share_drift:
            c = max(
                set(shares) | set(old_shares),
                key=lambda k: abs(shares.get(k, 0) - old_shares.get(k, 0)),
            )
            found.add(
                "class_share_drift",
                f"{split}: class shares moved by {dist:.3f} "
                f"(L-infinity; {c!r} {_pct(old_shares.get(c, 0))} -> "
                f"{_pct(shares.get(c, 0))}) > {config.max_class_share_drift:g}",
                split=split,
                classes=[c],
                value=round(dist, 4),
                threshold=config.max_class_share_drift,
            )
        n, old_n = s["num_examples"], old["num_examples"]
        if old_n and n < old_n * (1 - config.max_split_shrink):
            found.add(
                "split_shrank",
                f"{split}: {n} examples, {1 - n / old_n:.0%} fewer than the "
                f"baseline's {old_n} (> {config.max_split_shrink:.0%})",
                split=split,
                value=n,
                threshold=config.max_split_shrink,
            )
        jump = s["skipped"]["bad_fraction"] - old["skipped"]["bad_fraction"]
        if jump > config.max_skipped_increase:
            found.add(
                "skipped_files_jump",
                f"{split}: {_pct(s['skipped']['bad_fraction'])} of "
                f"the files were unusable, up from {_pct(old['skipped']['bad_fraction'])} "
                f"(> +{_pct(config.max_skipped_increase)}; "
                + ", ".join(f"{r} {k}" for r, k in s["skipped"]["by_reason"].items())
                + ")",
                split=split,
                value=round(jump, 4),
                threshold=config.max_skipped_increase,
            )
        size = _drift(s, old, data_stats.SIZE_FEATURES, config.min_examples_for_drift)
        _drift_anomaly(found, "image_size_drift", split, size, config.max_size_drift, "image sizes")
        size = _drift(s, old, ("encoded_bytes",), config.min_examples_for_drift)
        _drift_anomaly(
            found, "encoded_size_drift", split, size, config.max_encoded_size_drift, "encoded sizes"
        )


def failure_line(anomalies: list[dict], where: str) -> str:
    """The one line a failing validation ends with: every `fail` anomaly, kind in brackets."""
    fails = [a for a in anomalies if a["severity"] == "fail"]
    warns = len(anomalies) - len(fails)
    head = f"{len(fails)} data anomal{'y' if len(fails) == 1 else 'ies'} fail the run: "
    body = "; ".join(f"{a['message']} [{a['kind']}]" for a in fails)
    tail = f" (and {warns} warning(s))" if warns else ""
    return f"{head}{body}{tail}; see {where}"


# ------------------------------------------------------------------------------ execution


def run_validator(
    statistics: str,
    schema_path: str,
    spec: dict | None,
    config: ExampleValidatorConfig,
    output_dir: str,
    anomalies_path: str,
) -> dict:
    """Validate the statistics at `statistics` against the schema and the baseline `spec`
    (find_baseline's); writes anomalies.json (and plots with a baseline) into `output_dir`.
    Raises PipelineError (result = anomalies.json's content) on a `fail` anomaly."""
    stats = data_stats.read(statistics)
    schema = data_schema.load(schema_path)
    spec = spec or {}
    baseline = None
    if spec.get("statistics"):
        baseline = data_stats.read(spec["statistics"], "baseline statistics")
    anomalies = validate(stats, schema, baseline, config, baseline_missing=spec.get("missing"))
    failed = [a for a in anomalies if a["severity"] == "fail"]
    result = {
        "passed": not failed,
        "fail": len(failed),
        "warn": len(anomalies) - len(failed),
        "anomalies": anomalies,
        "baseline": spec or None,
        "statistics": data_stats.statistics_path(statistics),
        "schema": schema_path,
    }
    with fsutil.atomic_dir(output_dir) as work:
        fsutil.write_json(fsutil.join(work, artifacts.ANOMALIES_FILE), result)
        if baseline is not None:  # this run next to the baseline, for the report
            data_stats.write_plots(stats, fsutil.join(work, artifacts.PLOTS_DIR), baseline)
    if failed:
        raise PipelineError(failure_line(anomalies, anomalies_path), result=result)
    return result


def find_baseline(pipeline: PipelineConfig) -> dict | None:
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
    stats = lineage.served_statistics(pipeline.pipeline_root, served)
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
