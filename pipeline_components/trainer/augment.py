"""ImageDataGenerator's random affine augmentation as ONE Keras layer: one matrix per image,
one resampling op per batch.

tf_keras `ImageDataGenerator.apply_transform` resamples each image through

    input = Off @ R(theta) @ T(tx, ty) @ Sh(shear) @ Z(zx, zy) @ Off^-1 @ F @ output

(coordinates (x=column, y=row), Off moves the origin to the image centre, F the optional
horizontal mirror that it applies after the affine), bilinear, fill 'nearest'. `affine_transforms`
builds exactly that matrix for a batch of parameters and `RandomAffine` draws the parameters
per image and resamples the whole batch with one op (`tf.data`-friendly: TF ops only, no
per-image Python or map).

Two places where tf_keras contradicts its own documentation, and this module follows the
documentation (for square images and equal shift ranges, such as the notebook's 224x224 with
0.2/0.2, the two are identical in distribution):
- `get_random_transform` draws tx (the column shift) from height_shift_range * height and ty
  from width_shift_range * width (tf-keras#310, tensorflow#82838). Here width_shift_range
  shifts columns by a fraction of the width, height_shift_range rows by a fraction of the height.
- `transform_matrix_offset_center(m, h, w)` puts the centre at (h/2 - 0.5, w/2 - 0.5) in (x, y),
  off-centre for non-square images. Here the centre is ((w - 1) / 2, (h - 1) / 2).
Also, ImageDataGenerator reads a shift range >= 1 as pixels; here it is always a fraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

# column of the [N, 7] uniform draw used for each parameter: switching one parameter off leaves
# the draws of the others unchanged
_THETA, _TX, _TY, _SHEAR, _ZX, _ZY, _FLIP = range(7)


def _matrices(rows: Sequence[Sequence[tf.Tensor]]) -> tf.Tensor:
    """[[a, b, c], [d, e, f]] of [N] tensors -> [N, 3, 3] with last row [0, 0, 1]."""
    n = tf.shape(rows[0][0])
    zero, one = tf.zeros(n), tf.ones(n)
    return tf.stack([tf.stack(r, axis=-1) for r in (*rows, (zero, zero, one))], axis=-2)


def affine_transforms(
    theta: tf.Tensor,
    tx: tf.Tensor,
    ty: tf.Tensor,
    shear: tf.Tensor,
    zx: tf.Tensor,
    zy: tf.Tensor,
    flip: tf.Tensor,
    height: int | tf.Tensor,
    width: int | tf.Tensor,
) -> tf.Tensor:
    """ImageDataGenerator's output -> input matrices for a batch, as [N, 8] rows for
    `ImageProjectiveTransformV3`. All arguments [N] float32 (flip: 1.0 mirrors), in
    `ImageDataGenerator.apply_transform`'s terms: theta and shear in degrees, tx the shift of the
    column (x) coordinate and ty of the row (y) coordinate in pixels, zx and zy the zoom of x and y.
    """
    theta = theta * (math.pi / 180)
    shear = shear * (math.pi / 180)
    zero, one = tf.zeros_like(theta), tf.ones_like(theta)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx = (tf.cast(width, tf.float32) - 1) / 2
    cy = (tf.cast(height, tf.float32) - 1) / 2
    m = _matrices([(one, zero, cx + zero), (zero, one, cy + zero)])  # centred -> pixel coordinates
    for step in (
        [(cos, -sin, zero), (sin, cos, zero)],  # rotation
        [(one, zero, tx), (zero, one, ty)],  # shift
        [(one, -tf.sin(shear), zero), (zero, tf.cos(shear), zero)],  # shear
        [(zx, zero, zero), (zero, zy, zero)],  # zoom
        [(one, zero, -cx + zero), (zero, one, -cy + zero)],  # pixel -> centred coordinates
        [(1 - 2 * flip, zero, flip * 2 * cx), (zero, one, zero)],  # mirror (on the output side)
    ):
        m = m @ _matrices(step)
    return tf.reshape(m, [-1, 9])[:, :8]


def projective_transform(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """[N, H, W, C] images through per-image [N, 8] output -> input transforms: TF's one op,
    bilinear, fill 'nearest' (out-of-image coordinates clamp to the edge, as scipy's 'nearest')."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


@tf.function(jit_compile=True, reduce_retracing=True)
def xla_affine_transform(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """`projective_transform` for affine transforms (last row [0, 0, 1]) as one XLA kernel: the
    source coordinates once per pixel (not per channel, as the TF op does), 4 gathers of [C]
    pixels, blend; ~3x less CPU than the TF op. Same pixels up to float rounding.
    Flat int32 pixel indices: N * H * W must stay under 2**31."""
    n, h, w, c = tf.unstack(tf.shape(images))
    wf, hf = tf.cast(w, tf.float32), tf.cast(h, tf.float32)
    x = tf.range(wf)[None, None, :]
    y = tf.range(hf)[None, :, None]
    a0, a1, a2, b0, b1, b2 = (tf.cast(transforms[:, i, None, None], tf.float32) for i in range(6))
    src_x = tf.clip_by_value(a0 * x + a1 * y + a2, 0.0, wf - 1)  # fill 'nearest': clamp
    src_y = tf.clip_by_value(b0 * x + b1 * y + b2, 0.0, hf - 1)
    x0, y0 = tf.floor(src_x), tf.floor(src_y)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, w - 1), tf.minimum(y0 + 1, h - 1)
    pixels = tf.reshape(tf.cast(images, tf.float32), [-1, c])
    first = (tf.range(n) * h * w)[:, None, None]  # index of each image's first pixel

    def at(row: tf.Tensor, col: tf.Tensor) -> tf.Tensor:
        return tf.gather(pixels, first + row * w + col)

    top = at(y0, x0) + fx * (at(y0, x1) - at(y0, x0))
    bottom = at(y1, x0) + fx * (at(y1, x1) - at(y1, x0))
    return tf.cast(top + fy * (bottom - top), images.dtype)


RESAMPLERS = {"xla": xla_affine_transform, "projective": projective_transform}


def draw_params(
    u: tf.Tensor,
    ranges: Sequence[float] | tf.Tensor,
    height: int | tf.Tensor,
    width: int | tf.Tensor,
) -> dict[str, tf.Tensor]:
    """Per-image parameters (ImageDataGenerator's names) from `u`, [N, 7] uniform draws in
    [0, 1), and `ranges` = (rotation, width shift, height shift, shear, zoom, flip 0/1)."""
    rotation, width_shift, height_shift, shear, zoom, flip = (ranges[i] for i in range(6))

    def sym(col: int, r: float | tf.Tensor) -> tf.Tensor:  # U(-r, r); 0 when the range is off
        return (2 * u[:, col] - 1) * r

    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    return {
        "theta": sym(_THETA, rotation),
        "tx": sym(_TX, width_shift) * width,
        "ty": sym(_TY, height_shift) * height,
        "shear": sym(_SHEAR, shear),
        "zx": 1 + sym(_ZX, zoom),
        "zy": 1 + sym(_ZY, zoom),
        "flip": tf.cast(u[:, _FLIP] < 0.5, tf.float32) * flip,
    }


@tf.function(jit_compile=True, reduce_retracing=True)
def xla_random_affine(images: tf.Tensor, u: tf.Tensor, ranges: tf.Tensor) -> tf.Tensor:
    """`draw_params`, `affine_transforms` and `xla_affine_transform` as ONE XLA kernel: the few
    dozen tiny matrix ops per call cost more than the resampling of a single small image when
    they run one by one (tf.data calls this once per image)."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    params = draw_params(u, ranges, height, width)
    return xla_affine_transform(images, affine_transforms(**params, height=height, width=width))


@keras.saving.register_keras_serializable(package="transfer_pipeline")
class RandomAffine(keras.layers.Layer):
    """tf_keras ImageDataGenerator's random rotation, shift, shear, zoom and horizontal flip as one
    resampling of the batch (bilinear, fill 'nearest': ImageDataGenerator's defaults).

    Per image: theta ~ U(-rotation_range, rotation_range) degrees; horizontal shift ~
    U(-width_shift_range, width_shift_range) * width, vertical ~ U(-height_shift_range,
    height_shift_range) * height; shear ~ U(-shear_range, shear_range) degrees; zx, zy ~
    U(1 - zoom_range, 1 + zoom_range) independently; mirrored with probability 1/2 when
    horizontal_flip. 0 / False switches a transform off. Active only with training=True (the
    default, like Keras's random layers).

    Draws are stateless: keyed by `seed` passed to call (a [2] integer tensor, e.g. one per record
    from `inputs.record_keys`, so parallel tf.data calls stay deterministic), or else by the
    layer's own `keras.random.SeedGenerator(seed)`.

    resampler: "xla" (default: `xla_random_affine`, parameters, matrices and resampling in one
    XLA kernel) or "projective" (TF's ImageProjectiveTransformV3); both one resampling op per
    call, the same pixels up to float rounding.
    """

    def __init__(
        self,
        rotation_range: float = 0.0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        shear_range: float = 0.0,
        zoom_range: float = 0.0,
        horizontal_flip: bool = False,
        seed: int | None = None,
        resampler: str = "xla",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rotation_range = float(rotation_range)
        self.width_shift_range = float(width_shift_range)
        self.height_shift_range = float(height_shift_range)
        self.shear_range = float(shear_range)
        self.zoom_range = float(zoom_range)
        self.horizontal_flip = bool(horizontal_flip)
        if resampler not in RESAMPLERS:
            raise ValueError(f"resampler: one of {sorted(RESAMPLERS)}, got {resampler!r}")
        self.resampler = resampler
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def ranges(self) -> list[float]:
        """`draw_params`'s ranges."""
        return [
            self.rotation_range,
            self.width_shift_range,
            self.height_shift_range,
            self.shear_range,
            self.zoom_range,
            float(self.horizontal_flip),
        ]

    @staticmethod
    def uniforms(n: int | tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        """[n, 7] stateless uniform draws in [0, 1) for `key`, one row per image."""
        return tf.random.stateless_uniform(tf.stack([n, 7]), seed=key)

    def sample(
        self, n: int | tf.Tensor, height: int | tf.Tensor, width: int | tf.Tensor, key: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The per-image parameters (ImageDataGenerator's names) for a batch of `n`."""
        return draw_params(self.uniforms(n, key), self.ranges(), height, width)

    def call(
        self, images: tf.Tensor, training: bool = True, seed: tf.Tensor | None = None
    ) -> tf.Tensor:
        if not training:
            return images
        images = tf.cast(images, self.compute_dtype)
        key = self.seed_generator.next() if seed is None else seed
        n, height, width = tf.unstack(tf.shape(images)[:3])
        u = self.uniforms(n, tf.cast(key, tf.int64))
        if self.resampler == "xla":
            return xla_random_affine(images, u, tf.constant(self.ranges(), tf.float32))
        matrices = affine_transforms(
            **draw_params(u, self.ranges(), height, width), height=height, width=width
        )
        return RESAMPLERS[self.resampler](images, matrices)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rotation_range": self.rotation_range,
            "width_shift_range": self.width_shift_range,
            "height_shift_range": self.height_shift_range,
            "shear_range": self.shear_range,
            "zoom_range": self.zoom_range,
            "horizontal_flip": self.horizontal_flip,
            "seed": self.seed,
            "resampler": self.resampler,
        }
