"""Small models with known behaviour and hand-built test splits for Evaluator/Pusher tests.

A "threshold model" predicts class 1 when an image's mean red channel exceeds t, so its
accuracy on images of known redness is known exactly.

A "patch model" is the Trainer's own model (trainer/model.py: VGG16 at 32x32, flatten head)
trained on images whose class is decided by a coloured patch in the top-left corner. ImageNet
weights cannot be downloaded here, and a random backbone mixes the whole 32x32 image into every
cell of its last block (measured: heat maps point nowhere), so its backbone is given
pass-through weights: each 3x3 kernel copies its input channels at the centre tap, so the last
block's 2x2 cells see their own quadrant, as a trained backbone's cells see their region. Only
the head is trained (on cached features, as the Trainer's cache_features does): in seconds.
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


def write_split(examples_dir, split, items, labels, shards=2, names=None):
    """items: [(encoded, label)] -> GZIP shards (core/examples.py keys), height and width read
    from the image; writes labels.txt. names: image/filename per item (default
    <split>/<class>/NNN.png)."""
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
        try:
            width, height = Image.open(io.BytesIO(encoded)).size
        except OSError:  # not an image: a test of what the model rejects
            width, height = 16, 16
        ex = examples.make_example(
            encoded=encoded,
            fmt="png",
            height=height,
            width=width,
            channels=3,
            label=label,
            text=labels[label],
            filename=names[n] if names else f"{split}/{labels[label]}/{n:03d}.png",
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


# ------------------------------------------------------------------------------ patch model

PATCH = 10  # pixels: the deciding patch in the top-left corner of a 32x32 image
PATCH_CLASSES = ["green", "red", "rare"]
# rare: a red patch with some blue, which the pass-through features (each channel's maximum
# over the image) cannot tell from red: the model never predicts it
PATCH_COLOURS = {"green": (0, 255, 0), "red": (255, 0, 0), "rare": (255, 0, 110)}


def patch_images(rng, counts, corner="top-left", size=32):
    """uint8 images [n, size, size, 3] of dark noise with each class's patch in the corner,
    and their labels; counts: images per class of PATCH_CLASSES."""
    y = np.concatenate([np.full(c, i) for i, c in enumerate(counts)]).astype(int)
    x = np.clip(90 + rng.normal(0, 10, (len(y), size, size, 3)), 0, 255)
    at = slice(0, PATCH) if corner == "top-left" else slice(size - PATCH, size)
    for i, name in enumerate(PATCH_CLASSES):
        x[y == i, at, at] = PATCH_COLOURS[name]
    return x.astype(np.uint8), y


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def pass_through(backbone) -> None:
    """Every Conv2D copies its input channels (centre tap 1, bias 0)."""
    import keras

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            kernel[:] = 0
            n = min(kernel.shape[2], kernel.shape[3])
            kernel[kernel.shape[0] // 2, kernel.shape[1] // 2, np.arange(n), np.arange(n)] = 1
            layer.set_weights([kernel, np.zeros_like(bias)])


def train_patch_model(images, y, epochs=10, seed=0):
    """The Trainer's model for PATCH_CLASSES, pass-through backbone, head trained."""
    import keras

    from pipeline_components.trainer import model
    from pipeline_components.trainer.component import TrainerConfig

    keras.utils.set_random_seed(seed)
    config = TrainerConfig(backbone="vgg16", weights="none", image_size=[32, 32], head="flatten")
    net = model.create_model(config, len(PATCH_CLASSES))
    pass_through(net.get_layer(model.BACKBONE))
    features = model.feature_extractor(net).predict(images.astype("float32"), verbose=0)
    head = net.get_layer(model.HEAD)
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    head.fit(features, y, epochs=epochs, batch_size=32, verbose=0)
    return net
