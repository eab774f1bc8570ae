"""tf.data input pipeline over ExampleGen's GZIP TFRecords, with train-only augmentation.

    shards -> parallel interleave -> [train: shuffle] -> [repeat] -> parse + decode_and_resize
        -> batch -> [train: RandomAffine, one resampling per batch] -> prefetch

Pixels are float32 RGB 0..255 from `export.decode_and_resize`, the function the exported
`serving_default` signature also uses, so training and serving see the same pixels.
Labels: float32 [1] for two classes (sigmoid head), int32 class indices for more (softmax head).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pipeline_components.core import examples
from pipeline_components.core.config import check_section
from pipeline_components.trainer.augment import RandomAffine
from pipeline_components.trainer.export import decode_and_resize

AUTOTUNE = tf.data.AUTOTUNE


def validate_augmentation(aug) -> None:
    """The augmentation section's ranges (AugmentationConfig's options), for callers that build
    it in code rather than from pipeline.yaml."""
    if aug is not None:
        check_section(aug, "trainer.augmentation", "config")


def augmentation_layers(aug, seed: int | None = None) -> list[keras.layers.Layer]:
    """[RandomAffine] with ImageDataGenerator's meaning of each parameter (rotation and shear in
    degrees, shifts and zoom as fractions, fill 'nearest', bilinear), all composed into one
    matrix per image and one resampling per batch; [] when augmentation is off."""
    if aug is None:
        return []
    validate_augmentation(aug)
    if not aug.enabled():
        return []
    return [
        RandomAffine(
            rotation_range=aug.rotation_range,
            width_shift_range=aug.width_shift_range,
            height_shift_range=aug.height_shift_range,
            shear_range=aug.shear_range,
            zoom_range=aug.zoom_range,
            horizontal_flip=aug.horizontal_flip,
            seed=seed,
            dtype="float32",  # augment in float32 also under a mixed_float16 policy
            name="augmentation",
        )
    ]


def make_augmenter(aug, seed: int | None = None):
    """A callable (batch, key) -> augmented batch, or None when augmentation is off. `key` ([2]
    integers) picks the batch's random draws, so the same key gives the same augmentation."""
    layers = augmentation_layers(aug, seed)
    if not layers:
        return None
    (layer,) = layers
    return lambda images, key: layer(images, training=True, seed=key)


def read_records(files: list[str], *, shuffle_files: bool, seed: int | None, deterministic: bool):
    """Serialized tf.train.Examples from GZIP shards, read in parallel (interleave)."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # A fixed cycle_length (not AUTOTUNE = #cores) keeps the order the same on every machine.
    return ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), 16),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def shard_inputs(files: list[str], shard: tuple[int, int] | None):
    """(the files one worker reads, (num_shards, index) of the records it keeps, or None) for
    `shard` = (number of workers, this worker's index): whole files when there are at least as
    many files as workers (file j goes to worker j mod n), else every n-th record of all files."""
    if shard is None:
        return files, None
    n, i = shard
    if len(files) >= n:
        return files[i::n], None
    return files, (n, i)


def decode_example(serialized, image_size, num_classes: int):
    """One serialized Example -> (float32 [H, W, 3] pixels 0..255, label)."""
    features = examples.parse(serialized)
    pixels = decode_and_resize(features[examples.ENCODED], image_size)
    label = features[examples.LABEL]
    if num_classes == 2:
        label = tf.reshape(tf.cast(label, tf.float32), [1])
    else:
        label = tf.cast(label, tf.int32)
    return pixels, label


def make_dataset(
    examples_dir: str,
    split: str,
    *,
    image_size,
    batch_size: int,
    num_classes: int,
    training: bool = False,
    augmentation=None,
    shuffle_buffer: int = 1000,
    seed: int | None = None,
    repeat: bool = False,
    num_examples: int | None = None,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Batched (pixels, labels) of one split. `training` shuffles (and augments when
    `augmentation` is given); other splits keep the shard order and are never augmented.
    With a seed the order and the augmentation are the same on every run. `num_examples` (the
    split's size, when known) lets Keras know the number of batches of a finite dataset.
    `shard` = (workers, index) keeps one worker's part of the split (`shard_inputs`)."""
    files, record_shard = shard_inputs(examples.split_files(examples_dir, split), shard)
    deterministic = seed is not None or not training
    # Record sharding needs the same record order on every worker.
    ds = read_records(
        files,
        shuffle_files=training and record_shard is None,
        seed=seed,
        deterministic=deterministic or record_shard is not None,
    )
    if record_shard is not None:
        ds = ds.shard(*record_shard)
    if num_examples is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_examples))
    if training:
        # shuffle the small serialized records, not decoded float images
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    size = (int(image_size[0]), int(image_size[1]))
    ds = ds.map(
        lambda s: decode_example(s, size, num_classes),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    augment = make_augmenter(augmentation, seed) if training else None
    if augment is not None:
        # One random key per batch, from a seeded stream that differs every epoch: the draws do
        # not depend on which parallel call runs first, so seeded runs stay deterministic.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, keys).map(
            lambda batch, key: (augment(batch[0], key), batch[1]),
            num_parallel_calls=AUTOTUNE,
            deterministic=deterministic,
        )
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(AUTOTUNE)


def encoded_images(examples_dir: str, split: str, n: int) -> list[bytes]:
    """The first `n` encoded images of a split, as stored (e.g. TF Serving warmup requests)."""
    files = examples.split_files(examples_dir, split)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(n)
    return [examples.parse(s)[examples.ENCODED].numpy() for s in ds]


def split_labels(examples_dir: str, split: str) -> list[int]:
    """All labels of a split in the order `make_dataset(training=False)` yields them
    (cheap: no image decoding)."""
    files = examples.split_files(examples_dir, split)
    spec = {examples.LABEL: examples.feature_spec()[examples.LABEL]}
    ds = read_records(files, shuffle_files=False, seed=None, deterministic=True).map(
        lambda s: tf.io.parse_single_example(s, spec)[examples.LABEL]
    )
    return [int(v) for v in ds.as_numpy_iterator()]
