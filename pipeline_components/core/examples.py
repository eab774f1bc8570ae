"""The TFRecord contract between ExampleGen and everything that reads its output
(docs/ARCHITECTURE.md "Examples").

`<examples>/<split>/examples-SSSSS-of-NNNNN.tfrecord.gz` (GZIP tf.train.Example), `labels.txt`,
`stats.json` (file names in core/artifacts.py). Writers build records with `make_example`;
tf.data readers use `parse`.
"""

from __future__ import annotations

from typing import Any

from pipeline_components.core import fsutil
from pipeline_components.core.artifacts import LABELS_FILE, STATS_FILE, parse_labels, shard_pattern
from pipeline_components.core.errors import PipelineError

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
LABEL = "image/class/label"
TEXT = "image/class/text"
FILENAME = "image/filename"
SHA256 = "image/sha256"

BYTES_KEYS = (ENCODED, FORMAT, TEXT, FILENAME, SHA256)
INT_KEYS = (HEIGHT, WIDTH, CHANNELS, LABEL)


def make_example(
    *,
    encoded: bytes,
    fmt: str,
    height: int,
    width: int,
    channels: int,
    label: int,
    text: str,
    filename: str,
    sha256: str,
) -> Any:
    """A tf.train.Example with exactly the keys listed above."""
    import tensorflow as tf

    def b(v: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                ENCODED: b(encoded),
                FORMAT: b(fmt.encode()),
                HEIGHT: i(height),
                WIDTH: i(width),
                CHANNELS: i(channels),
                LABEL: i(label),
                TEXT: b(text.encode("utf-8")),
                FILENAME: b(filename.encode("utf-8")),
                SHA256: b(sha256.encode()),
            }
        )
    )


def feature_spec() -> dict[str, Any]:
    import tensorflow as tf

    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in BYTES_KEYS}
    spec.update({k: tf.io.FixedLenFeature([], tf.int64) for k in INT_KEYS})
    return spec


def parse(serialized: Any) -> dict[str, Any]:
    """Parse one serialized Example (or a batch of them) into a dict of tensors."""
    import tensorflow as tf

    if serialized.shape.rank == 0:
        return tf.io.parse_single_example(serialized, feature_spec())
    return tf.io.parse_example(serialized, feature_spec())


def split_files(examples_dir: str, split: str) -> list[str]:
    """The split's shard files, sorted. A missing split is a one-line error."""
    files = sorted(fsutil.gfile().glob(shard_pattern(examples_dir, split)))
    if not files:
        raise PipelineError(
            f"no TFRecord shards for split '{split}' under {fsutil.join(examples_dir, split)} "
            "(is this an ExampleGen output directory?)"
        )
    return files


def read_labels(examples_dir: str) -> list[str]:
    path = fsutil.join(examples_dir, LABELS_FILE)
    if not fsutil.exists(path):
        raise PipelineError(f"{path} does not exist (is {examples_dir} an ExampleGen output?)")
    labels = parse_labels(fsutil.read_text(path))
    if len(labels) < 2:
        raise PipelineError(f"{path} lists {len(labels)} class(es); at least 2 are needed")
    return labels


def read_stats(examples_dir: str) -> dict:
    return fsutil.read_json(fsutil.join(examples_dir, STATS_FILE), "ExampleGen statistics")


def exif_transpose(examples_dir: str) -> bool:
    """Whether readers of these examples apply a JPEG's EXIF orientation (stats.json, from
    `example_gen.exif_transpose`); examples written before the option: False, as they were read
    then. A missing stats.json: True, the option's default."""
    try:
        stats = read_stats(examples_dir)
    except PipelineError:
        return True
    return bool(stats.get("exif_transpose", False))


def num_examples(examples_dir: str, split: str) -> int | None:
    """From stats.json; None when unknown."""
    try:
        return int(read_stats(examples_dir)["splits"][split]["num_examples"])
    except (PipelineError, KeyError, TypeError, ValueError):
        return None
