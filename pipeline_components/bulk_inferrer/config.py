"""The BulkInferrer's config section (`batch_predict:` in pipeline.yaml)."""

from __future__ import annotations

import dataclasses

from pipeline_components.core.config import option


@dataclasses.dataclass
class BatchPredictConfig:
    input: str | None = option(
        None,
        doc="images to label: a folder (any depth), a glob or an ExampleGen output; in a "
        "pipeline run, with each newly pushed model (null: the BulkInferrer is skipped)",
    )
    output_format: str = option("jsonl", choices=("jsonl", "csv"), doc="predictions file format")
    batch_size: int = option(32, ge=1, le=65536, doc="images per call of the signature")
    num_shards: int = option(0, ge=0, le=100_000, doc="files per output; 0: the runner decides")
    max_image_pixels: int | None = option(
        None, ge=1, le=2**40, doc="larger images are errors; null: the model's own limit"
    )
    model_copies: int | None = option(
        None,
        ge=1,
        le=1024,
        key=False,
        doc="model copies per machine shared by its worker processes; null: one per process",
    )
    beam_args: list[str] | None = option(
        None, key=False, doc="its Beam jobs' options, replacing beam.args (null: beam.args)"
    )
