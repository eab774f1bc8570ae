"""Export a trained classifier as the SavedModel TF Serving loads
(docs/ARCHITECTURE.md "Signatures").

The Keras `model` given here maps float32 RGB pixels [N, H, W, 3] in 0..255 (the backbone's
`preprocess_input` lives inside the model) to probabilities: [N, 1] from a sigmoid head or
[N, C] from a softmax head. The archive adds, inside the graph:

- `serving_default`: `images` DT_STRING [-1] (encoded JPEG/PNG/GIF/BMP) -> decode, resize, model;
- `predict_pixels`:  `pixels` DT_FLOAT [-1, H, W, 3] -> model;

both returning `probabilities` [-1, C] (C >= 2, `[1-p, p]` for a sigmoid head), `scores` [-1],
`class_ids` [-1] int64 and `classes` [-1] string; 0 images in are 0 rows of each out (the empty
batch never reaches the model: TensorFlow's Conv2D fails on one). `decode_and_resize` is also
what the Trainer's tf.data pipeline uses, so training and serving see identical pixels, EXIF
orientation included (`exif_transpose`, from the Examples' stats.json; trainer/exif.py).

Decompression bombs: before anything is decoded, `serving_default` reads each image's width and
height from its header (JPEG via `tf.image.extract_jpeg_shape`, PNG IHDR, GIF logical screen and
every frame's image descriptor, BMP header) and fails with INVALID_ARGUMENT naming the limit when
an image would decode to more than `max_image_pixels` pixels (GIF: all frames together, since
TensorFlow's decoder holds every frame). At most DECODE_PARALLELISM images are decoded at once.
The limit is a constant in the graph, so TensorFlow Serving enforces it too, and it is recorded in
`assets/serving_limits.json` (`core.artifacts.read_max_image_pixels`). The input the model expects
(size, colour, pixel range, resize) is recorded in `assets/preprocessing.json` (input_metadata),
part of the serving contract the Pusher checks (core/contract.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.artifacts import (
    IMAGES_INPUT,
    PIXELS_INPUT,
    PIXELS_SIGNATURE,
    SERVING_SIGNATURE,
)
from pipeline_components.core.image_header import DEFAULT_MAX_IMAGE_PIXELS
from pipeline_components.trainer import exif

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# Magic numbers of the formats tf.io.decode_image reads: JPEG, PNG, GIF, BMP.
_MAGIC = ((b"\xff\xd8\xff", 3), (b"\x89PNG", 4), (b"GIF8", 4), (b"BM", 2))
NOT_AN_IMAGE = "input 'images' holds an element that is not an encoded JPEG, PNG, GIF or BMP image"
# Images decoded at once by serving_default: peak decode memory is about
# DECODE_PARALLELISM x max_image_pixels x 6 bytes (16-bit PNG; 3 bytes for most images).
DECODE_PARALLELISM = 4
# Steps of the walk over a GIF's blocks: one per extension or frame, one per run of up to
# _GIF_RUN full data sub-blocks and one per short sub-block, so about 4 per frame for what
# encoders write. A GIF that needs more (thousands of frames, or tiny sub-blocks: a way to make
# the check itself slow) is rejected.
GIF_MAX_STEPS = 10_000
_GIF_RUN = 1024

# serving_default and predict_pixels: a batch in, the four outputs out
ServingFn = Callable[[tf.Tensor], dict[str, tf.Tensor]]


def is_image(encoded: tf.Tensor) -> tf.Tensor:
    """Scalar bool: does this string start like a JPEG/PNG/GIF/BMP file?"""
    checks = [tf.equal(tf.strings.substr(encoded, 0, n), magic) for magic, n in _MAGIC]
    return tf.reduce_any(tf.stack(checks))


def _le(b: tf.Tensor, start: int, n: int) -> tf.Tensor:
    """Little-endian unsigned integer of b[start:start+n] (int64 bytes)."""
    return sum(b[start + i] * (1 << (8 * i)) for i in range(n))


def _be(b: tf.Tensor, start: int, n: int) -> tf.Tensor:
    return sum(b[start + i] * (1 << (8 * (n - 1 - i))) for i in range(n))


def _int32(value: tf.Tensor) -> tf.Tensor:
    """An unsigned 32-bit value read as signed (BMP stores signed sizes)."""
    return tf.where(value >= 2**31, value - 2**32, value)


class _GifWalk:
    """The walk over a GIF's blocks, as a tf.while_loop: its state is (step, pos, in_blocks,
    done, total, max_w, max_h); `body` takes one step (a block, or a run of sub-blocks)."""

    def __init__(self, encoded: tf.Tensor) -> None:
        self.data = tf.cast(tf.io.decode_raw(encoded, tf.uint8), tf.int64)
        self.size = tf.size(self.data, out_type=tf.int64)
        self.zero = tf.constant(0, tf.int64)
        self.full_runs = tf.range(_GIF_RUN, dtype=tf.int64) * 256
        self.longest = tf.constant(_GIF_RUN, tf.int64)

    def at(self, i: tf.Tensor) -> tf.Tensor:
        """data[i], 0 past the end (i may be a vector)."""
        return tf.where(
            i < self.size, tf.gather(self.data, tf.minimum(i, self.size - 1)), self.zero
        )

    def table(self, packed: tf.Tensor) -> tf.Tensor:
        """Bytes of a colour table announced by a packed field."""
        present = tf.bitwise.bitwise_and(packed, 0x80) > 0
        entries = tf.bitwise.left_shift(tf.constant(2, tf.int64), tf.bitwise.bitwise_and(packed, 7))
        return tf.where(present, 3 * entries, self.zero)

    def chain(self, pos: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """In a chain of data sub-blocks: (where the walk goes, whether the chain goes on).
        Every full (255-byte) sub-block is skipped at once (encoders write full ones), then
        the one after them."""
        lengths = self.at(pos + self.full_runs)
        short = tf.not_equal(lengths, 255)
        run = tf.where(
            tf.reduce_any(short),
            tf.argmax(tf.cast(short, tf.int32), output_type=tf.int64),
            self.longest,
        )
        last = pos + 256 * run
        chain_pos = tf.where(run < self.longest, last + 1 + self.at(last), last)
        return chain_pos, tf.logical_or(run >= self.longest, self.at(last) > 0)

    def body(
        self,
        step: tf.Tensor,
        pos: tf.Tensor,
        in_blocks: tf.Tensor,
        done: tf.Tensor,
        total: tf.Tensor,
        max_w: tf.Tensor,
        max_h: tf.Tensor,
    ) -> tuple[tf.Tensor, ...]:
        chain_pos, chain_on = self.chain(pos)
        # At a block: an image descriptor (0x2C), an extension (0x21), or the end.
        b = self.at(pos)
        is_desc, is_ext = tf.equal(b, 0x2C), tf.equal(b, 0x21)
        width = self.at(pos + 5) + 256 * self.at(pos + 6)
        height = self.at(pos + 7) + 256 * self.at(pos + 8)
        after_desc = pos + 10 + self.table(self.at(pos + 9)) + 1  # + LZW minimum code size
        block_pos = tf.where(is_desc, after_desc, tf.where(is_ext, pos + 2, pos))
        frame = tf.logical_and(tf.logical_not(in_blocks), is_desc)
        new_pos = tf.where(in_blocks, chain_pos, block_pos)
        ends = tf.logical_and(tf.logical_not(in_blocks), tf.logical_not(is_desc | is_ext))
        return (
            step + 1,
            new_pos,
            tf.where(in_blocks, chain_on, is_desc | is_ext),
            tf.logical_or(ends, new_pos >= self.size),
            total + tf.where(frame, width * height, self.zero),
            tf.maximum(max_w, tf.where(frame, width, self.zero)),
            tf.maximum(max_h, tf.where(frame, height, self.zero)),
        )

    @staticmethod
    def cond(
        step: tf.Tensor, pos: tf.Tensor, in_blocks: tf.Tensor, done: tf.Tensor, *_: tf.Tensor
    ) -> tf.Tensor:
        return tf.logical_and(tf.logical_not(done), step < GIF_MAX_STEPS)


def _gif_dims(encoded: tf.Tensor, head: tf.Tensor) -> tf.Tensor:
    """[height, width, pixels] of a GIF: the logical screen, and the pixels of all frames
    (giflib keeps every frame in memory) found by walking the block structure. pixels is -1 when
    the walk needs more than GIF_MAX_STEPS steps (a GIF made of tiny sub-blocks)."""
    walk = _GifWalk(encoded)
    zero = walk.zero
    screen_w, screen_h = _le(head, 6, 2), _le(head, 8, 2)
    start = 13 + walk.table(head[10])
    _, _, _, done, total, max_w, max_h = tf.while_loop(
        walk.cond,
        walk.body,
        (zero, start, tf.constant(False), start >= walk.size, zero, zero, zero),
    )
    pixels = tf.where(done, tf.maximum(screen_w * screen_h, total), tf.constant(-1, tf.int64))
    return tf.stack([tf.maximum(screen_h, max_h), tf.maximum(screen_w, max_w), pixels])


def image_header(encoded: tf.Tensor) -> tf.Tensor:
    """int64 [format, height, width, pixels] from an encoded image's header, without decoding.

    format: 0 JPEG, 1 PNG, 2 GIF, 3 BMP, -1 anything else (then the rest is 0). pixels is what
    the decoder will allocate per channel: height x width, for GIF every frame's pixels summed
    (at least the logical screen's). A malformed JPEG header fails like the JPEG decoder.
    """
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, 32), "\0" * 32]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
    matches = tf.stack([tf.equal(tf.strings.substr(encoded, 0, n), m) for m, n in _MAGIC])
    # the first matching format, or len(_MAGIC) (the "not an image" branch) when none matches
    index = tf.argmax(tf.concat([tf.cast(matches, tf.int32), [1]], axis=0), output_type=tf.int32)

    def dims(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        height, width = tf.abs(tf.cast(height, tf.int64)), tf.abs(tf.cast(width, tf.int64))
        return tf.stack([height, width, height * width])

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(encoded)
        return dims(shape[0], shape[1])

    branches = [
        jpeg,
        lambda: dims(_be(b, 20, 4), _be(b, 16, 4)),  # PNG IHDR: width, height
        lambda: _gif_dims(encoded, b),
        # BMP: TensorFlow's decoder reads signed 32-bit width and height at 18 and 22
        lambda: dims(_int32(_le(b, 22, 4)), _int32(_le(b, 18, 4))),
        lambda: tf.zeros([3], tf.int64),
    ]
    values = tf.switch_case(index, branches)
    fmt = tf.where(index < len(_MAGIC), tf.cast(index, tf.int64), tf.constant(-1, tf.int64))
    return tf.concat([tf.reshape(fmt, [1]), values], axis=0)


def check_image_sizes(images: tf.Tensor, max_image_pixels: int) -> tf.Operation:
    """An op that fails with INVALID_ARGUMENT unless every element of `images` is a JPEG, PNG,
    GIF or BMP image that decodes to at most max_image_pixels pixels; nothing is decoded."""
    headers = tf.map_fn(image_header, images, fn_output_signature=tf.TensorSpec([4], tf.int64))
    not_image = tf.debugging.Assert(tf.reduce_all(headers[:, 0] >= 0), [NOT_AN_IMAGE])
    over = tf.logical_or(headers[:, 3] > max_image_pixels, headers[:, 3] < 0)

    def message() -> tf.Tensor:
        first = tf.argmax(tf.cast(over, tf.int32), output_type=tf.int64)
        row, text = tf.gather(headers, first), tf.strings.as_string
        limit = f"the limit of {max_image_pixels} pixels (max_image_pixels)"
        size = tf.strings.join([
            "input 'images' element ", text(first), " is ", text(row[2]), "x", text(row[1]),
            " pixels (", text(row[3]), " to decode), over ", limit,
        ])  # fmt: skip
        unchecked = tf.strings.join([
            "input 'images' element ", text(first), " is a GIF with more than ",
            str(GIF_MAX_STEPS), " blocks, too many to check against ", limit,
        ])  # fmt: skip
        return tf.where(row[3] < 0, unchecked, size)

    any_over = tf.reduce_any(over)
    text = tf.cond(any_over, message, lambda: tf.constant(""))
    with tf.control_dependencies([not_image]):
        return tf.debugging.Assert(tf.logical_not(any_over), [text])


def decode_and_resize(
    encoded: tf.Tensor, image_size: Sequence[int], exif_transpose: bool = True
) -> tf.Tensor:
    """One encoded image -> float32 [H, W, 3] RGB in 0..255 (bilinear resize, no antialias).
    With `exif_transpose`, a JPEG's EXIF orientation is applied first (trainer/exif.py), as
    viewers show the photo."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    if not exif_transpose:
        # resize reads uint8 directly (float32 out, same values): a third cheaper than casting
        return tf.image.resize(image, image_size, method="bilinear")
    # turned after resizing (they commute), to the swapped size when the turn swaps the sides
    value = exif.orientation(encoded)
    height, width = (int(s) for s in image_size)
    size = tf.where(exif.swaps_sides(value), [width, height], [height, width])
    resized = tf.image.resize(image, size, method="bilinear")
    turned = exif.apply_orientation(resized, value)
    turned.set_shape([height, width, 3])
    return turned


def input_metadata(image_size: Sequence[int], exif_transpose: bool = True) -> dict[str, Any]:
    """What decode_and_resize makes of a request, for clients of `predict_pixels` and for the
    serving-contract check: recorded at export in assets/preprocessing.json."""
    height, width = (int(s) for s in image_size)
    return {
        "image_size": [height, width],
        "channels": 3,
        "color": "RGB",
        "pixel_range": [0, 255],
        "resize": "bilinear",
        "decode": "tf.io.decode_image",
        "exif_transpose": bool(exif_transpose),
    }


def outputs_from_probabilities(probs: tf.Tensor, labels: list[str]) -> dict[str, tf.Tensor]:
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


def build_serving_fns(
    model: keras.Model,
    labels: list[str],
    image_size: Sequence[int],
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    exif_transpose: bool = True,
) -> tuple[ServingFn, ServingFn]:
    """The two endpoint functions, as plain callables (traced by ExportArchive)."""
    height, width = (int(s) for s in image_size)
    max_image_pixels = _check_max_image_pixels(max_image_pixels)

    def run(pixels: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(pixels, training=False), tf.float32)

    def predict_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # An empty batch never reaches the model: TensorFlow's CPU Conv2D returns an empty
        # input unchanged, so the next convolution of every backbone fails ("input depth must
        # be evenly divisible by filter depth: 3 vs 64"). 0 images in: 0 rows of each output
        # (the model's width, from one blank image: only ever run for an empty request).
        probs = tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: run(pixels),
            lambda: run(tf.zeros([1, height, width, 3]))[:0],
        )
        return outputs_from_probabilities(probs, labels)

    def serving_default(images: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.control_dependencies([check_image_sizes(images, max_image_pixels)]):
            pixels = tf.map_fn(
                lambda x: decode_and_resize(x, (height, width), exif_transpose),
                images,
                fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
                parallel_iterations=DECODE_PARALLELISM,
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
    model: keras.Model,
    export_dir: str,
    labels: list[str],
    image_size: Sequence[int],
    warmup_images: list[bytes] | None = None,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    preprocessing: dict[str, Any] | None = None,
    exif_transpose: bool = True,
) -> str:
    """Write the SavedModel to `export_dir` atomically (temporary sibling + rename).
    `assets/preprocessing.json` records the input the model expects (input_metadata) plus
    `preprocessing` (e.g. the backbone): part of the serving contract (core/contract.py).
    `exif_transpose` must be what the model was trained with (the Examples' stats.json)."""
    height, width = (int(s) for s in image_size)
    serving_default, predict_pixels = build_serving_fns(
        model, labels, (height, width), max_image_pixels, exif_transpose
    )
    with fsutil.atomic_dir(export_dir) as tmp:
        archive = _archive(model, serving_default, predict_pixels, height, width)
        archive.write_out(tmp, verbose=False)
        # Class names are constants in the graph; the file is for people and tools.
        fsutil.makedirs(fsutil.join(tmp, artifacts.ASSETS_DIR))
        fsutil.write_atomic(artifacts.labels_asset(tmp), "\n".join(labels) + "\n")
        limits = {"max_image_pixels": int(max_image_pixels)}
        fsutil.write_atomic(artifacts.limits_asset(tmp), json.dumps(limits) + "\n")
        metadata = {**input_metadata((height, width), exif_transpose), **(preprocessing or {})}
        fsutil.write_atomic(
            artifacts.preprocessing_asset(tmp), json.dumps(metadata, sort_keys=True) + "\n"
        )
        if warmup_images:
            fsutil.makedirs(fsutil.join(tmp, artifacts.ASSETS_EXTRA_DIR))
            with tf.io.TFRecordWriter(artifacts.warmup_file(tmp)) as writer:
                for record in warmup_records(warmup_images):
                    writer.write(record)
    log.info(
        "exported SavedModel to %s (classes: %s; max_image_pixels %d)",
        export_dir, ", ".join(labels), max_image_pixels,
    )  # fmt: skip
    return export_dir


def _archive(
    model: keras.Model,
    serving_default: ServingFn,
    predict_pixels: ServingFn,
    height: int,
    width: int,
) -> keras.export.ExportArchive:
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


def _check_max_image_pixels(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_image_pixels must be an integer >= 1, got {value!r}")
    return value
