"""The TFRecord contract between ExampleGen and everything that reads its output
(docs/ARCHITECTURE.md "Examples").

`<examples>/<split>/examples-SSSSS-of-NNNNN.tfrecord.gz` (GZIP tf.train.Example), `labels.txt`,
`stats.json` (file names in core/artifacts.py). Writers build records with `make_example`;
tf.data readers use `parse`.

`metadata.jsonl` (only when the data has a `metadata.csv`): JSON Lines, UTF-8; the first line
`{"columns": [names]}`, then one line per image ExampleGen wrote that has a row,
`{"filename": <image/filename>, "values": {column: value}}` (empty values left out). Written by
example_gen/metadata.py, read by the Evaluator (its slices) with `read_metadata`.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pipeline_components.core import fsutil
from pipeline_components.core.artifacts import (
    LABELS_FILE,
    METADATA_FILE,
    STATS_FILE,
    parse_labels,
    shard_pattern,
)
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


class Metadata(NamedTuple):
    columns: list[str]
    values: dict[str, dict[str, str]]  # image/filename -> {column: value}


def metadata_lines(columns: list[str], rows: dict[str, dict[str, str]]) -> str:
    """metadata.jsonl's text: the columns, then one line per image (sorted by filename)."""
    out = [json.dumps({"columns": columns}, ensure_ascii=False)]
    for filename in sorted(rows):
        values = {k: v for k, v in rows[filename].items() if v != ""}
        out.append(json.dumps({"filename": filename, "values": values}, ensure_ascii=False))
    return "\n".join(out) + "\n"


def read_metadata(examples_dir: str) -> Metadata | None:
    """metadata.jsonl of an Examples directory; None when the data had no metadata.csv."""
    path = fsutil.join(examples_dir, METADATA_FILE)
    if not fsutil.exists(path):
        return None
    lines = fsutil.read_text(path).splitlines()
    try:
        columns = list(json.loads(lines[0])["columns"])
        values = {}
        for line in lines[1:]:
            if line:
                row = json.loads(line)
                values[str(row["filename"])] = {str(k): str(v) for k, v in row["values"].items()}
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise PipelineError(f"{path} is not ExampleGen's metadata file: {e}") from None
    return Metadata([str(c) for c in columns], values)
