"""The names the `evaluator:` section speaks: the gate's metrics and the slice dimensions.

Pure Python, no numpy: config.py checks `evaluator.thresholds` against them when pipeline.yaml
is loaded (thresholds.parse); measures.py computes the metrics, slicing.py the slices.
docs/evaluation.md defines each one.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    name: str
    higher_is_better: bool
    per_class: bool  # also has one value per class (overall: the macro mean)
    title: str
    bounded: bool = True  # its values lie in [0, 1]


METRICS = {
    m.name: m
    for m in (
        Metric("accuracy", True, False, "accuracy"),
        Metric("precision", True, True, "precision"),
        Metric("recall", True, True, "recall"),
        Metric("f1", True, True, "F1"),
        Metric("auc", True, True, "ROC AUC"),
        Metric("auc_pr", True, True, "AUC-PR (average precision)"),
        Metric("log_loss", False, False, "log loss", bounded=False),
        Metric("ece", False, False, "expected calibration error"),
    )
}
PER_CLASS = tuple(name for name, m in METRICS.items() if m.per_class)

# Slice dimensions: the built-in ones, then metadata.csv's columns (slicing.py).
CLASS, SIZE, FOLDER = "class", "size", "folder"
BUILT_IN = (CLASS, SIZE, FOLDER)
SIZE_EDGES = (32, 64, 128, 256, 512, 1024)  # the shorter side's bucket edges, in pixels
SIZE_BUCKETS = ("0-31", "32-63", "64-127", "128-255", "256-511", "512-1023", "1024+")
DEFAULT_MAX_VALUES = 100
DEFAULT_MIN_SLICE_SIZE = 30

SliceKey = tuple[tuple[str, str], ...]  # ((dimension, value), ...), dimensions in order


def slice_name(key: SliceKey) -> str:
    return ", ".join(f"{dim}={value}" for dim, value in key) or "all"
