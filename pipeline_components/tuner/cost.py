"""How much slower a search on images is than one on cached backbone features: the image
trials' measured seconds per epoch against an estimate of the same epoch on features, from
one trial of each kind on a sample.

The estimate: the backbone's features of a sample of the train split (SAMPLE_IMAGES images,
no augmentation) are written as feature files, and the head trains on them, streamed, for two
epochs with the trial's batch size; the second epoch's time (the first traces), scaled to the
train and validation splits, is a features epoch. Image epochs are measured in the search
itself (each trial's seconds over its epochs).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from typing import Any

import keras
import numpy as np

from pipeline_components.features import files, stream
from pipeline_components.trainer import inputs
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.plan import plan_training

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 256


class _EpochTimes(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def feature_epoch_seconds(
    examples_dir: str, config: TrainerConfig, batch_size: int
) -> tuple[float, int]:
    """(estimated seconds of one epoch over train + validation on cached features, the images
    the estimate was made on)."""
    plan = plan_training(examples_dir, config)
    sample = min(SAMPLE_IMAGES, plan.num_examples["train"])
    pixels = (
        inputs.make_dataset(
            examples_dir,
            "train",
            image_size=plan.image_size,
            batch_size=batch_size,
            num_classes=plan.num_classes,
            exif_transpose=plan.exif_transpose,
        )
        .unbatch()
        .take(sample)
        .batch(batch_size)
    )
    net = model_lib.create_model(config, plan.num_classes)
    features, labels = [], []
    for x, y in pixels:
        features.append(model_lib.feature_extractor(net)(x, training=False).numpy())
        labels.append(np.reshape(y.numpy(), [-1]))
    x_all = np.concatenate(features)
    y_all = [int(v) for v in np.concatenate(labels)]
    keys = [str(i) for i in range(len(y_all))]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = files.write_arrays(
            tmp,
            {"train": (x_all, y_all, keys), "validation": (x_all, y_all, keys)},
            plan.labels,
            "float16",
            {"estimate": True},
        )
        head = model_lib.build_head(
            manifest.shape, plan.num_classes, config.head, config.dropout, config.units
        )
        model_lib.compile_model(head, plan.num_classes, config.optimizer, config.learning_rate)
        train = stream.feature_dataset(manifest, "train", batch_size=batch_size, training=True)
        val = stream.feature_dataset(manifest, "validation", batch_size=batch_size)
        timer = _EpochTimes()
        head.fit(train, validation_data=val, epochs=2, callbacks=[timer], verbose=0)
    per_image = timer.seconds[-1] / (2 * len(y_all))
    return per_image * sum(plan.num_examples.values()), len(y_all)


def image_cost(
    examples_dir: str, config: TrainerConfig, rows: list[dict[str, Any]], why: str
) -> dict[str, Any]:
    """{"why", "image_epoch_seconds", "feature_epoch_seconds", "slowdown", "how"}; logged."""
    epochs = [r["seconds"] / r["epochs"] for r in rows if r["seconds"] and r["epochs"]]
    batch = int(statistics.median([r["batch_size"] for r in rows]))
    image_epoch = statistics.median(epochs) if epochs else float("nan")
    feature_epoch, sample = feature_epoch_seconds(examples_dir, config, batch)
    slowdown = image_epoch / feature_epoch if feature_epoch > 0 else float("nan")
    log.warning(
        "tuned on images (%s): a trial epoch took %.2fs, about %.1fx the %.3fs it would take on"
        " cached backbone features (estimated from the head on %d images' features)",
        why,
        image_epoch,
        slowdown,
        feature_epoch,
        sample,
    )
    return {
        "why": why,
        "image_epoch_seconds": round(image_epoch, 4),
        "feature_epoch_seconds": round(feature_epoch, 4),
        "slowdown": round(slowdown, 2),
        "how": f"measured image trials; features: the head on {sample} images' features,"
        " streamed, one epoch after a warm-up, scaled to train + validation",
    }
