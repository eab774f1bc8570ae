"""Tiny real models and images for tests and benchmarks (export takes well under a second).

`export_tiny_model` writes, through the Trainer's own `export_saved_model`, a SavedModel with
`serving_default` (encoded images) and `predict_pixels`; `push_version` copies a SavedModel into
a serving base path with the Pusher's own copy.
"""

from __future__ import annotations

import os

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
    """Copy a SavedModel in as `version` with the Pusher's own copy (complete or not at all)."""
    from pipeline_components.pusher.executor import copy_version

    os.makedirs(base_path, exist_ok=True)
    return copy_version(saved_model_dir, base_path, version)


# -- hostile images: a few KB that claim (or decode to) gigapixels ----------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 23_000) -> bytes:
    """A valid 1-bit greyscale PNG of side x side black pixels: ~64 KB for 23,000 (1.6 GB as
    the RGB uint8 tensor tf.io.decode_image returns)."""
    import struct
    import zlib

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def gif_image(
    screen: tuple[int, int] = (1, 1), frames: list[tuple[int, int]] | None = None
) -> bytes:
    """A GIF89a with a logical screen of screen=(width, height) and one black frame per
    (width, height) in `frames` (default one 1x1 frame). Each frame's pixel data is the minimal
    LZW stream for a single pixel, so large frames are truncated data (what a bomb looks like to
    a header check: the claimed sizes cost nothing to send)."""
    import struct

    out = [b"GIF89a", struct.pack("<HHBBB", *screen, 0x80, 0, 0), b"\x00\x00\x00\xff\xff\xff"]
    for width, height in frames or [(1, 1)]:
        out.append(b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0))
        out.append(b"\x02\x02\x44\x01\x00")  # LZW min code size 2; clear, 0, end; terminator
    out.append(b"\x3b")
    return b"".join(out)


def jpeg_claiming(width: int, height: int, seed: int = 0) -> bytes:
    """A real small JPEG whose SOF header is rewritten to claim width x height."""
    import struct

    data = bytearray(encode_image(seed=seed, size=(8, 8), fmt="jpeg"))
    pos = 2
    while pos < len(data):
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        pos += 2 + length
    raise ValueError("no SOF marker found")


def export_slow_model(export_dir: str) -> None:
    """A SavedModel whose serving_default busy-waits max(`seconds`) seconds inside TensorFlow
    (one op loop that Python cannot interrupt) and returns `waited` [-1]."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="seconds")])
        def serve(self, seconds):
            start = tf.timestamp()
            wait = tf.cast(tf.reduce_max(tf.concat([seconds, [0.0]], 0)), tf.float64)
            tf.while_loop(lambda i: tf.timestamp() - start < wait, lambda i: i + 1, [0])
            return {"waited": tf.zeros_like(seconds) + tf.cast(tf.timestamp() - start, tf.float32)}

    module = Slow()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
