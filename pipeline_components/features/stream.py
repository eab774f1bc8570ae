"""Feature files -> tf.data batches for the head: streamed from disk, never a split in memory.

    files [train: in a new order each epoch] -> parallel interleave (uncompressed TFRecords)
        -> [train: shuffle serialized records, buffer = whole split up to shuffle_memory_mb]
        -> [repeat] -> batch -> parse_example + decode_raw + cast to float32 -> prefetch

The memory rule is the image pipeline's (trainer/inputs.py, `trainer.shuffle_memory_mb`): the
train shuffle buffer holds the whole split, reshuffled every epoch, as long as its serialized
records fit in `shuffle_memory_mb` MiB; a larger split gets a buffer of that size (a warning
says so) and its file order still changes every epoch. Beside the buffer a pipeline holds a
few batches (PREFETCH_BATCHES, and one per parsing thread) and each open file's read buffer: its
resident memory does not grow with the number of images.

A worker of a multi-worker group reads its own part (`shard` = (workers, index)): whole files
when there are at least as many files as workers, else every n-th record (`inputs.shard_inputs`).
"""

from __future__ import annotations

import tensorflow as tf

from pipeline_components.features.files import Manifest, parse_batch
from pipeline_components.trainer import inputs

DEFAULT_SHUFFLE_MEMORY_MB = inputs.DEFAULT_SHUFFLE_MEMORY_MB


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
    files, record_shard = inputs.shard_inputs(all_files, shard)
    deterministic = seed is not None or not training
    ds = inputs.read_records(
        files,
        shuffle_files=training and record_shard is None,
        seed=seed,
        deterministic=deterministic or record_shard is not None,
        compression="",
    )
    if record_shard is not None:
        ds = ds.shard(*record_shard)
    size = part_size(manifest, split, shard)
    if size is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(size))
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
    shape, dtype, classes = manifest.shape, manifest.dtype, manifest.num_classes
    ds = ds.map(
        lambda s: parse_batch(s, shape, dtype, classes),
        num_parallel_calls=inputs.input_parallelism(),
        deterministic=deterministic,
    )
    options = inputs.fixed_parallelism_options(deterministic)
    return ds.with_options(options).prefetch(inputs.PREFETCH_BATCHES)
