"""The ExampleStatistics contract (`statistics.json`, written by StatisticsGen, read by SchemaGen,
the ExampleValidator and the report) and the arithmetic on it: histogram bins, distances
between two runs, and the plots.

`statistics.json`:

    {"version": 1, "examples": uri, "examples_fingerprint": ExampleGen's fingerprint,
     "labels": [class, ...],
     "quantiles": {"num_quantiles": q, "epsilon": e},   # rank error < e * N (Beam's sketch)
     "histogram_bins_per_octave": 4,                     # bin i = [2^(i/4), 2^((i+1)/4))
     "splits": {split: {
         "num_examples": N,
         "classes": {class: count}, "class_shares": {class: count / N},
         "formats": {"jpeg": n, ...}, "channels": {"3": n, ...},
         "skipped": {"bad": n, "ignored": n, "bad_fraction": bad / (N + bad),
                     "by_reason": {"empty file": n, ...}},
         "duplicates": {"within_split": n, "shared_with_other_splits": n},
         "features": {feature: FEATURE}, "per_class": {class: {feature: FEATURE}}}}}

    FEATURE = {"count", "min", "max", "mean", "quantiles": [q values, min..max],
               "histogram": {"<bin>": count}}

Features: `width`, `height` (pixels), `megapixels` and `encoded_bytes` (the stored image's
size). Counts, minima, maxima, means and histograms are exact; quantiles come from Beam's
ApproximateQuantiles sketch, whose rank error is below `epsilon` x N. The histogram bins are
fixed (a quarter octave each, the same for every run and every dataset), so two runs' histograms
compare bin by bin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.errors import PipelineError

VERSION = 1
FEATURES = ("width", "height", "megapixels", "encoded_bytes")
SIZE_FEATURES = ("width", "height", "megapixels")  # what an image's pixel size changes
BINS_PER_OCTAVE = 4
UNITS = {"width": "px", "height": "px", "megapixels": "MP", "encoded_bytes": "bytes"}


def bin_index(value: float) -> int:
    """The fixed histogram bin of a positive value: floor(4 log2 value)."""
    return math.floor(BINS_PER_OCTAVE * math.log2(value))


def bin_range(index: int) -> tuple[float, float]:
    return 2 ** (index / BINS_PER_OCTAVE), 2 ** ((index + 1) / BINS_PER_OCTAVE)


def skip_category(reason: str) -> str:
    """ExampleGen's skip reason without its details: 'too large: 23000x23000 > ...' ->
    'too large', 'not an image (.txt file)' -> 'not an image'."""
    head = reason.split(":", 1)[0].split("(", 1)[0].strip()
    return head or reason


# ------------------------------------------------------------------------------- distances


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms over the same bins:
    0 for identical shapes, 1 for histograms with no bin in common."""
    sp, sq = sum(p.values()), sum(q.values())
    if sp <= 0 or sq <= 0:
        return 0.0
    total = 0.0
    for key in set(p) | set(q):
        a, b = p.get(key, 0) / sp, q.get(key, 0) / sq
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / m)
        if b > 0:
            total += 0.5 * b * math.log2(b / m)
    return min(1.0, max(0.0, total))


def linf_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """L-infinity distance of two distributions (e.g. class shares): the largest difference."""
    return max((abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q)), default=0.0)


def fraction_outside(feature: Mapping[str, Any], low: float | None, high: float | None) -> float:
    """The share of a split's images whose feature lies outside [low, high]. Exactly 0 when the
    exact minimum and maximum are inside. Otherwise the histogram bounds it exactly (bins wholly
    outside count in full, a bin the bound cuts may count or not) and the quantiles place it
    within that interval (to one quantile step, 1 / (num_quantiles - 1), plus the sketch's
    epsilon); a bound on a bin edge makes it exact."""
    lo_ok = low is None or feature["min"] >= low
    hi_ok = high is None or feature["max"] <= high
    if lo_ok and hi_ok:
        return 0.0
    hist = {int(k): n for k, n in (feature.get("histogram") or {}).items()}
    total = sum(hist.values()) or 1
    surely = maybe = 0
    for index, n in hist.items():
        left, right = bin_range(index)
        if (low is not None and right <= low) or (high is not None and left > high):
            surely += n
        elif (low is not None and left < low) or (high is not None and right > high):
            maybe += n
    qs = feature.get("quantiles") or []
    estimate = 1.0
    if qs:
        below = sum(1 for v in qs if low is not None and v < low)
        above = sum(1 for v in qs if high is not None and v > high)
        estimate = (below + above) / len(qs)
    return min(max(estimate, surely / total), (surely + maybe) / total)


def quantile(feature: Mapping[str, Any], p: float) -> float | None:
    """The sketch's p-quantile (0 <= p <= 1) of a feature."""
    qs = feature.get("quantiles") or []
    if not qs:
        return None
    return qs[round(p * (len(qs) - 1))]


# ------------------------------------------------------------------------------------ files


def statistics_path(uri: str) -> str:
    """statistics.json given the file or the StatisticsGen output directory holding it."""
    if fsutil.isdir(uri):
        return fsutil.join(uri, artifacts.STATISTICS_FILE)
    return uri


def read(uri: str, what: str = "statistics") -> dict:
    """A statistics.json (or the directory holding one), checked: one-line error if it is not."""
    path = statistics_path(uri)
    stats = fsutil.read_json(path, what)
    if not isinstance(stats, dict) or not isinstance(stats.get("splits"), dict):
        raise PipelineError(f"{what} {path} is not a StatisticsGen statistics.json (no 'splits')")
    if stats.get("version") != VERSION:
        raise PipelineError(
            f"{what} {path} has version {stats.get('version')!r}; this release reads {VERSION}"
        )
    return stats


# ------------------------------------------------------------------------------------ plots


def class_shares_figure(stats: dict, baseline: dict | None = None, max_classes: int = 40) -> Any:
    """Class shares per split as bars; with a baseline, its bars (hatched) next to this run's."""
    from pipeline_components.core.plotting import pyplot

    plt = pyplot()
    splits = list(stats["splits"])
    classes = list(stats.get("labels") or [])
    if baseline:
        classes += [c for c in baseline.get("labels") or [] if c not in classes]
    shown = classes[:max_classes]
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=(max(4.0, 0.45 * len(shown) + 1.5) * len(splits) / 1.6, 3.4),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    width = 0.4 if baseline else 0.7
    for ax, split in zip(axes[0], splits, strict=True):
        shares = stats["splits"][split].get("class_shares", {})
        xs = range(len(shown))
        if baseline and split in baseline.get("splits", {}):
            old = baseline["splits"][split].get("class_shares", {})
            ax.bar(
                [x - width / 2 for x in xs],
                [old.get(c, 0) for c in shown],
                width,
                color="#b8c4d6",
                hatch="//",
                edgecolor="#5b6b85",
                label="baseline",
            )
            ax.bar(
                [x + width / 2 for x in xs],
                [shares.get(c, 0) for c in shown],
                width,
                color="#2f6db5",
                label="this run",
            )
            ax.legend(fontsize=7)
        else:
            ax.bar(list(xs), [shares.get(c, 0) for c in shown], width, color="#2f6db5")
        n = stats["splits"][split].get("num_examples", 0)
        ax.set_title(f"{split} ({n} examples)", fontsize=9)
        ax.set_xticks(list(xs), shown, rotation=45 if len(shown) > 4 else 0, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("class share")
    title = "Class shares" + (
        f" (first {max_classes} of {len(classes)})" if len(classes) > max_classes else ""
    )
    fig.suptitle(title, fontsize=10)
    return fig


def sizes_figure(stats: dict, baseline: dict | None = None) -> Any:
    """Histograms of width, height, megapixels and encoded bytes per split on a log axis;
    with a baseline, its histograms dashed on the same axes."""
    from pipeline_components.core.plotting import pyplot

    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(2, 2, figsize=(9, 5.5))
    colors = {"train": "#2f6db5", "validation": "#e08a1e", "test": "#3a9a4a"}
    widths = {"train": 3.0, "validation": 2.0, "test": 1.2}  # identical splits stay visible
    for ax, feature in zip(axes.flat, FEATURES, strict=True):
        runs = [(stats, "-", "")] + ([(baseline, "--", " (baseline)")] if baseline else [])
        for run, style, suffix in runs:
            for split, s in run["splits"].items():
                hist = (s.get("features", {}).get(feature) or {}).get("histogram") or {}
                total = sum(hist.values())
                if not total:
                    continue
                lo, hi = min(map(int, hist)), max(map(int, hist))
                edges = [bin_range(i)[0] for i in range(lo - 1, hi + 2)]
                heights = [hist.get(str(i), 0) / total for i in range(lo - 1, hi + 2)]
                ax.step(
                    edges,
                    heights,
                    where="post",
                    linestyle=style,
                    linewidth=widths.get(split, 1.5),
                    color=colors.get(split, "#777"),
                    label=f"{split}{suffix}",
                )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{feature} ({UNITS[feature]})", fontsize=9)
        ax.set_ylabel("share of images", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Image sizes" + (" (dashed: baseline)" if baseline else ""), fontsize=10)
    fig.tight_layout()
    return fig


def write_plots(stats: dict, plots_dir: str, baseline: dict | None = None) -> dict[str, str]:
    """plots/class_shares.png and plots/sizes.png; returns {name: path}."""
    from pipeline_components.core.plotting import save_figure

    fsutil.makedirs(plots_dir)
    shares = fsutil.join(plots_dir, artifacts.CLASS_SHARES_PNG)
    sizes = fsutil.join(plots_dir, artifacts.SIZES_PNG)
    return {
        "class_shares": save_figure(class_shares_figure(stats, baseline), shares),
        "sizes": save_figure(sizes_figure(stats, baseline), sizes),
    }
