"""ClassCounter's work: read the TFRecords, count, check."""

from __future__ import annotations

import collections

import tensorflow as tf

from pipeline_components.core import artifacts, examples
from pipeline_components.core.errors import PipelineError


def count_classes(examples_dir: str, min_per_class: int) -> dict[str, dict[str, int]]:
    """{split: {class: examples}}; PipelineError when a class has fewer than min_per_class."""
    labels = examples.read_labels(examples_dir)
    counts = {}
    for split in artifacts.SPLITS:
        files = examples.split_files(examples_dir, split)
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").map(examples.parse)
        per = collections.Counter(int(r[examples.LABEL]) for r in ds)
        counts[split] = {name: per.get(i, 0) for i, name in enumerate(labels)}
        low = [n for n, c in counts[split].items() if c < min_per_class]
        if low:
            raise PipelineError(f"{split}: class {low[0]} has < {min_per_class}")
    return counts
