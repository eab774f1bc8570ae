"""What a training run will do, decided before anything is read in bulk, built or written: the
config's cheap checks (`check_config`) and the plan (`plan_training`: labels, sizes, cached
features or not, mixed precision or not, fine-tuning or not). Both runtimes train by one plan."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow as tf

from pipeline_components.core import config as config_lib
from pipeline_components.core import examples, fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.trainer import inputs
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.config import TrainerConfig


def use_cached_features(config: TrainerConfig) -> bool:
    """Features can be computed once when nothing changes the backbone's output between epochs:
    a frozen backbone (no fine-tuning) and no augmentation."""
    why = config.features_blocker()
    if config.cache_features == "true" and why:
        raise PipelineError(
            f"trainer.cache_features: true needs a frozen backbone and no augmentation, but {why}"
            " (set augmentation: null / fine_tune_from: null, or cache_features: auto)"
        )
    return why is None


def use_mixed_precision(config: TrainerConfig) -> bool:
    if config.mixed_precision == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    return config.mixed_precision == "true"


def check_config(config: TrainerConfig) -> None:
    """Cheap checks before any data is read or a model built (one-line errors)."""
    model_lib.backbone_spec(config.backbone)
    inputs.validate_augmentation(config.augmentation)
    use_cached_features(config)
    weights = config.weights.strip()
    if weights.lower() not in ("imagenet", "none") and not fsutil.exists(weights):
        raise model_lib.missing_weights(weights)
    if config.require_gpu and not tf.config.list_physical_devices("GPU"):
        raise PipelineError(
            "trainer.require_gpu: TensorFlow sees no GPU (built with CUDA:"
            f" {tf.test.is_built_with_cuda()}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); check the node's driver, the"
            " nvidia.com/gpu limit and the image's CUDA libraries, or set require_gpu: false"
        )


@dataclasses.dataclass
class TrainingPlan:
    """What a training run will do, decided from the config and the data before anything is
    written or built."""

    labels: list[str]
    image_size: tuple[int, int]
    num_examples: dict[str, int]  # train, validation
    cached: bool  # train the head on cached backbone features
    mixed: bool  # mixed_float16
    fine_tune: bool  # a second phase with part of the backbone unfrozen
    fingerprint: str | None  # of the examples (stats.json)
    exif_transpose: bool = True  # apply a JPEG's EXIF orientation (the examples' stats.json)
    # a Features artifact (FeatureGen's) to train the head on; None: a cached run writes its own
    features: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def dtype_policy(self) -> str:
        return "mixed_float16" if self.mixed else "float32"

    def data_args(self, config: TrainerConfig) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "batch_size": config.batch_size,
            "num_classes": self.num_classes,
            "exif_transpose": self.exif_transpose,
        }

    def run_key(self, config: TrainerConfig) -> dict[str, Any]:
        """What checkpoints/ must match to be resumed."""
        return {
            "config": config_lib.to_dict(config),
            "labels": self.labels,
            "fingerprint": self.fingerprint,
            "data": self.num_examples,
            "features": self.features,
        }


def plan_training(
    examples_dir: str, config: TrainerConfig, features: str | None = None
) -> TrainingPlan:
    """The plan; `features`: a Features artifact to train the head on (cached runs only)."""
    why = config.features_blocker()
    if features and why:
        raise PipelineError(
            f"features {features}: the head cannot train on cached features here: trainer {why}"
        )
    labels = examples.read_labels(examples_dir)
    sizes = {split: split_size(examples_dir, split) for split in ("train", "validation")}
    if not all(sizes.values()):
        raise PipelineError(f"{examples_dir}: the train and validation splits must not be empty")
    return TrainingPlan(
        labels=labels,
        image_size=model_lib.image_size_for(config.backbone, config.image_size),
        num_examples=sizes,
        cached=use_cached_features(config),
        mixed=use_mixed_precision(config),
        fine_tune=bool(config.fine_tune_from) and config.fine_tune_epochs > 0,
        fingerprint=_fingerprint(examples_dir),
        exif_transpose=examples.exif_transpose(examples_dir),
        features=features,
    )


def split_size(examples_dir: str, split: str) -> int:
    """From stats.json when it knows, else by counting the records."""
    n = examples.num_examples(examples_dir, split)
    return n if n is not None else len(inputs.split_labels(examples_dir, split))


def _fingerprint(examples_dir: str) -> str | None:
    try:
        return examples.read_stats(examples_dir).get("fingerprint")
    except PipelineError:
        return None
