"""Small models with known behaviour and hand-built test splits for Evaluator/Pusher tests.

A "threshold model" predicts class 1 when an image's mean red channel exceeds t, so its
accuracy on images of known redness is known exactly.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from pipeline_components.core import examples
from pipeline_components.trainer import export


def solid_png(red: float, size=(16, 16)) -> bytes:
    arr = np.zeros((*size, 3), dtype=np.uint8)
    arr[..., 0] = round(red * 255)
    arr[..., 1:] = 128
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_split(examples_dir, split, items, labels, shards=2):
    """items: [(encoded, label)] -> GZIP shards (core/examples.py keys); writes labels.txt."""
    import tensorflow as tf

    (examples_dir / split).mkdir(parents=True, exist_ok=True)
    (examples_dir / "labels.txt").write_text("\n".join(labels) + "\n")
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [
        tf.io.TFRecordWriter(
            str(examples_dir / split / f"examples-{i:05d}-of-{shards:05d}.tfrecord.gz"), opts
        )
        for i in range(shards)
    ]
    for n, (encoded, label) in enumerate(items):
        ex = examples.make_example(
            encoded=encoded,
            fmt="png",
            height=16,
            width=16,
            channels=3,
            label=label,
            text=labels[label],
            filename=f"{split}/{labels[label]}/{n:03d}.png",
            sha256=hashlib.sha256(encoded).hexdigest(),
        )
        writers[n % shards].write(ex.SerializeToString())
    for w in writers:
        w.close()
    return examples_dir


def redness_split(examples_dir, reds=None):
    """Ten images of redness 0.05..0.95; label 1 ('red') iff redness > 0.5."""
    reds = np.round(np.arange(0.05, 1.0, 0.1), 2) if reds is None else reds
    items = [(solid_png(r), int(r > 0.5)) for r in reds]
    return write_split(examples_dir, "test", items, ["blue", "red"])


def threshold_model(threshold: float, sharpness: float = 20.0):
    import keras

    inp = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inp)
    dense = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(inp, dense(pooled))
    dense.set_weights(
        [np.array([[sharpness / 255.0], [0.0], [0.0]]), np.array([-sharpness * threshold])]
    )
    return model


def export_threshold_model(path, threshold, labels=("blue", "red")):
    export.export_saved_model(threshold_model(threshold), str(path), list(labels), (16, 16))
    return path
