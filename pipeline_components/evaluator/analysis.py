"""The gate's engine: every metric, overall and per slice, with bootstrap intervals, for the
candidate and the baseline on the same test images; then every threshold checked.

Input: `ScoredSplit`, the predictions the Beam job collected (scoring.collect). Output:
`analyse` -> `Analysis` (analysis.json: metrics with intervals, slices with counts, the
calibration bins; blessing.json: one line per threshold).

Cost: the point values are one pass; the bootstrap is measures.measure over blocks of replicate
weights (bootstrap.py) for the whole split and each slice, candidate and baseline sharing each
block (a paired comparison), so 1,000 replicates of 1,000 images take a fraction of a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from pipeline_components.evaluator import bootstrap, slicing, vocabulary
from pipeline_components.evaluator.config import EvaluatorConfig
from pipeline_components.evaluator.measures import (
    ECE_BINS,
    Examples,
    Measures,
    from_sums,
    grouped_sums,
    linear,
    point,
    rank_areas,
    rankings,
    tie_group_areas,
    tie_groups,
    with_ranks,
)
from pipeline_components.evaluator.thresholds import TOLERANCE, Threshold, parse
from pipeline_components.evaluator.vocabulary import METRICS, PER_CLASS

NO_BASELINE = "not applicable: no baseline model (first push)"


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """What the Evaluator computes beyond metrics.json: `from_config` of the `evaluator:`
    section (config.py documents each option)."""

    thresholds: tuple[Threshold, ...] = ()  # parsed (thresholds.parse), not yet resolved
    bootstrap: bootstrap.BootstrapSpec = bootstrap.BootstrapSpec()
    slices: bool = True
    min_slice_size: int = vocabulary.DEFAULT_MIN_SLICE_SIZE
    max_slice_values: int = vocabulary.DEFAULT_MAX_VALUES
    mistakes_per_class: int = 4  # most confident wrong test images per true class (Grad-CAM)
    max_mistakes: int = 24  # at most this many in all (every class's first before any second)
    grad_cam: bool = True

    @classmethod
    def from_config(cls, config: EvaluatorConfig) -> AnalysisOptions:
        gallery = config.mistakes_per_class if config.num_error_examples > 0 else 0
        return cls(
            thresholds=tuple(parse(config.thresholds)),
            bootstrap=bootstrap.BootstrapSpec(config.bootstrap_resamples, config.bootstrap_seed),
            slices=config.slices,
            min_slice_size=config.min_slice_size,
            max_slice_values=config.max_slice_values,
            mistakes_per_class=gallery,
            max_mistakes=config.num_error_examples,
            grad_cam=config.grad_cam,
        )


@dataclasses.dataclass
class ScoredSplit:
    labels: list[str]
    y: np.ndarray  # int64 [n]
    candidate: np.ndarray  # float32 [n, C]
    baseline: np.ndarray | None  # float32 [n, C], the same examples in the same order
    dims: list[slicing.Dimension]


class SubsetResult(NamedTuple):
    slice: slicing.Slice
    point: Measures
    replicates: Measures | None
    base_point: Measures | None
    base_replicates: Measures | None


def _concat(parts: list[Measures]) -> Measures:
    return Measures(
        {k: np.concatenate([p.overall[k] for p in parts]) for k in parts[0].overall},
        {k: np.concatenate([p.per_class[k] for p in parts]) for k in parts[0].per_class},
        np.concatenate([p.support for p in parts]),
        np.concatenate([p.total for p in parts]),
        np.zeros((0, 3, ECE_BINS)),  # the bins of the point values only
    )


# AUC and AUC-PR replicates sort nothing per replicate but walk every example of a slice once
# per replicate and class; above this many (replicates x slice images x classes, summed over
# the slices: a few minutes) only the whole split and the slices thresholds name get them.
RANK_BUDGET = 2_000_000_000


class _Blocks:
    """The replicate weight blocks, kept when one block holds them all (small splits), else
    drawn again for every pass (the same draws: replicate r is seeded by (seed, r))."""

    def __init__(
        self, n: int, spec: bootstrap.BootstrapSpec, max_elements: int = bootstrap.BLOCK_ELEMENTS
    ) -> None:
        self.n, self.spec, self.max_elements = n, spec, max_elements
        self.kept = None
        if n * spec.resamples <= max_elements:
            self.kept = list(bootstrap.blocks(n, spec, max_elements))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.kept is not None:
            return iter(self.kept)
        return bootstrap.blocks(self.n, self.spec, self.max_elements)


def _ranked_subsets(
    subsets: Sequence[slicing.Slice], named: set[vocabulary.SliceKey], classes: int, resamples: int
) -> list[int]:
    """Which subsets get AUC / AUC-PR replicates: all within RANK_BUDGET, else the whole split
    and the slices thresholds name."""
    work = sum(s.count for s in subsets[1:]) * classes * resamples
    return [i for i, s in enumerate(subsets) if work <= RANK_BUDGET or not s.key or s.key in named]


def _replicates(
    ex: Examples, subsets: Sequence[slicing.Slice], blocks: _Blocks, ranked: list[int]
) -> list[Measures]:
    """Every subset's replicate measures. Small splits (all replicates in one block): matrix
    products of the weights and each subset's columns, AUCs by cumulative sums; large splits
    (a few replicates per block): one weight row at a time, every slice of a dimension in one
    bincount pass (`_rows`)."""
    if blocks.kept is None:
        return _rows(ex, subsets, blocks, ranked)
    (_, weights), *more = blocks.kept
    assert not more
    reps = [linear(ex.take(s.index), weights[:, s.index]) for s in subsets]
    for i in ranked:
        sub = ex.take(subsets[i].index)
        areas = [
            rank_areas(rankings(sub, k), weights[:, subsets[i].index])
            for k in range(ex.num_classes)
        ]
        auc = np.stack([a for a, _ in areas], axis=1)
        reps[i] = with_ranks(reps[i], auc, np.stack([p for _, p in areas], axis=1))
    return reps


def _groupings(subsets: Sequence[slicing.Slice], n: int) -> list[tuple[np.ndarray, list[int]]]:
    """[(codes [n] (-1: none), the subset of each code)]: the one-dimension slices of a
    dimension partition the examples and share one grouping; any other subset has its own."""
    by_dim: dict[str, list[int]] = {}
    out = []
    for i, s in enumerate(subsets):
        if len(s.key) == 1:
            by_dim.setdefault(s.key[0][0], []).append(i)
        else:
            codes = np.full(n, -1, dtype=np.int64)
            codes[s.index] = 0
            out.append((codes, [i]))
    for members in by_dim.values():
        codes = np.full(n, -1, dtype=np.int64)
        for j, i in enumerate(members):
            codes[subsets[i].index] = j
        out.append((codes, members))
    return out


def _rows(
    ex: Examples, subsets: Sequence[slicing.Slice], blocks: _Blocks, ranked: list[int]
) -> list[Measures]:
    """`_replicates` one weight row at a time: memory O(n), no per-slice copies."""
    c, rows = ex.num_classes, blocks.spec.resamples
    groupings = _groupings(subsets, len(ex))
    ties = {(i, k): tie_groups(ex, k, subsets[i].index) for i in ranked for k in range(c)}
    sums = [np.zeros((rows, 3 * c + 3 * ECE_BINS + 2)) for _ in subsets]
    totals = [np.zeros(rows) for _ in subsets]
    areas = {i: (np.full((rows, c), np.nan), np.full((rows, c), np.nan)) for i in ranked}
    for start, weights in blocks:
        for r, w in enumerate(weights.astype(np.float64), start):
            for codes, members in groupings:
                grouped = grouped_sums(ex, codes, len(members), w)
                for j, i in enumerate(members):
                    sums[i][r], totals[i][r] = grouped[j], grouped[j, :c].sum()  # the support
            for (i, k), tg in ties.items():
                areas[i][0][r, k], areas[i][1][r, k] = tie_group_areas(tg, w[subsets[i].index])
    reps = [from_sums(sums[i], totals[i], c) for i in range(len(subsets))]
    for i, (auc, ap) in areas.items():
        reps[i] = with_ranks(reps[i], auc, ap)
    return reps


def measure_subsets(
    split: ScoredSplit,
    subsets: Sequence[slicing.Slice],
    spec: bootstrap.BootstrapSpec,
    named: Collection[vocabulary.SliceKey] = (),
    max_elements: int = bootstrap.BLOCK_ELEMENTS,
) -> list[SubsetResult]:
    """Point values and bootstrap replicates of every subset, for both models (the same
    replicates: paired). `named`: slices thresholds name (always get AUC replicates)."""
    cand = Examples.of(split.candidate, split.y)
    base = Examples.of(split.baseline, split.y) if split.baseline is not None else None
    points = [
        (point(cand.take(s.index)), point(base.take(s.index)) if base is not None else None)
        for s in subsets
    ]
    reps: list[Measures | None] = [None] * len(subsets)
    base_reps: list[Measures | None] = [None] * len(subsets)
    if spec.resamples > 0:
        blocks = _Blocks(len(split.y), spec, max_elements)
        ranked = _ranked_subsets(subsets, set(named), len(split.labels), spec.resamples)
        reps = list(_replicates(cand, subsets, blocks, ranked))
        if base is not None:
            base_reps = list(_replicates(base, subsets, blocks, ranked))
    return [
        SubsetResult(s, p, reps[i], bp, base_reps[i])
        for i, (s, (p, bp)) in enumerate(zip(subsets, points, strict=True))
    ]


# ------------------------------------------------------------------------- thresholds


def _pick(m: Measures, t: Threshold, labels: Sequence[str]) -> np.ndarray:
    if t.class_name is None:
        return m.overall[t.metric]
    return m.per_class[t.metric][:, labels.index(t.class_name)]


def _num(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def _interval_text(iv: list[float] | None, confidence: float, signed: bool = False) -> str:
    if iv is None:
        return "no interval"
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{confidence:.0%} interval [{f.format(iv[0])}, {f.format(iv[1])}]"


def _clears(low: float, high: float, bound_low: float | None, bound_high: float | None) -> bool:
    """[low, high] (a point: low == high) on the passing side of the bounds."""
    return (bound_low is None or low >= bound_low - TOLERANCE) and (
        bound_high is None or high <= bound_high + TOLERANCE
    )


class Outcome(NamedTuple):
    threshold: Threshold
    images: int  # in the threshold's subset
    value: float | None  # the metric, or its change against the baseline
    interval: list[float] | None
    passed: bool | None  # None: not gated (no baseline, slice under min_slice_size)
    reason: str
    candidate: float | None = None  # change thresholds: the two values compared
    baseline: float | None = None

    def record(self) -> dict[str, Any]:
        """One line of blessing.json's `thresholds`."""
        t = self.threshold
        return {
            **t.as_dict(),
            "origin": t.origin,
            "kind": "change" if t.change is not None else "value",
            "bound": t.bound_text(),
            "count": self.images,
            "value": self.value,
            "interval": self.interval,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "passed": self.passed,
            "reason": self.reason,
        }


def _verdict(
    t: Threshold, value: float, iv: list[float] | None, what: str, conf: float
) -> tuple[bool, str]:
    """Pass or fail with the reason: by the point, or with_confidence by the interval."""
    if t.change is not None:
        low, high = (t.change.bound, None) if t.higher_is_better else (None, t.change.bound)
    else:
        low, high = t.lower, t.upper
    ivt = _interval_text(iv, conf, signed=t.change is not None)
    if not t.with_confidence:
        ok = _clears(value, value, low, high)
        return ok, f"{what} {'meets' if ok else 'fails'} {t.bound_text()} ({ivt})"
    if iv is None:
        return False, f"{what}: no interval (bootstrap off) for with_confidence: failed"
    ok = _clears(iv[0], iv[1], low, high)
    word = "clears" if ok else "does not clear"
    return ok, f"{what}: its {ivt} {word} {t.bound_text()} (with_confidence)"


def _check_value(
    t: Threshold, res: SubsetResult, labels: Sequence[str], subject: str, conf: float
) -> Outcome:
    value = float(_pick(res.point, t, labels)[0])
    reps = _pick(res.replicates, t, labels) if res.replicates is not None else None
    iv = bootstrap.interval(reps, conf) if reps is not None else None
    if np.isnan(value):
        return Outcome(t, res.slice.count, None, iv, False, f"{subject} is undefined: failed")
    ok, reason = _verdict(t, value, iv, f"{subject} {value:.4f}", conf)
    return Outcome(t, res.slice.count, value, iv, ok, reason)


def _check_change(
    t: Threshold, res: SubsetResult, labels: Sequence[str], subject: str, conf: float
) -> Outcome:
    """The candidate's change against the baseline, the interval from the paired replicates."""
    assert res.base_point is not None
    value = float(_pick(res.point, t, labels)[0])
    base = float(_pick(res.base_point, t, labels)[0])
    change = float(_change(t, np.array([value]), np.array([base]))[0])
    iv = None
    if res.replicates is not None and res.base_replicates is not None:
        reps = _change(t, _pick(res.replicates, t, labels), _pick(res.base_replicates, t, labels))
        iv = bootstrap.interval(reps, conf)
    pair = f"candidate {value:.4f}, baseline {base:.4f}"
    if np.isnan(change):
        reason = f"{subject} change is undefined ({pair}): failed"
        return Outcome(t, res.slice.count, None, iv, False, reason, _num(value), _num(base))
    ok, reason = _verdict(t, change, iv, f"{subject} change {change:+.4f} ({pair})", conf)
    return Outcome(t, res.slice.count, change, iv, ok, reason, value, base)


def check(
    t: Threshold,
    res: SubsetResult,
    labels: Sequence[str],
    spec: bootstrap.BootstrapSpec,
    min_slice_size: int,
    baseline_note: str | None,
) -> Outcome:
    """One threshold on its subset's results."""
    subject = t.subject() + (f" ({res.slice.count} test images)" if t.slice else "")
    if t.slice and res.slice.count < min_slice_size:
        reason = f"{subject}: not gated, fewer than min_slice_size {min_slice_size} images"
        return Outcome(t, res.slice.count, None, None, None, reason)
    if t.change is None:
        return _check_value(t, res, labels, subject, spec.confidence)
    if res.base_point is None:
        reason = f"{subject} change: {baseline_note or NO_BASELINE}"
        return Outcome(t, res.slice.count, None, None, None, reason)
    return _check_change(t, res, labels, subject, spec.confidence)


def _change(t: Threshold, cand: np.ndarray, base: np.ndarray) -> np.ndarray:
    diff = cand - base
    if t.change is None or t.change.kind == "absolute":
        return diff
    scale = np.abs(base)
    out = np.full(diff.shape, np.nan)
    np.divide(diff, scale, out=out, where=scale != 0)
    return out


# ---------------------------------------------------------------------------- analyse


@dataclasses.dataclass
class Analysis:
    document: dict[str, Any]  # analysis.json
    outcomes: list[Outcome]

    @property
    def passed(self) -> bool:
        return all(o.passed is not False for o in self.outcomes)


def _value(point: float, reps: np.ndarray | None, confidence: float) -> dict[str, Any]:
    return {
        "value": _num(point),
        "interval": bootstrap.interval(reps, confidence) if reps is not None else None,
    }


def summary(res: SubsetResult, labels: Sequence[str], confidence: float) -> dict[str, Any]:
    """A subset's metrics, per class too, with their intervals (NaN: null)."""
    point, reps = res.point, res.replicates
    metrics = {
        name: _value(point.overall[name][0], reps.overall[name] if reps else None, confidence)
        for name in METRICS
    }
    per_class: dict[str, dict[str, Any]] = {}
    for i, label in enumerate(labels):
        per_class[label] = {
            name: _value(
                point.per_class[name][0, i],
                reps.per_class[name][:, i] if reps else None,
                confidence,
            )
            for name in PER_CLASS
        }
        per_class[label]["support"] = int(point.support[0, i])
    return {
        "slice": dict(res.slice.key),
        "count": res.slice.count,
        "metrics": metrics,
        "per_class": per_class,
    }


def calibration(point: Measures) -> dict[str, Any]:
    """The reliability diagram's bins of the whole split."""
    count, correct, confidence = point.calibration[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
        mean_conf = np.where(count > 0, confidence / np.maximum(count, 1), np.nan)
    return {
        "edges": np.linspace(0.0, 1.0, ECE_BINS + 1).round(6).tolist(),
        "count": count.astype(int).tolist(),
        "accuracy": [_num(v) for v in accuracy],
        "confidence": [_num(v) for v in mean_conf],
    }


def _subsets(
    split: ScoredSplit, checks: Sequence[Threshold], options: AnalysisOptions
) -> list[slicing.Slice]:
    """The whole split, every single-dimension slice (options.slices), and each slice a
    threshold names that is not one of those (several dimensions at once)."""
    subsets = [slicing.Slice((), np.arange(len(split.y)))]
    if options.slices:
        subsets += slicing.single_slices(split.dims)
    known = {s.key for s in subsets}
    skipped = {d.name for d in split.dims if d.codes is None}
    for t in checks:
        if t.slice not in known and not any(dim in skipped for dim, _ in t.slice):
            known.add(t.slice)
            subsets.append(slicing.select(split.dims, t.slice))
    return subsets


def _not_sliced(t: Threshold, dims: Sequence[slicing.Dimension]) -> Outcome | None:
    for d in dims:
        if d.codes is None and any(dim == d.name for dim, _ in t.slice):
            reason = f"{t.subject()}: dimension {d.name!r} is not sliced ({d.skipped}): failed"
            return Outcome(t, 0, None, None, False, reason)
    return None


def analyse(
    split: ScoredSplit,
    checks: Sequence[Threshold],
    options: AnalysisOptions,
    baseline_note: str | None = None,
) -> Analysis:
    """Metrics of the whole split and of every slice, with intervals; every threshold
    (resolved: thresholds.resolve) checked on its subset."""
    subsets = _subsets(split, checks, options)
    named = {t.slice for t in checks if t.slice}
    results = {r.slice.key: r for r in measure_subsets(split, subsets, options.bootstrap, named)}
    outcomes = []
    for t in checks:
        res = results.get(t.slice)
        outcome = _not_sliced(t, split.dims)
        if outcome is None and res is not None:
            spec, size = options.bootstrap, options.min_slice_size
            outcome = check(t, res, split.labels, spec, size, baseline_note)
        assert outcome is not None
        outcomes.append(outcome)
    return Analysis(_document(split, subsets, results, options), outcomes)


def _document(
    split: ScoredSplit,
    subsets: Sequence[slicing.Slice],
    results: dict[vocabulary.SliceKey, SubsetResult],
    options: AnalysisOptions,
) -> dict[str, Any]:
    """analysis.json."""
    conf, spec = options.bootstrap.confidence, options.bootstrap
    overall = results[()]
    every = len(_ranked_subsets(subsets, set(), len(split.labels), spec.resamples)) == len(subsets)
    document: dict[str, Any] = {
        "labels": list(split.labels),
        "bootstrap": {
            **spec.describe(),
            "auc_intervals": "every slice" if every else "the whole split and named slices",
        },
        "min_slice_size": options.min_slice_size,
        "overall": summary(overall, split.labels, conf),
        "calibration": calibration(overall.point),
        "slices": [
            {
                **summary(results[s.key], split.labels, conf),
                "gated": s.count >= options.min_slice_size,
            }
            for s in subsets[1:]
        ],
        "dimensions": {
            d.name: {"values": len(d.values), "skipped": d.skipped or None} for d in split.dims
        },
    }
    if overall.base_point is not None:
        base = SubsetResult(overall.slice, overall.base_point, overall.base_replicates, None, None)
        document["baseline"] = summary(base, split.labels, conf)
    return document
