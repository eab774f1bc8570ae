"""FeatureGen's executor: the Trainer's frozen backbone over the train and validation splits,
once, as the feature writer's Beam job (writer.py); the artifact's layout is files.py's.

`run_feature_gen(examples_dir, output_dir, trainer, config)` writes it atomically and returns
what the run table, run.json and the report show. `key_material` is its cache key's material.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline_components.core import beam as core_beam
from pipeline_components.core.config import PipelineConfig
from pipeline_components.features import files, writer
from pipeline_components.features.config import FeaturesConfig, FeatureSpec
from pipeline_components.trainer.config import TrainerConfig

log = logging.getLogger(__name__)


def spec_of(trainer: TrainerConfig, config: FeaturesConfig) -> FeatureSpec:
    """The backbone the features are of: the Trainer's, stored in `features.dtype`."""
    return FeatureSpec.from_trainer(trainer, config.dtype)


def key_material(
    examples_dir: str, pipeline: PipelineConfig, config: FeaturesConfig
) -> dict[str, Any]:
    trainer = pipeline.section("trainer", TrainerConfig)
    return files.key_material(spec_of(trainer, config), examples_dir, config.file_mb)


def run_feature_gen(
    examples_dir: str,
    output_dir: str,
    trainer: TrainerConfig,
    config: FeaturesConfig,
    pipeline: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Write the features artifact to `output_dir`; returns its summary. Its Beam job runs
    with `features.beam_args`, else the pipeline's `beam.args` (core/beam.py)."""
    beam_setup = core_beam.setup(config.beam_args, pipeline)
    spec = spec_of(trainer, config)
    manifest = writer.write_features(examples_dir, output_dir, spec, config, beam_setup=beam_setup)
    return describe(manifest)


def describe(manifest: files.Manifest) -> dict[str, Any]:
    """The artifact in a few fields (the run table, run.json, the report)."""
    counts = {split: manifest.count(split) for split in manifest.splits}
    seconds = manifest.seconds or 0.0
    images = sum(counts.values())
    key = manifest.key
    return {
        "fingerprint": manifest.fingerprint,
        "counts": counts,
        "shape": list(manifest.shape),
        "dtype": manifest.dtype,
        "files": sum(len(entries) for entries in manifest.splits.values()),
        "bytes": sum(int(f["bytes"]) for entries in manifest.splits.values() for f in entries),
        "seconds": manifest.seconds,
        "images_per_sec": round(images / seconds, 1) if seconds else None,
        "backbone": key.get("backbone"),
        "weights": key.get("weights"),
        "image_size": key.get("image_size"),
    }
