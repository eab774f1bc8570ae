"""Export a trained classifier as the SavedModel TF Serving loads
(docs/ARCHITECTURE.md "Signatures").

The Keras `model` given here maps float32 RGB pixels [N, H, W, 3] in 0..255 (the backbone's
`preprocess_input` lives inside the model) to probabilities: [N, 1] from a sigmoid head or
[N, C] from a softmax head. The archive adds, inside the graph:

- `serving_default`: `images` DT_STRING [-1] (encoded JPEG/PNG/GIF/BMP) -> decode, resize, model;
- `predict_pixels`:  `pixels` DT_FLOAT [-1, H, W, 3] -> model;

both returning `probabilities` [-1, C] (C >= 2, `[1-p, p]` for a sigmoid head), `scores` [-1],
`class_ids` [-1] int64 and `classes` [-1] string. `decode_and_resize` is also what the Trainer's
tf.data pipeline uses, so training and serving see identical pixels.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.artifacts import (
    IMAGES_INPUT,
    PIXELS_INPUT,
    PIXELS_SIGNATURE,
    SERVING_SIGNATURE,
)

log = logging.getLogger(__name__)

# Magic numbers of the formats tf.io.decode_image reads: JPEG, PNG, GIF, BMP.
_MAGIC = ((b"\xff\xd8\xff", 3), (b"\x89PNG", 4), (b"GIF8", 4), (b"BM", 2))
NOT_AN_IMAGE = "input 'images' holds an element that is not an encoded JPEG, PNG, GIF or BMP image"


def is_image(encoded: tf.Tensor) -> tf.Tensor:
    """Scalar bool: does this string start like a JPEG/PNG/GIF/BMP file?"""
    checks = [tf.equal(tf.strings.substr(encoded, 0, n), magic) for magic, n in _MAGIC]
    return tf.reduce_any(tf.stack(checks))


def decode_and_resize(encoded: tf.Tensor, image_size) -> tf.Tensor:
    """One encoded image -> float32 [H, W, 3] RGB in 0..255 (bilinear resize, no antialias)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    # resize reads uint8 directly (float32 out, same values): a third cheaper than casting first
    return tf.image.resize(image, image_size, method="bilinear")


def outputs_from_probabilities(probs: tf.Tensor, labels: list[str]) -> dict:
    """[N, 1] sigmoid or [N, C] softmax probabilities -> the four outputs of both signatures."""
    probs = tf.cast(probs, tf.float32)
    if probs.shape[-1] == 1:
        probs = tf.concat([1.0 - probs, probs], axis=-1)
    class_ids = tf.argmax(probs, axis=-1, output_type=tf.int64)
    return {
        "probabilities": probs,
        "scores": tf.reduce_max(probs, axis=-1),
        "class_ids": class_ids,
        "classes": tf.gather(tf.constant(labels), class_ids),
    }


def build_serving_fns(model, labels: list[str], image_size):
    """The two endpoint functions, as plain callables (traced by ExportArchive)."""
    height, width = (int(s) for s in image_size)

    def predict_pixels(pixels):
        return outputs_from_probabilities(model(pixels, training=False), labels)

    def serving_default(images):
        valid = tf.map_fn(is_image, images, fn_output_signature=tf.bool)
        with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(valid), [NOT_AN_IMAGE])]):
            pixels = tf.map_fn(
                lambda x: decode_and_resize(x, (height, width)),
                images,
                fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
            )
        return predict_pixels(pixels)

    return serving_default, predict_pixels


def warmup_records(images: list[bytes], model_name: str = "") -> list[bytes]:
    """Serialized PredictionLog records in TF Serving's warmup format: one request per image
    and one batched request of all, so the first real requests hit warm kernels."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    batches = [[img] for img in images] + ([list(images)] if len(images) > 1 else [])
    records = []
    for batch in batches:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_SIGNATURE)
        )
        request.inputs[IMAGES_INPUT].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        log_ = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log_.SerializeToString())
    return records


def export_saved_model(
    model,
    export_dir: str,
    labels: list[str],
    image_size,
    warmup_images: list[bytes] | None = None,
) -> str:
    """Write the SavedModel to `export_dir` atomically (temporary sibling + rename)."""
    height, width = (int(s) for s in image_size)
    serving_default, predict_pixels = build_serving_fns(model, labels, (height, width))
    with fsutil.atomic_dir(export_dir) as tmp:
        archive = _archive(model, serving_default, predict_pixels, height, width)
        archive.write_out(tmp, verbose=False)
        # Class names are constants in the graph; the file is for people and tools.
        fsutil.makedirs(fsutil.join(tmp, artifacts.ASSETS_DIR))
        fsutil.write_atomic(artifacts.labels_asset(tmp), "\n".join(labels) + "\n")
        if warmup_images:
            fsutil.makedirs(fsutil.join(tmp, artifacts.ASSETS_EXTRA_DIR))
            with tf.io.TFRecordWriter(artifacts.warmup_file(tmp)) as writer:
                for record in warmup_records(warmup_images):
                    writer.write(record)
    log.info("exported SavedModel to %s (classes: %s)", export_dir, ", ".join(labels))
    return export_dir


def _archive(model, serving_default, predict_pixels, height, width):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_SIGNATURE,
        serving_default,
        input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)],
    )
    archive.add_endpoint(
        PIXELS_SIGNATURE,
        predict_pixels,
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name=PIXELS_INPUT)],
    )
    return archive
