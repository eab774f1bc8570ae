"""SchemaGen's config section (`schema_gen:` in pipeline.yaml)."""

from __future__ import annotations

import dataclasses

from pipeline_components.core.config import option


@dataclasses.dataclass
class SchemaGenConfig:
    schema_path: str | None = option(None, doc="a schema file used as it is (else inferred)")
    reuse_served: bool = option(True, doc="keep the schema behind the served model")
    class_share_margin: float = option(
        0.1, ge=0, le=1, doc="inferred class-share bounds: the share seen +- this"
    )
    split_size_margin: float = option(
        0.5, ge=0, le=1, doc="inferred minimum split size: (1 - this) x the size seen"
    )
    size_range_factor: float = option(
        2.0, ge=1, le=1000, doc="inferred size ranges: smallest seen / this .. largest x this"
    )
    max_fraction_outside: float = option(
        0.01, ge=0, le=1, doc="inferred schema: share of images allowed outside a size range"
    )
