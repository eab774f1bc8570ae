"""The Trainer's datasets, for both runtimes: decoded (train: augmented) images of a split
(`image_dataset`), or backbone features computed once by the feature writer's Beam job
(`cached_features`, into the run's `checkpoints/features/`) and streamed from those files
(`features_dataset`, features/stream.py): a split is never held in memory.

One process reads whole splits (`local_datasets`); a worker of a multi-worker group reads its own
part of each split, batched per replica, seeded per worker (distributed.py builds its
`distribute_datasets_from_function` inputs from the same functions, with `pipeline` = the worker's
input pipeline and `shard` = (workers, index)).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import tensorflow as tf

from pipeline_components.core.errors import PipelineError
from pipeline_components.features import files, stream, writer
from pipeline_components.features.config import FeaturesConfig, FeatureSpec
from pipeline_components.trainer import inputs
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.checkpoints import checkpoint_paths
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


def features_dataset(
    manifest: files.Manifest,
    split: str,
    config: TrainerConfig,
    *,
    training: bool,
    batch_size: int,
    pipeline: int = 0,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Backbone features of `split` (or of one worker's part), streamed from the feature files
    and batched as the config says; the train split reshuffled every epoch within
    `trainer.shuffle_memory_mb` (features/stream.py)."""
    return stream.feature_dataset(
        manifest,
        split,
        batch_size=batch_size,
        training=training,
        seed=_seed(config, training, pipeline),
        repeat=_repeats(config, training),
        shuffle_buffer=config.shuffle_buffer,
        shuffle_memory_mb=config.shuffle_memory_mb,
        shard=shard,
    )


def features_dir(output_dir: str) -> str:
    """Where a run keeps the features it computed itself: `checkpoints/features/` (a resumed
    run reuses them; a finished run removes them)."""
    return checkpoint_paths(output_dir)["features"]


def feature_key(examples_dir: str, config: TrainerConfig) -> tuple[FeatureSpec, dict[str, Any]]:
    spec = FeatureSpec.from_trainer(config, FeaturesConfig().dtype)
    return spec, files.key_material(spec, examples_dir, FeaturesConfig().file_mb)


def use_backbone(net: keras.Model, manifest: files.Manifest, config: TrainerConfig) -> None:
    """Give `net` the backbone its features came from: the exported model then computes what
    the head was trained on (weights `none` is a random backbone)."""
    backbone = net.get_layer(model_lib.BACKBONE)
    model_lib.load_backbone_weights(backbone, manifest.backbone_weights(), config.backbone)


def cached_features(
    net: keras.Model, examples_dir: str, config: TrainerConfig, directory: str
) -> tuple[files.Manifest, float | None]:
    """The train and validation features of `net`'s backbone in `directory`: reused when they
    were made with the same key (a resumed run), else written there by the feature writer's
    Beam job. Returns (the manifest, seconds spent writing or None)."""
    spec, key = feature_key(examples_dir, config)
    manifest = files.matching(directory, key)
    if manifest is not None:
        log.info("reusing the backbone features in %s", directory)
        use_backbone(net, manifest, config)
        return manifest, None
    t0 = time.perf_counter()
    manifest = writer.write_features(
        examples_dir, directory, spec, backbone=net.get_layer(model_lib.BACKBONE), job="Trainer"
    )
    return manifest, time.perf_counter() - t0


def read_features(
    net: keras.Model, examples_dir: str, config: TrainerConfig, directory: str
) -> files.Manifest:
    """Features another process wrote for this run (the chief of a group): they must have been
    made with this run's key."""
    _, key = feature_key(examples_dir, config)
    manifest = files.matching(directory, key)
    if manifest is None:
        raise PipelineError(
            f"no backbone features of this run's backbone, weights and examples in {directory}"
        )
    use_backbone(net, manifest, config)
    return manifest


def given_features(
    net: keras.Model, examples_dir: str, config: TrainerConfig, directory: str
) -> files.Manifest:
    """A Features artifact (FeatureGen's, `--features`): it must be of this run's backbone,
    weights, image size, preprocessing and examples; `net` gets its backbone."""
    manifest = files.read_manifest(directory)
    spec = FeatureSpec.from_trainer(config, manifest.dtype)
    file_mb = int(manifest.key.get("file_mb") or FeaturesConfig().file_mb)
    differ = files.mismatches(manifest.key, files.key_material(spec, examples_dir, file_mb))
    if differ:
        raise PipelineError(
            f"features {directory}: not of this training run: its {', '.join(differ)} differ"
            " from the trainer's and the examples' (make them with the same trainer: section)"
        )
    log.info(
        "training the head on the features at %s (%d train / %d validation): no backbone pass",
        directory,
        manifest.count("train"),
        manifest.count("validation"),
    )
    use_backbone(net, manifest, config)
    return manifest


def live_datasets(
    examples_dir: str, config: TrainerConfig, plan: TrainingPlan
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(train, validation) of decoded images, whole splits: the backbone runs every epoch."""
    bs = config.batch_size
    train = image_dataset(examples_dir, "train", config, plan, training=True, batch_size=bs)
    val = image_dataset(examples_dir, "validation", config, plan, training=False, batch_size=bs)
    return train, val


def local_datasets(
    net: keras.Model,
    examples_dir: str,
    config: TrainerConfig,
    plan: TrainingPlan,
    output_dir: str,
) -> tuple[tf.data.Dataset, tf.data.Dataset, float | None]:
    """The one-process runtime's (train, validation, seconds spent writing features or None)."""
    if not plan.cached:
        return (*live_datasets(examples_dir, config, plan), None)
    if plan.features:
        manifest, seconds = given_features(net, examples_dir, config, plan.features), None
    else:  # a run without FeatureGen's features (a `train` alone) writes its own
        manifest, seconds = cached_features(net, examples_dir, config, features_dir(output_dir))
    bs = config.batch_size
    train = features_dataset(manifest, "train", config, training=True, batch_size=bs)
    val = features_dataset(manifest, "validation", config, training=False, batch_size=bs)
    return train, val, seconds
