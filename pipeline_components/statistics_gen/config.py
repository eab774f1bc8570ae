"""StatisticsGen's config section (`statistics_gen:` in pipeline.yaml)."""

from __future__ import annotations

import dataclasses

from pipeline_components.core.config import option


@dataclasses.dataclass
class StatisticsGenConfig:
    num_quantiles: int = option(
        101, ge=3, le=1001, doc="quantiles kept per feature, min and max included"
    )
    quantile_epsilon: float = option(
        0.01, gt=0, le=0.1, doc="the sketch's rank error bound, as a share of the examples"
    )
    beam_args: list[str] | None = option(
        None, key=False, doc="its Beam jobs' options, replacing beam.args (null: beam.args)"
    )
