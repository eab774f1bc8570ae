"""The Trainer's datasets, for both runtimes: decoded (train: augmented) images of a split
(`image_dataset`), or backbone features computed once (`cached_features`, `shard_features`) and
served from memory (`features_dataset`).

One process reads whole splits (`local_datasets`); a worker of a multi-worker group reads its own
part of each split, batched per replica, seeded per worker (distributed.py builds its
`distribute_datasets_from_function` inputs from the same functions, with `pipeline` = the worker's
input pipeline and `shard` = (workers, index)).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from pipeline_components.trainer import inputs
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.callbacks import FeatureProgress
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.plan import TrainingPlan

log = logging.getLogger(__name__)


def _repeats(config: TrainerConfig, training: bool) -> bool:
    """A split repeats when a fixed number of steps, not one pass, makes its epoch."""
    return bool(config.steps_per_epoch if training else config.validation_steps)


def _seed(config: TrainerConfig, training: bool, pipeline: int) -> int | None:
    """Train shuffles and augments with the config's seed, offset per input pipeline (different
    draws on every worker); evaluation is unseeded (never shuffled)."""
    if not training or config.seed is None:
        return None
    return config.seed + pipeline


def image_dataset(
    examples_dir: str,
    split: str,
    config: TrainerConfig,
    plan: TrainingPlan,
    *,
    training: bool,
    batch_size: int,
    pipeline: int = 0,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Decoded (train: augmented) images of `split`, or of one worker's part of it (`shard` =
    (workers, index)); the backbone runs on them every epoch."""
    return inputs.make_dataset(
        examples_dir,
        split,
        image_size=plan.image_size,
        batch_size=batch_size,
        num_classes=plan.num_classes,
        exif_transpose=plan.exif_transpose,
        training=training,
        augmentation=config.augmentation if training else None,
        shuffle_buffer=config.shuffle_buffer,
        shuffle_memory_mb=config.shuffle_memory_mb,
        seed=_seed(config, training, pipeline),
        repeat=_repeats(config, training),
        num_examples=plan.num_examples[split] if shard is None else None,
        shard=shard,
    )


def feature_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    training: bool,
    seed: int | None,
    repeat: bool,
) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if training:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size).prefetch(inputs.PREFETCH_BATCHES)
    return ds.with_options(inputs.fixed_parallelism_options())


def features_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    config: TrainerConfig,
    *,
    training: bool,
    batch_size: int,
    pipeline: int = 0,
) -> tf.data.Dataset:
    """Cached backbone features of a split (or a worker's part), batched as the config says."""
    return feature_dataset(
        features,
        labels,
        batch_size=batch_size,
        training=training,
        seed=_seed(config, training, pipeline),
        repeat=_repeats(config, training),
    )


def cached_features(
    net: keras.Model,
    examples_dir: str,
    split: str,
    *,
    image_size: Sequence[int],
    batch_size: int,
    num_classes: int,
    exif_transpose: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One backbone pass over a split: (features, labels) as numpy arrays, reading order."""
    labels = np.asarray(inputs.split_labels(examples_dir, split))
    ds = inputs.make_dataset(
        examples_dir,
        split,
        image_size=image_size,
        batch_size=batch_size,
        num_classes=num_classes,
        num_examples=len(labels),
        exif_transpose=exif_transpose,
    )
    extractor = model_lib.feature_extractor(net)
    shown = FeatureProgress(split, len(labels), batch_size)
    features = extractor.predict(ds.map(lambda x, y: x), verbose=0, callbacks=[shown])
    labels = labels.astype(np.float32)[:, None] if num_classes == 2 else labels.astype(np.int32)
    return features, labels


def shard_features(
    net: keras.Model,
    examples_dir: str,
    split: str,
    config: TrainerConfig,
    plan: TrainingPlan,
    shard: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """One backbone pass over one worker's part of `split` (`shard` = (workers, index)):
    (features, labels) as numpy. Keras `predict` cannot run under MultiWorkerMirroredStrategy,
    so this iterates itself."""
    extractor = model_lib.feature_extractor(net)
    extract = tf.function(lambda x: extractor(x, training=False))
    ds = inputs.make_dataset(
        examples_dir,
        split,
        image_size=plan.image_size,
        batch_size=config.batch_size,
        num_classes=plan.num_classes,
        exif_transpose=plan.exif_transpose,
        shard=shard,
    )
    xs, ys = [], []
    shown = FeatureProgress(f"{split} (part {shard[1] + 1} of {shard[0]})", None, config.batch_size)
    shown.on_predict_begin()
    for x, y in ds:
        xs.append(extract(x).numpy())
        ys.append(y.numpy())
        shown.update(shown.done + len(ys[-1]))
    shown.end()
    if not xs:  # an empty part (a split with fewer shards' worth of records than workers)
        shape = tuple(extractor.output.shape[1:])
        label_shape = (0, 1) if plan.num_classes == 2 else (0,)
        label_type = np.float32 if plan.num_classes == 2 else np.int32
        return np.zeros((0, *shape), np.float32), np.zeros(label_shape, label_type)
    return np.concatenate(xs), np.concatenate(ys)


def live_datasets(
    examples_dir: str, config: TrainerConfig, plan: TrainingPlan
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(train, validation) of decoded images, whole splits: the backbone runs every epoch."""
    bs = config.batch_size
    train = image_dataset(examples_dir, "train", config, plan, training=True, batch_size=bs)
    val = image_dataset(examples_dir, "validation", config, plan, training=False, batch_size=bs)
    return train, val


def cached_datasets(
    net: keras.Model, examples_dir: str, config: TrainerConfig, plan: TrainingPlan
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """One backbone pass over train and validation; the head then trains on these features."""
    data = plan.data_args(config)
    train_x, train_y = cached_features(net, examples_dir, "train", **data)
    val_x, val_y = cached_features(net, examples_dir, "validation", **data)
    bs = config.batch_size
    train = features_dataset(train_x, train_y, config, training=True, batch_size=bs)
    val = features_dataset(val_x, val_y, config, training=False, batch_size=bs)
    return train, val


def local_datasets(
    net: keras.Model, examples_dir: str, config: TrainerConfig, plan: TrainingPlan
) -> tuple[tf.data.Dataset, tf.data.Dataset, float | None]:
    """The one-process runtime's (train, validation, seconds spent caching features or None)."""
    if not plan.cached:
        return (*live_datasets(examples_dir, config, plan), None)
    t0 = time.perf_counter()
    train, val = cached_datasets(net, examples_dir, config, plan)
    seconds = time.perf_counter() - t0
    log.info(
        "backbone features of %d images cached in %.1fs", sum(plan.num_examples.values()), seconds
    )
    return train, val, seconds
