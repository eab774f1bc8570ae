"""SchemaGen's inference: a schema (core/data_schema.py) from one run's statistics
(core/data_stats.py), with margins from the config, so that the data it was inferred from passes.

- classes, formats and channels: the ones seen;
- image ranges: [smallest seen / size_range_factor, largest seen x size_range_factor] over all
  splits (bytes and megapixels too);
- per split: num_examples at least (1 - split_size_margin) x what was seen, no upper bound;
  each class's share within class_share_margin of what was seen (clipped to [0, 1]).
"""

from __future__ import annotations

import decimal
import math
from typing import Any

from pipeline_components.core import data_stats


def _round(value: float, rounding: str, digits: int = 6) -> float:
    """To `digits` significant digits, rounded outwards (ROUND_FLOOR for a minimum,
    ROUND_CEILING for a maximum): readable in the YAML, exact through it, and never tighter
    than the value seen."""
    if value == 0:
        return 0.0
    d = decimal.Decimal(repr(value))  # the shortest decimal that reads back as this float
    exponent = d.adjusted() - digits + 1
    return float(d.quantize(decimal.Decimal(1).scaleb(exponent), rounding=rounding))


def _floor_share(v: float) -> float:
    return max(0.0, math.floor(round(v * 1000, 6)) / 1000)


def _ceil_share(v: float) -> float:
    return min(1.0, math.ceil(round(v * 1000, 6)) / 1000)


def infer(stats: dict, config: Any) -> dict:
    """The schema the given statistics satisfy, with the config's margins."""
    splits = stats["splits"]
    formats = sorted({f for s in splits.values() for f in s["formats"]})
    channels = sorted({int(c) for s in splits.values() for c in s["channels"]})
    image: dict[str, dict] = {}
    factor = config.size_range_factor
    for feature in data_stats.FEATURES:
        seen = [s["features"][feature] for s in splits.values() if s["features"][feature]["count"]]
        if not seen:
            continue
        low, high = min(f["min"] for f in seen) / factor, max(f["max"] for f in seen) * factor
        if feature == "megapixels":
            image[feature] = {
                "min": _round(low, decimal.ROUND_FLOOR),
                "max": _round(high, decimal.ROUND_CEILING),
            }
        else:
            image[feature] = {"min": math.floor(low), "max": math.ceil(high)}
    split_specs = {}
    margin = config.class_share_margin
    for split, s in splits.items():
        split_specs[split] = {
            "num_examples": {
                "min": math.floor(s["num_examples"] * (1 - config.split_size_margin)),
                "max": None,
            },
            "class_shares": {
                c: {"min": _floor_share(share - margin), "max": _ceil_share(share + margin)}
                for c, share in s["class_shares"].items()
            },
        }
    return {
        "version": 1,
        "classes": list(stats["labels"]),
        "formats": formats,
        "channels": channels,
        "max_fraction_outside": config.max_fraction_outside,
        "image": image,
        "splits": split_specs,
    }
