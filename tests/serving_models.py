"""Tiny real models and images for tests and benchmarks (export takes well under a second).

`export_tiny_model` writes, through the Trainer's own `export_saved_model`, a SavedModel with
`serving_default` (encoded images) and `predict_pixels`; `push_version` copies a SavedModel into
a serving base path the way the Pusher does (hidden temporary sibling, then a rename).
"""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np


def tiny_classifier(num_classes: int = 3, image_size=(16, 16), favourite: int = 0, seed: int = 0):
    """Rescaling -> Flatten -> Dense; small random weights, so outputs depend on the pixels,
    plus a bias that makes class `favourite` win (tells versions apart)."""
    import keras

    height, width = image_size
    rng = np.random.default_rng(seed)
    units = 1 if num_classes == 2 else num_classes
    inputs = keras.Input((height, width, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(units, activation="sigmoid" if units == 1 else "softmax")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    kernel = rng.normal(0, 0.01, size=(height * width * 3, units)).astype("float32")
    bias = np.zeros(units, "float32")
    if units == 1:
        bias[0] = 3.0 if favourite == 1 else -3.0
    else:
        bias[favourite] = 3.0
    dense.set_weights([kernel, bias])
    return model


def export_tiny_model(
    export_dir: str,
    num_classes: int = 3,
    favourite: int = 0,
    seed: int = 0,
    image_size=(16, 16),
    warmup: bool = True,
) -> list[str]:
    """Export a tiny classifier to export_dir; returns its labels."""
    from pipeline_components.trainer.export import export_saved_model

    labels = [f"class_{i}" for i in range(num_classes)]
    model = tiny_classifier(num_classes, image_size, favourite, seed)
    warmup_images = [encode_image(seed=1)] if warmup else None
    export_saved_model(model, export_dir, labels, image_size, warmup_images=warmup_images)
    return labels


def encode_image(seed: int = 0, size=(20, 24), fmt: str = "png") -> bytes:
    """Random RGB noise, encoded as PNG or JPEG."""
    import tensorflow as tf

    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    encode = tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg
    return encode(pixels).numpy()


def push_version(saved_model_dir: str, base_path: str, version: int) -> str:
    """Copy into `.<version>.tmp-<id>` next to the target, then rename: what the Pusher does."""
    os.makedirs(base_path, exist_ok=True)
    final = os.path.join(base_path, str(version))
    tmp = os.path.join(base_path, f".{version}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.copytree(saved_model_dir, tmp)
    os.rename(tmp, final)
    return final
