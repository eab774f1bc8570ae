"""tf.data input pipeline over ExampleGen's GZIP TFRecords, with train-only augmentation.

    shards [train: in a new order each epoch] -> parallel interleave
        -> [train: shuffle serialized records, buffer = whole split up to shuffle_memory_mb]
        -> [repeat] -> [train: + one random key per record]
        -> parse + decode_and_resize [+ RandomAffine keyed by the record's key] -> batch -> prefetch

Augmentation runs in the same parallel map as decoding, one image per call, with stateless draws
keyed per record: the key is the record's element of a seeded `tf.data.Dataset.random` stream
(rerandomized each epoch), a function of (seed, epoch, position) only. Which thread runs which
record therefore never changes the pixels, so the seeded (deterministic-order) pipeline keeps
every core busy with one fine-grained ordered stage instead of a second, coarse per-batch one.
Every parallel stage runs one thread per usable core, prefetching PREFETCH_BATCHES batches, with
tf.data's autotuner off (`fixed_parallelism_options` says why).

Class mixing: every train batch is drawn from the whole split, reshuffled each epoch, as long as
the split's serialized records fit in `shuffle_memory_mb` (`shuffle_buffer_size`); a larger split
still gets class-mixed batches because ExampleGen writes records in a hash order of their paths
(never one class folder after another) and the shard order changes every epoch.

Pixels are float32 RGB 0..255 from `export.decode_and_resize`, the function the exported
`serving_default` signature also uses, so training and serving see the same pixels.
Labels: float32 [1] for two classes (sigmoid head), int32 class indices for more (softmax head).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from pipeline_components.core import examples, fsutil
from pipeline_components.core.config import check_section
from pipeline_components.core.machine import usable_cpus
from pipeline_components.trainer.augment import RandomAffine
from pipeline_components.trainer.export import decode_and_resize

if TYPE_CHECKING:
    from pipeline_components.trainer.config import AugmentationConfig

log = logging.getLogger(__name__)

# Batches each input pipeline keeps ready ahead of the training step.
PREFETCH_BATCHES = 2
# The train shuffle buffer's default memory cap (trainer.shuffle_memory_mb).
DEFAULT_SHUFFLE_MEMORY_MB = 1024
# Allowance per buffered record beyond its serialized bytes (tensor and queue bookkeeping;
# measured 324-391 bytes for a tf.data shuffle buffer of 100-2000-byte strings, TF 2.21).
RECORD_OVERHEAD_BYTES = 512


def input_parallelism() -> int:
    """Threads for each parallel stage of an input pipeline: the CPU cores this process may run
    on (what tf.data's autotuner would budget, fixed up front)."""
    return usable_cpus()


def fixed_parallelism_options(deterministic: bool | None = None) -> tf.data.Options:
    """Options for a pipeline whose parallelism is set explicitly: tf.data's autotuner off.

    Why: with the autotuner on, an epoch iterated in Python (the benchmark's epochs, a custom
    training loop) could end only when the autotuner's optimization thread next woke, its period
    doubling from 10 ms: epochs took 2.56 s or 5.12 s (+ start-up) with the cores idle meanwhile.
    On 2 cores, with two datasets iterated in turn, about half the epochs did: 5.2 s instead of
    3.1 s for 2,000 augmented images at 224x224, 2.56 s instead of 1.8 s without augmentation;
    none with fixed parallelism (benchmarks/input_pipeline.py). Keras `fit` epochs measured the
    same either way (4.0-4.6 s against 4.2-4.4 s)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    if deterministic is not None:
        options.deterministic = deterministic
    return options


def validate_augmentation(aug: AugmentationConfig | None) -> None:
    """The augmentation section's ranges (AugmentationConfig's options), for callers that build
    it in code rather than from pipeline.yaml."""
    if aug is not None:
        check_section(aug, "trainer.augmentation", "config")


def augmentation_layers(
    aug: AugmentationConfig | None, seed: int | None = None
) -> list[keras.layers.Layer]:
    """[RandomAffine] with ImageDataGenerator's meaning of each parameter (rotation and shear in
    degrees, shifts and zoom as fractions, fill 'nearest', bilinear), all composed into one
    matrix per image and one resampling per call; [] when augmentation is off."""
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


def make_augmenter(
    aug: AugmentationConfig | None, seed: int | None = None
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None:
    """A callable (batch, key) -> augmented batch, or None when augmentation is off. `key` ([2]
    integers) picks the batch's random draws, so the same key gives the same augmentation."""
    layers = augmentation_layers(aug, seed)
    if not layers:
        return None
    (layer,) = layers
    return lambda images, key: layer(images, training=True, seed=key)


def record_keys(seed: int | None) -> tf.data.Dataset:
    """An endless stream of [2] int64 stateless-RNG keys, one per record: (seed, a draw of
    `tf.data.Dataset.random(seed)`), which is rerandomized each time the dataset is iterated
    (each epoch) and otherwise depends only on the seed and the position. Without a seed: random."""
    base = tf.constant(0 if seed is None else seed, tf.int64)
    stream = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return stream.map(lambda r: tf.stack([base, r]))


def read_records(
    files: list[str],
    *,
    shuffle_files: bool,
    seed: int | None,
    deterministic: bool,
    compression: str = "GZIP",
    buffer_bytes: int | None = None,
) -> tf.data.Dataset:
    """Serialized records of TFRecord files (ExampleGen's GZIP shards, or `compression=""`:
    uncompressed feature files), read in parallel (interleave); `buffer_bytes` per open file
    (None: TensorFlow's default)."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # A fixed cycle_length (not one per core) keeps the order the same on every machine.
    cycle = min(len(files), 16)
    return ds.interleave(
        lambda f: tf.data.TFRecordDataset(
            f, compression_type=compression, buffer_size=buffer_bytes
        ),
        cycle_length=cycle,
        num_parallel_calls=max(1, min(cycle, input_parallelism())),
        deterministic=deterministic,
    )


def shard_inputs(
    files: list[str], shard: tuple[int, int] | None
) -> tuple[list[str], tuple[int, int] | None]:
    """(the files one worker reads, (num_shards, index) of the records it keeps, or None) for
    `shard` = (number of workers, this worker's index): whole files when there are at least as
    many files as workers (file j goes to worker j mod n), else every n-th record of all files."""
    if shard is None:
        return files, None
    n, i = shard
    if len(files) >= n:
        return files[i::n], None
    return files, (n, i)


def split_bytes(files: list[str]) -> int:
    """Bytes of a split's shard files: about its serialized records' bytes, since ExampleGen
    writes GZIP files of stored (uncompressed) blocks."""
    gfile = fsutil.gfile()
    return sum(int(gfile.stat(f).length) for f in files)


def shuffle_buffer_size(
    files: list[str], num_examples: int, *, records: int | None, memory_bytes: int
) -> int:
    """Records the train shuffle buffer holds: `records` (None: the whole split, so every batch
    is drawn from all of it), but no more than fit in `memory_bytes` of serialized records
    (their size estimated from the shard files, plus RECORD_OVERHEAD_BYTES each)."""
    wanted = num_examples if records is None else records
    per_record = split_bytes(files) / max(num_examples, 1) + RECORD_OVERHEAD_BYTES
    size = max(1, min(wanted, int(memory_bytes // per_record)))
    mib = size * per_record / 2**20
    if size < wanted:
        log.warning(
            "train shuffle buffer: %d of %d records (%.1f MiB, capped by trainer.shuffle_memory_mb"
            " = %.0f): batches mix classes but are not drawn from the whole split; raise"
            " shuffle_memory_mb for a full reshuffle",
            size,
            num_examples,
            mib,
            memory_bytes / 2**20,
        )
    else:
        whole = " (the whole split)" if size >= num_examples else ""
        log.info("train shuffle buffer: %d records%s, %.1f MiB", size, whole, mib)
    return size


def decode_example(
    serialized: tf.Tensor, image_size: Sequence[int], num_classes: int, exif_transpose: bool = True
) -> tuple[tf.Tensor, tf.Tensor]:
    """One serialized Example -> (float32 [H, W, 3] pixels 0..255, label)."""
    features = examples.parse(serialized)
    pixels = decode_and_resize(features[examples.ENCODED], image_size, exif_transpose)
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
    image_size: Sequence[int],
    batch_size: int,
    num_classes: int,
    exif_transpose: bool = True,
    training: bool = False,
    augmentation: AugmentationConfig | None = None,
    shuffle_buffer: int | None = None,
    shuffle_memory_mb: int = DEFAULT_SHUFFLE_MEMORY_MB,
    seed: int | None = None,
    repeat: bool = False,
    num_examples: int | None = None,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Batched (pixels, labels) of one split. `training` reshuffles every epoch (and augments
    when `augmentation` is given); other splits keep the shard order and are never augmented.
    The train shuffle buffer holds `shuffle_buffer` records (None: the whole split), capped by
    `shuffle_memory_mb` (`shuffle_buffer_size`). With a seed the order and the augmentation are
    the same on every run. `num_examples` (the split's size, when known) lets Keras know the
    number of batches of a finite dataset. `shard` = (workers, index) keeps one worker's part of
    the split (`shard_inputs`); `num_examples` is then that part's size, or None.
    `exif_transpose`: apply a JPEG's EXIF orientation, as the exported model will
    (`examples.exif_transpose`: what ExampleGen recorded)."""
    all_files = examples.split_files(examples_dir, split)
    files, record_shard = shard_inputs(all_files, shard)
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
        # sized on the whole split: a worker's part is at most that (the buffer is then a cap)
        size = (
            num_examples
            if num_examples is not None and shard is None
            else len(split_labels(examples_dir, split))
        )
        buffer = shuffle_buffer_size(
            all_files, size, records=shuffle_buffer, memory_bytes=shuffle_memory_mb * 2**20
        )
        # shuffle the small serialized records, not decoded float images
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    augment = make_augmenter(augmentation, seed) if training else None
    ds = decode_records(ds, image_size, num_classes, augment, seed, deterministic, exif_transpose)
    threads = input_parallelism()
    ds = ds.batch(batch_size, num_parallel_calls=threads, deterministic=deterministic)
    return ds.with_options(fixed_parallelism_options(deterministic)).prefetch(PREFETCH_BATCHES)


def decode_records(
    ds: tf.data.Dataset,
    image_size: Sequence[int],
    num_classes: int,
    augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None,
    seed: int | None,
    deterministic: bool,
    exif_transpose: bool = True,
) -> tf.data.Dataset:
    """Serialized records -> (pixels, label), decoded (and augmented) in one parallel map."""
    height_width = (int(image_size[0]), int(image_size[1]))
    threads = input_parallelism()
    if augment is None:
        return ds.map(
            lambda s: decode_example(s, height_width, num_classes, exif_transpose),
            num_parallel_calls=threads,
            deterministic=deterministic,
        )

    # Decode and augment in one parallel map, each record with its own stateless key: the
    # draws do not depend on which call runs first, so seeded runs stay deterministic.
    def decode_and_augment(serialized: tf.Tensor, key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels, label = decode_example(serialized, height_width, num_classes, exif_transpose)
        return augment(pixels[None], key)[0], label

    return tf.data.Dataset.zip(ds, record_keys(seed)).map(
        decode_and_augment, num_parallel_calls=threads, deterministic=deterministic
    )


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
