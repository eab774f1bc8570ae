"""Feature files -> tf.data batches for the head: streamed from disk, never a split in memory.

    files [train: in a new order each epoch] -> parallel interleave (uncompressed TFRecords)
        -> [train: shuffle serialized records, buffer = whole split up to shuffle_memory_mb]
        -> [repeat] -> batch -> parse_example + decode_raw + cast to float32 -> prefetch

The memory rule is the image pipeline's (trainer/inputs.py, `trainer.shuffle_memory_mb`): the
train shuffle buffer holds the whole split, reshuffled every epoch, as long as its records fit
in `shuffle_memory_mb` MiB; a larger split gets a buffer of that size (a warning says so) and
its file order still changes every epoch. A split that fits is held anyway (it is the shuffle
buffer), so its records are decoded once and kept (`resident`: a tf.data cache of the stored
float16 or float32 arrays, about the files' size, whose elements the shuffle buffer shares):
epochs after the first read no file. A larger one is read from the files every epoch. Beside
that a pipeline holds a few batches (PREFETCH_BATCHES, and one per parsing thread) and each
open file's read buffer (READ_BUFFER_BYTES, at most 16 files open): its resident memory is
bounded by `shuffle_memory_mb` and does not grow with the number of images.

A worker of a multi-worker group reads its own part (`shard` = (workers, index)): whole files
when there are at least as many files as workers, else every n-th record (`inputs.shard_inputs`).
"""

from __future__ import annotations

import tensorflow as tf

from pipeline_components.features.files import Manifest, as_batch, parse_batch, parse_record
from pipeline_components.trainer import inputs

DEFAULT_SHUFFLE_MEMORY_MB = inputs.DEFAULT_SHUFFLE_MEMORY_MB
# Read buffer per open file (at most 16 open: inputs.read_records): fewer, larger reads.
READ_BUFFER_BYTES = 2 * 2**20


def part_size(manifest: Manifest, split: str, shard: tuple[int, int] | None) -> int | None:
    """Records in a worker's part of a split (its whole files), None when it keeps every n-th
    record (then Keras counts the batches itself)."""
    entries = manifest.split_files(split)
    if shard is None:
        return manifest.count(split)
    n, i = shard
    if len(entries) >= n:
        return sum(int(f["count"]) for f in entries[i::n])
    return None


def resident(manifest: Manifest, split: str, shuffle_memory_mb: int) -> bool:
    """Whether a split's records fit in `shuffle_memory_mb`: then the whole split is the train
    shuffle buffer anyway, and its decoded records stay in memory after the first epoch."""
    return inputs.split_bytes(manifest.files(split)) <= shuffle_memory_mb * 2**20


def records(
    manifest: Manifest,
    split: str,
    shard: tuple[int, int] | None,
    *,
    training: bool,
    seed: int | None,
) -> tf.data.Dataset:
    """The serialized records of a split, or of one worker's part (train: the files in a new
    order every epoch)."""
    files, record_shard = inputs.shard_inputs(manifest.files(split), shard)
    ds = inputs.read_records(
        files,
        shuffle_files=training and record_shard is None,
        seed=seed,
        deterministic=seed is not None or not training or record_shard is not None,
        compression="",
        buffer_bytes=READ_BUFFER_BYTES,
    )
    if record_shard is not None:
        ds = ds.shard(*record_shard)
    size = part_size(manifest, split, shard)
    if size is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(size))
    return ds


def feature_dataset(
    manifest: Manifest,
    split: str,
    *,
    batch_size: int,
    training: bool = False,
    seed: int | None = None,
    repeat: bool = False,
    shuffle_buffer: int | None = None,
    shuffle_memory_mb: int = DEFAULT_SHUFFLE_MEMORY_MB,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Batched (float32 features, labels) of one split of a features artifact; `training`
    reshuffles every epoch (the same order for the same seed)."""
    all_files = manifest.files(split)
    deterministic = seed is not None or not training
    ds = records(manifest, split, shard, training=training, seed=seed)
    shape, dtype, classes = manifest.shape, manifest.dtype, manifest.num_classes
    threads = inputs.input_parallelism()
    kept = resident(manifest, split, shuffle_memory_mb)
    if kept:  # decoded once, then every epoch from memory
        ds = ds.map(
            lambda s: parse_record(s, shape, dtype),
            num_parallel_calls=threads,
            deterministic=deterministic,
        ).cache()
    if training:
        buffer = inputs.shuffle_buffer_size(
            all_files,
            manifest.count(split),
            records=shuffle_buffer,
            memory_bytes=shuffle_memory_mb * 2**20,
        )
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)
    if kept:
        batched = ds.map(
            lambda x, y: as_batch(x, y, classes),
            num_parallel_calls=threads,
            deterministic=deterministic,
        )
    else:
        batched = ds.map(
            lambda s: parse_batch(s, shape, dtype, classes),
            num_parallel_calls=threads,
            deterministic=deterministic,
        )
    options = inputs.fixed_parallelism_options(deterministic)
    return batched.with_options(options).prefetch(inputs.PREFETCH_BATCHES)
