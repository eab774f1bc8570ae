"""SchemaGen's work: which schema a run uses (`choose`, see component.py), and the inference of
a schema (core/data_schema.py) from one run's statistics (core/data_stats.py), with margins from
the config, so that the data it was inferred from passes:

- classes, formats and channels: the ones seen;
- image ranges: [smallest seen / size_range_factor, largest seen x size_range_factor] over all
  splits (bytes and megapixels too);
- per split: num_examples at least (1 - split_size_margin) x what was seen, no upper bound;
  each class's share within class_share_margin of what was seen (clipped to [0, 1]).
"""

from __future__ import annotations

import dataclasses
import decimal
import math

from pipeline_components.core import artifacts, data_schema, data_stats, fsutil, lineage
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.schema_gen.config import SchemaGenConfig


@dataclasses.dataclass
class ChosenSchema:
    text: str
    source: str  # where it came from, in words, for the result and the report


def choose(cfg: SchemaGenConfig, pipeline: PipelineConfig, statistics: str) -> ChosenSchema:
    """The schema an execution writes: schema_path, else the served model's (reuse_served),
    else one inferred from `statistics` (an ExampleStatistics URI)."""
    if cfg.schema_path:
        text = _read(cfg.schema_path)
        data_schema.loads(text, f"schema_gen.schema_path {cfg.schema_path}")
        return ChosenSchema(text, f"schema_path {cfg.schema_path}")
    why = "reuse_served is off"
    if cfg.reuse_served:
        served, why = served_schema(pipeline)
        if served is not None:
            return served
    stats = data_stats.read(statistics)
    source = f"inferred from this run's statistics ({why})"
    text = data_schema.render(
        infer(stats, cfg), f"Inferred by SchemaGen from {stats.get('examples')}."
    )
    return ChosenSchema(text, source)


def _read(path: str) -> str:
    try:
        return fsutil.read_text(path)
    except Exception:
        raise PipelineError(
            f"schema_gen.schema_path: {path} does not exist or cannot be read"
        ) from None


def served_schema(pipeline: PipelineConfig) -> tuple[ChosenSchema | None, str]:
    """The schema SchemaGen wrote for the data behind the served model, or (None, why not)."""
    served = lineage.served_examples(
        pipeline.pipeline_root, pipeline.serving_dir, pipeline.model_name
    )
    if served is None:
        return None, "no model is served yet"
    if not served.examples_fingerprint:
        return None, f"{served.describe()}: {served.reason}"
    stats = lineage.served_statistics(pipeline.pipeline_root, served)
    if stats is None:
        return None, f"no statistics of the data behind {served.describe()}"
    schema = lineage.find_artifact(
        pipeline.pipeline_root, artifacts.SCHEMA, artifacts.EXAMPLE_STATISTICS, stats.fingerprint()
    )
    if schema is None:
        return None, f"no schema for the data behind {served.describe()}"
    text = fsutil.read_text(schema.uri)
    return ChosenSchema(text, f"the schema behind served version {served.version}"), ""


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


def infer(stats: dict, config: SchemaGenConfig) -> dict:
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
