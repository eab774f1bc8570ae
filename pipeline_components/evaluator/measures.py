"""The gate's metrics, computed for many bootstrap replicates at once (pure numpy).

Names as `evaluator.thresholds` spells them (docs/evaluation.md):

- `accuracy`: the share of examples whose highest probability is their class.
- `precision`, `recall`, `f1`: per class, and overall their unweighted mean over every class
  (scikit-learn's `average="macro"` with `labels` = all classes; a class nobody predicted has
  precision 0, as scikit-learn's `zero_division=0`). F1 = 2 tp / (support + predicted).
- `auc`: ROC AUC, ties counting one half. Two classes: the score of labels[1] against the
  rest; more: the mean over classes of each class's one-vs-rest AUC (scikit-learn's
  `multi_class="ovr", average="macro"`). Per class: that class's one-vs-rest AUC.
- `auc_pr`: average precision (scikit-learn's `average_precision_score`: the step-wise area
  under the precision-recall curve, no interpolation); two classes / macro / per class as auc.
- `log_loss`: mean -log p(true class), p clipped to [eps, 1 - eps], eps the float32 machine
  epsilon (scikit-learn's `log_loss` on the model's float32 probabilities). metrics.json's
  `loss` keeps Keras' clipping (1e-7), the Trainer's number.
- `ece`: expected calibration error of the top-label confidence (the highest probability):
  sum over 15 equal-width bins of |correct - confidence| summed in the bin, divided by n
  (Guo et al., 2017). Bin b holds the confidences in (b/15, (b+1)/15], bin 0 also 0: the bins
  of scikit-learn's `calibration_curve(strategy="uniform")`.

Undefined values are NaN: AUC or AUC-PR of a class without positives or without negatives (and
the mean over classes when no class has both), anything of zero examples.

`measure(examples, W)` takes replicate weights W [r, n] (how often each example was drawn in
each of r resamples; the point value is one row of ones) and returns every metric for every
row: the sums are one matrix product of W with per-example columns (in chunks of examples), and
AUC / AUC-PR cumulative sums of W along the examples sorted by score. Memory is O(r x n) plus
the chunk, so the caller bounds it by choosing r (bootstrap.py).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

ECE_BINS = 15
LOG_LOSS_EPSILON = float(np.finfo(np.float32).eps)
# Examples per chunk of the matrix product: the per-example columns of one chunk stay small.
CHUNK = 16_384


@dataclasses.dataclass(frozen=True)
class Examples:
    """One model's predictions on n examples, with what every metric needs per example."""

    y: np.ndarray  # int64 [n] true class
    scores: np.ndarray  # float32 [n, C] probabilities as the model returned them
    pred: np.ndarray  # int64 [n] argmax (the first on ties, as numpy and the signature)
    correct: np.ndarray  # float64 [n] 1.0 where pred == y
    confidence: np.ndarray  # float64 [n] the highest probability
    loss: np.ndarray  # float64 [n] -log clip(p(true class))
    bins: np.ndarray  # int64 [n] the calibration bin of the confidence

    @classmethod
    def of(cls, probabilities: np.ndarray, y: np.ndarray) -> Examples:
        scores = np.asarray(probabilities)
        y = np.asarray(y, dtype=np.int64)
        pred = scores.argmax(axis=1).astype(np.int64) if len(y) else np.zeros(0, np.int64)
        rows = np.arange(len(y))
        confidence = scores[rows, pred].astype(np.float64)
        p_true = np.clip(scores[rows, y].astype(np.float64), LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
        return cls(
            y=y,
            scores=scores,
            pred=pred,
            correct=(pred == y).astype(np.float64),
            confidence=confidence,
            loss=-np.log(p_true),
            bins=calibration_bins(confidence),
        )

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[1])

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Examples:
        return Examples(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


def calibration_bins(confidence: np.ndarray) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    return np.searchsorted(edges[1:-1], confidence).astype(np.int64)


class Measures(NamedTuple):
    """Every metric for r rows of weights: overall [r] and per class [r, C]."""

    overall: dict[str, np.ndarray]
    per_class: dict[str, np.ndarray]
    support: np.ndarray  # [r, C] weighted count of each true class
    total: np.ndarray  # [r] weighted number of examples
    calibration: np.ndarray  # [r, 3, ECE_BINS]: count, sum of correct, sum of confidence


def _divide(num: np.ndarray, den: np.ndarray, empty: float = np.nan) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _columns(ex: Examples, start: int, stop: int) -> np.ndarray:
    """The per-example columns every sum needs, for examples start..stop:
    onehot(y) | onehot(pred) | onehot(y) where correct | bin counts | bin correct |
    bin confidence | loss | correct."""
    c, b = ex.num_classes, ECE_BINS
    n = stop - start
    rows = np.arange(n)
    y, pred = ex.y[start:stop], ex.pred[start:stop]
    correct, bins = ex.correct[start:stop], ex.bins[start:stop]
    cols = np.zeros((n, 3 * c + 3 * b + 2))
    cols[rows, y] = 1.0
    cols[rows, c + pred] = 1.0
    cols[rows, 2 * c + y] = correct
    cols[rows, 3 * c + bins] = 1.0
    cols[rows, 3 * c + b + bins] = correct
    cols[rows, 3 * c + 2 * b + bins] = ex.confidence[start:stop]
    cols[:, -2] = ex.loss[start:stop]
    cols[:, -1] = correct
    return cols


# Up to this many weight rows the sums are bincounts row by row; above, one matrix product with
# the per-example columns (built once per call, so worth it only for many rows).
FEW_ROWS = 8


def _sums(ex: Examples, weights: np.ndarray) -> np.ndarray:
    """weights [r, n] @ columns [n, K] (`_columns`), a chunk of examples at a time."""
    if weights.shape[0] <= FEW_ROWS:
        return np.stack([_row_sums(ex, w) for w in weights]).reshape(weights.shape[0], -1)
    c, b = ex.num_classes, ECE_BINS
    total = np.zeros((weights.shape[0], 3 * c + 3 * b + 2))
    for start in range(0, len(ex), CHUNK):
        stop = min(start + CHUNK, len(ex))
        total += weights[:, start:stop] @ _columns(ex, start, stop)
    return total


def _row_sums(ex: Examples, w: np.ndarray) -> np.ndarray:
    """One row of `_sums` by bincounts: what large splits use, one replicate at a time."""
    c, b = ex.num_classes, ECE_BINS
    hit = w * ex.correct
    return np.concatenate(
        [
            np.bincount(ex.y, w, c),
            np.bincount(ex.pred, w, c),
            np.bincount(ex.y, hit, c),
            np.bincount(ex.bins, w, b),
            np.bincount(ex.bins, hit, b),
            np.bincount(ex.bins, w * ex.confidence, b),
            [w @ ex.loss, hit.sum()],
        ]
    )


class Ranking(NamedTuple):
    """One score column sorted once: reused for every block of replicate weights."""

    order: np.ndarray  # ascending by score (stable)
    ends: np.ndarray  # last index (in `order`) of each group of equal scores
    positive: np.ndarray  # float64 [n] in sorted order: 1.0 for the class, 0.0 for the rest


def ranking(scores: np.ndarray, positive: np.ndarray) -> Ranking:
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    return Ranking(order, ends, positive[order].astype(np.float64))


def rank_areas(ranked: Ranking, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ROC AUC, average precision) under each row of weights [r, n] (in the examples' order);
    NaN where a row has no positive or no negative weight."""
    w = weights[:, ranked.order]
    pos_w = w * ranked.positive
    cum_pos = np.cumsum(pos_w, axis=1)[:, ranked.ends]  # [r, G], ascending score groups
    cum_neg = np.cumsum(w - pos_w, axis=1)[:, ranked.ends]
    return group_areas(np.diff(cum_pos, axis=1, prepend=0.0), np.diff(cum_neg, axis=1, prepend=0.0))


def group_areas(pos_g: np.ndarray, neg_g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ROC AUC, average precision) from the positive and negative weight [r, G] of each group
    of equal scores, in ascending score order."""
    cum_pos, cum_neg = np.cumsum(pos_g, axis=1), np.cumsum(neg_g, axis=1)
    below_neg = cum_neg - neg_g
    total_pos, total_neg = cum_pos[:, -1], cum_neg[:, -1]
    u = np.sum(pos_g * (below_neg + 0.5 * neg_g), axis=1)
    auc = _divide(u, total_pos * total_neg)
    # at threshold s_g: everything with score >= s_g is called positive
    tp = total_pos[:, None] - (cum_pos - pos_g)
    fp = total_neg[:, None] - below_neg
    precision = _divide(tp, tp + fp, empty=0.0)
    ap = _divide(np.sum(pos_g * precision, axis=1), total_pos)
    ap[(total_neg == 0) & (total_pos > 0)] = np.nan  # as AUC: one class only says nothing
    return auc, ap


class TieGroups(NamedTuple):
    """One score column as groups of equal scores, for one weight row at a time (large splits):
    each example's group (ascending score order), without reordering the weights."""

    group: np.ndarray  # int64 [n]: the example's group
    groups: int
    positive: np.ndarray  # bool [n]


def tie_groups(ex: Examples, k: int, index: np.ndarray) -> TieGroups:
    ranked = rankings(ex, k, index)
    starts = np.zeros(len(ranked.order), dtype=np.int64)
    starts[ranked.ends[:-1] + 1] = 1
    group = np.empty(len(ranked.order), dtype=np.int64)
    group[ranked.order] = np.cumsum(starts)
    return TieGroups(group, len(ranked.ends), ex.y[index] == k)


def tie_group_areas(tg: TieGroups, w: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, average precision) under one weight row [n] (the examples' order)."""
    pos = np.bincount(tg.group, w * tg.positive, tg.groups)
    auc, ap = group_areas(pos[None], (np.bincount(tg.group, w, tg.groups) - pos)[None])
    return float(auc[0]), float(ap[0])


def grouped_sums(ex: Examples, codes: np.ndarray, values: int, w: np.ndarray) -> np.ndarray:
    """`_sums` of one weight row [n] for every value of a grouping at once: codes [n] in
    -1..values-1 (-1: in no group) -> [values, K]. One bincount per column family over all
    examples, so the slices of a dimension cost one pass, not one per slice."""
    c, b = ex.num_classes, ECE_BINS
    shifted = codes + 1  # 0: no group, dropped
    size = values + 1
    hit = w * ex.correct

    def per(kind_codes: np.ndarray, width: int, weights: np.ndarray) -> np.ndarray:
        flat = np.bincount(shifted * width + kind_codes, weights, size * width)
        return flat.reshape(size, width)[1:]

    ones = np.zeros_like(codes)
    return np.concatenate(
        [
            per(ex.y, c, w),
            per(ex.pred, c, w),
            per(ex.y, c, hit),
            per(ex.bins, b, w),
            per(ex.bins, b, hit),
            per(ex.bins, b, w * ex.confidence),
            per(ones, 1, w * ex.loss),
            per(ones, 1, hit),
        ],
        axis=1,
    )


def rankings(ex: Examples, k: int, index: np.ndarray | None = None) -> Ranking:
    """Class k's one-vs-rest ranking of the examples (those at `index`)."""
    scores, y = ex.scores[:, k], ex.y
    if index is not None:
        scores, y = scores[index], y[index]
    return ranking(scores.astype(np.float64), y == k)


def linear(ex: Examples, weights: np.ndarray) -> Measures:
    """Every metric but AUC and AUC-PR (NaN) for each row of weights [r, n]: sums only."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(ex):
        raise ValueError(f"weights must be [r, {len(ex)}], got {weights.shape}")
    return from_sums(_sums(ex, weights), weights.sum(axis=1), ex.num_classes)


def from_sums(sums: np.ndarray, count: np.ndarray, c: int) -> Measures:
    """The metrics (AUC and AUC-PR NaN) from `_sums` rows [r, K] and the weight totals [r]."""
    b = ECE_BINS
    support, predicted, tp = sums[:, :c], sums[:, c : 2 * c], sums[:, 2 * c : 3 * c]
    calibration = sums[:, 3 * c : 3 * c + 3 * b].reshape(-1, 3, b)
    precision = _divide(tp, predicted, empty=0.0)
    recall = _divide(tp, support, empty=0.0)
    f1 = _divide(2 * tp, support + predicted, empty=0.0)
    rows = len(count)
    per_class = {
        "precision": precision, "recall": recall, "f1": f1,
        "auc": np.full((rows, c), np.nan), "auc_pr": np.full((rows, c), np.nan),
    }  # fmt: skip
    gap = np.abs(calibration[:, 1, :] - calibration[:, 2, :]).sum(axis=1)
    overall = {
        "accuracy": _divide(sums[:, -1], count),
        "precision": precision.mean(axis=1),
        "recall": recall.mean(axis=1),
        "f1": f1.mean(axis=1),
        "auc": np.full(rows, np.nan),
        "auc_pr": np.full(rows, np.nan),
        "log_loss": _divide(sums[:, -2], count),
        "ece": _divide(gap, count),
    }
    return Measures(overall, per_class, support, count, calibration)


def with_ranks(m: Measures, auc: np.ndarray, auc_pr: np.ndarray) -> Measures:
    """`m` with the per-class AUC and AUC-PR [r, C] filled in, and their overall values."""
    c = auc.shape[1]
    m.per_class["auc"], m.per_class["auc_pr"] = auc, auc_pr
    m.overall["auc"] = auc[:, 1] if c == 2 else _nanmean(auc)
    m.overall["auc_pr"] = auc_pr[:, 1] if c == 2 else _nanmean(auc_pr)
    return m


def measure(ex: Examples, weights: np.ndarray) -> Measures:
    """Every metric of METRICS for each row of weights [r, n] over the examples."""
    m = linear(ex, weights)
    weights = np.asarray(weights, dtype=np.float64)
    auc = np.empty((weights.shape[0], ex.num_classes))
    auc_pr = np.empty_like(auc)
    for k in range(ex.num_classes):
        auc[:, k], auc_pr[:, k] = rank_areas(rankings(ex, k), weights)
    return with_ranks(m, auc, auc_pr)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over classes of the defined values; NaN where none is."""
    defined = ~np.isnan(values)
    return _divide(np.where(defined, values, 0.0).sum(axis=1), defined.sum(axis=1))


def point(ex: Examples) -> Measures:
    return measure(ex, np.ones((1, len(ex))))
