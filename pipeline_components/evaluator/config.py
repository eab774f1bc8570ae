"""The Evaluator's config section (`evaluator:` in pipeline.yaml): the gate (docs/evaluation.md).

`thresholds` is a list of mappings (`class` is a Python keyword, so not a dataclass field),
checked by thresholds.parse when the config loads: a bad key, metric, bound or slice is one
line naming `evaluator.thresholds[i]` before anything runs. Class names and metadata.csv's
columns are checked at the Evaluator's start, before scoring (thresholds.resolve). Besides
core.config this imports only thresholds.py, which is pure Python (no numpy), like this file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline_components.core.config import option
from pipeline_components.evaluator import thresholds, vocabulary

MAX_RESAMPLES = 100_000


@dataclasses.dataclass
class EvaluatorConfig:
    min_accuracy: float = option(
        0.9, ge=0, le=1, doc="the gate on test accuracy: {metric: accuracy, lower: A}"
    )
    max_regression: float = option(
        0.01,
        ge=0,
        le=1,
        doc="allowed drop of accuracy below the served model's on the same test images: "
        "{metric: accuracy, change: {absolute: -R}}",
    )
    thresholds: list[dict[str, Any]] = option(
        factory=list,
        doc="more gates, one mapping each: {metric, class, lower, upper, change, slice, "
        "with_confidence} (docs/evaluation.md); metrics: " + ", ".join(vocabulary.METRICS),
    )
    bootstrap_resamples: int = option(
        1000,
        ge=0,
        le=MAX_RESAMPLES,
        doc="bootstrap resamples of the test images behind every 95% interval (0: no "
        "intervals; with_confidence thresholds need them); time grows with resamples x images",
    )
    bootstrap_seed: int = option(
        0, ge=0, le=2**32 - 1, doc="seed of the resamples: the same seed, the same intervals"
    )
    slices: bool = option(
        True,
        doc="measure every slice (true class, image size, source folder, metadata.csv columns);"
        " slices thresholds name are measured either way",
    )
    min_slice_size: int = option(
        vocabulary.DEFAULT_MIN_SLICE_SIZE,
        ge=1,
        le=10**9,
        doc="a slice with fewer test images is reported, never gated",
    )
    max_slice_values: int = option(
        vocabulary.DEFAULT_MAX_VALUES,
        ge=1,
        le=10_000,
        doc="a dimension with more distinct values in the test split (a per-image id) is not "
        "sliced; a threshold naming it fails",
    )
    mistakes_per_class: int = option(
        4, ge=0, le=64, doc="most confident wrong test images of each true class in mistakes.png"
    )
    num_error_examples: int = option(
        24,
        ge=0,
        le=256,
        doc="misclassified test images in mistakes.png in all (each class's most confident "
        "first, in turn)",
    )
    grad_cam: bool = option(
        True,
        doc="a Grad-CAM heat map on each image of mistakes.png (models that export grad_cam)",
    )
    batch_size: int = option(32, ge=1, le=4096, doc="images per call of the model")
    beam_args: list[str] | None = option(
        None, key=False, doc="its Beam jobs' options, replacing beam.args (null: beam.args)"
    )
    model_copies: int | None = option(
        None,
        ge=1,
        le=1024,
        key=False,
        doc="load the model this many times per machine, shared by its worker processes "
        "(Beam's model_copies); null: one copy per worker process",
    )

    def validate(self, fail: Any) -> None:
        try:
            parsed = thresholds.parse(self.thresholds, "thresholds")
        except thresholds.ThresholdError as e:
            fail.says(e.where, e.text)
        confident = [t for t in parsed if t.with_confidence]
        if confident and self.bootstrap_resamples == 0:
            fail.says(
                confident[0].origin + ".with_confidence",
                "needs intervals: bootstrap_resamples is 0",
            )
