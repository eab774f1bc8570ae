"""The Evaluator's config section (`evaluator:` in pipeline.yaml)."""

from __future__ import annotations

import dataclasses

from pipeline_components.core.config import option


@dataclasses.dataclass
class EvaluatorConfig:
    min_accuracy: float = option(0.9, ge=0, le=1, doc="the gate on test accuracy")
    max_regression: float = option(0.01, ge=0, le=1, doc="allowed drop below the baseline")
    batch_size: int = option(32, ge=1, doc="images per call of the model")
    num_error_examples: int = option(12, ge=0, doc="misclassified images in errors.png")
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
