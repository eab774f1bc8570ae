"""Bootstrap resampling of the test set: replicate weights and percentile intervals.

A replicate draws n examples from the n test examples uniformly with replacement; its weights
are how often each example was drawn (a row of `weights`). Replicate r is drawn by its own
generator, seeded by (seed, r), so a replicate is the same whatever the block it is computed
in, and the whole set is reproduced by the seed alone. Every metric of every slice and of both
models (candidate and baseline: a paired bootstrap, the same draws for both) is computed on the
same replicates; a slice uses the replicate's draws that fall in the slice.

The interval is the percentile interval (Efron): the (1-confidence)/2 and (1+confidence)/2
quantiles of the replicate values (numpy's linear interpolation), with the default 1,000
replicates and 95%. Replicates where a metric is undefined (a resample without positives for
an AUC) are left out of that metric's interval; their number is reported.

Memory: replicates are made in blocks of at most BLOCK_ELEMENTS weights (r x n): all 1,000 at
once up to 1,000 images, one per block from 1 M images on (8 MiB per float64 copy of a block).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
BLOCK_ELEMENTS = 1 << 20  # weights per block: 8 MiB as float64


class BootstrapSpec(NamedTuple):
    resamples: int = DEFAULT_RESAMPLES  # 0: no intervals
    seed: int = DEFAULT_SEED
    confidence: float = DEFAULT_CONFIDENCE

    def describe(self) -> dict:
        return {
            "method": "percentile bootstrap, paired across models and slices",
            "resamples": self.resamples,
            "seed": self.seed,
            "confidence": self.confidence,
        }


def replicate_weights(n: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Weights [stop - start, n] (int32 counts summing to n per row) of replicates start..stop."""
    if n == 0:
        return np.zeros((stop - start, 0), dtype=np.int32)
    draws = np.stack(
        [np.random.default_rng([seed, r]).integers(0, n, n) for r in range(start, stop)]
    )
    offsets = (np.arange(stop - start) * n)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=(stop - start) * n)
    return counts.reshape(stop - start, n).astype(np.int32)


def blocks(
    n: int, spec: BootstrapSpec, max_elements: int = BLOCK_ELEMENTS
) -> Iterator[tuple[int, np.ndarray]]:
    """(first replicate, weights [r, n]) for every block of replicates, in order."""
    per_block = max(1, max_elements // max(n, 1))
    for start in range(0, spec.resamples, per_block):
        stop = min(start + per_block, spec.resamples)
        yield start, replicate_weights(n, spec.seed, start, stop)


def interval(values: np.ndarray, confidence: float) -> list[float] | None:
    """[low, high] percentile interval of the defined replicate values; None when none is."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]
