"""The ExampleValidator's config section (`example_validator:` in pipeline.yaml): what each kind
of anomaly does, and the thresholds of the baseline comparisons."""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline_components.core.config import option

SEVERITIES = ("fail", "warn", "off")


def _severity(default: str, doc: str) -> Any:
    return option(default, choices=SEVERITIES, doc=doc)


@dataclasses.dataclass
class SeverityConfig:
    """What each kind of anomaly does: fail (stop before the Trainer), warn (report), off."""

    missing_class: str = _severity("fail", "a class of the schema or the baseline is gone")
    new_class: str = _severity("fail", "a class the schema does not list")
    class_share_out_of_bounds: str = _severity("fail", "a class share outside the schema's")
    class_share_drift: str = _severity("warn", "class shares moved from the baseline's")
    split_size_out_of_range: str = _severity("fail", "a split size outside the schema's")
    split_shrank: str = _severity("fail", "a split much smaller than the baseline's")
    image_size_out_of_range: str = _severity("fail", "images outside the schema's size ranges")
    image_size_drift: str = _severity("fail", "image sizes moved from the baseline's")
    encoded_size_drift: str = _severity("warn", "encoded bytes moved from the baseline's")
    new_format: str = _severity("warn", "an image format the schema does not list")
    unexpected_channels: str = _severity("warn", "a channel count the schema does not list")
    skipped_files_jump: str = _severity("warn", "many more unusable files than the baseline")
    cross_split_duplicates: str = _severity("warn", "more images shared between splits")
    baseline_missing: str = _severity("warn", "a model is served, its data's statistics unknown")


@dataclasses.dataclass
class ExampleValidatorConfig:
    severity: SeverityConfig = option(
        factory=SeverityConfig, doc="fail, warn or off for each kind of anomaly"
    )
    max_class_share_drift: float = option(
        0.1, gt=0, le=1, doc="L-infinity distance of class shares from the baseline's"
    )
    max_size_drift: float = option(
        0.1, gt=0, le=1, doc="Jensen-Shannon divergence of width/height/megapixel histograms"
    )
    max_encoded_size_drift: float = option(
        0.2, gt=0, le=1, doc="Jensen-Shannon divergence of encoded-bytes histograms"
    )
    max_split_shrink: float = option(
        0.2, gt=0, le=1, doc="a split may be this share smaller than the baseline's"
    )
    max_skipped_increase: float = option(
        0.02, ge=0, le=1, doc="rise of a split's unusable-file share over the baseline's"
    )
    min_examples_for_drift: int = option(
        10, ge=1, le=10**9, doc="a class's size drift is judged with this many examples in both"
    )
