"""The Trainer's config section (`trainer:` in pipeline.yaml). Defaults reproduce the reference
notebook: frozen VGG19, 224x224, batch 100, 20 steps x 100 epochs."""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline_components.core.config import option


@dataclasses.dataclass
class AugmentationConfig:
    """ImageDataGenerator semantics: rotation and shear in degrees, shifts and zoom as fractions.
    The upper bounds are the largest values that keep each parameter's meaning."""

    rotation_range: float = option(40.0, ge=0, le=180, doc="random rotation, degrees")
    width_shift_range: float = option(0.2, ge=0, le=1, doc="random shift, share of the width")
    height_shift_range: float = option(0.2, ge=0, le=1, doc="random shift, share of the height")
    shear_range: float = option(0.2, ge=0, le=89, doc="random shear, degrees")
    zoom_range: float = option(0.2, ge=0, le=0.99, doc="random zoom in [1 - z, 1 + z]")
    horizontal_flip: bool = option(True, doc="random left-right flips")

    def enabled(self) -> bool:
        return any(
            [
                self.rotation_range,
                self.width_shift_range,
                self.height_shift_range,
                self.shear_range,
                self.zoom_range,
                self.horizontal_flip,
            ]
        )


@dataclasses.dataclass
class TrainerConfig:
    backbone: str = option(
        "vgg19", doc="keras.applications name: vgg19, vgg16, resnet50, efficientnetb0, ..."
    )
    weights: str = option("imagenet", doc="imagenet | none | path to a weights file")
    image_size: list[int] | None = option(
        factory=lambda: [224, 224], doc="[height, width] trained on; null: the backbone's"
    )
    head: str = option(
        "flatten", choices=("flatten", "global_average"), doc="how the features reach the head"
    )
    dropout: float = option(0.0, ge=0, lt=1, doc="dropout before the head's dense layer")
    units: int = option(
        0, ge=0, le=65536, doc="a hidden Dense(units, relu) layer in the head; 0: none"
    )
    fine_tune_from: str | None = option(
        None, doc="layer to unfreeze from after the head phase, e.g. block5_conv1; null: none"
    )
    fine_tune_epochs: int = option(10, ge=0, doc="epochs of the fine-tuning phase")
    fine_tune_learning_rate: float = option(1e-5, gt=0, doc="learning rate while fine-tuning")
    batch_size: int = option(100, ge=1, doc="images per step (the global batch on many workers)")
    epochs: int = option(100, ge=1, doc="epochs of the head phase")
    steps_per_epoch: int | None = option(
        20, ge=1, doc="train steps per epoch; null: the whole split"
    )
    validation_steps: int | None = option(
        None, ge=1, doc="validation steps per epoch; null: the whole split"
    )
    optimizer: str = option("rmsprop", choices=("rmsprop", "adam", "sgd"), doc="the optimizer")
    learning_rate: float = option(0.001, gt=0, doc="learning rate of the head phase")
    augmentation: AugmentationConfig | None = option(
        factory=AugmentationConfig, doc="random transforms of train images; null: none"
    )
    cache_features: str = option(
        "auto",
        choices=("auto", "true", "false"),
        doc="compute a frozen backbone's features once (auto: when nothing makes them vary)",
    )
    early_stopping_patience: int | None = option(
        None, ge=0, doc="epochs without improvement before stopping; null or 0: off"
    )
    monitor: str = option(
        "val_accuracy",
        choices=("val_accuracy", "val_loss"),
        doc="what early stopping watches and the exported (best) epoch is chosen by",
    )
    shuffle_buffer: int | None = option(
        None,
        ge=1,
        le=2**31 - 1,
        doc="train shuffle buffer in records; null: the whole split (capped by shuffle_memory_mb)",
    )
    shuffle_memory_mb: int = option(
        1024, ge=1, le=1_048_576, doc="memory cap of the train shuffle buffer, MiB"
    )
    mixed_precision: str = option(
        "auto", choices=("auto", "true", "false"), doc="float16 compute (auto: on a GPU)"
    )
    # how it runs, not what it computes: not in the cache key
    require_gpu: bool = option(
        False, key=False, doc="fail at the start when TensorFlow sees no GPU"
    )
    seed: int | None = option(42, ge=0, le=2**32 - 1, doc="random seed; null: unseeded")
    max_image_pixels: int = option(
        40_000_000,
        ge=1,
        le=2**40,
        doc="serving_default rejects images whose header claims more pixels (INVALID_ARGUMENT)",
    )

    def features_blocker(self) -> str | None:
        """Why the backbone's features cannot be computed once and reused, or None: they vary
        between epochs when the backbone is fine-tuned or the images are augmented, and
        `cache_features: false` asks for live images. (FeatureGen skips on it, plan.py trains
        on live images; light, so a component spec may ask.)"""
        augmented = self.augmentation is not None and self.augmentation.enabled()
        if self.fine_tune_from:
            return "fine_tune_from is set"
        if augmented:
            return "augmentation is on"
        if self.cache_features == "false":
            return "cache_features is false"
        return None

    def validate(self, fail: Any) -> None:
        if self.image_size is not None and not (
            len(self.image_size) == 2 and all(s >= 8 for s in self.image_size)
        ):
            fail("image_size", "[height, width] of at least 8", self.image_size)
