"""ClassCounter's config section (`class_counter:` in pipeline.yaml)."""

from __future__ import annotations

import dataclasses

from pipeline_components.core.config import option


@dataclasses.dataclass
class ClassCounterConfig:
    min_per_class: int = option(1, ge=0, doc="fail when a class has fewer examples in a split")
