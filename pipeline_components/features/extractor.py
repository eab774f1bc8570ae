"""The frozen backbone as a feature extractor, and its RunInference model handler.

    encoded image bytes -> export.decode_and_resize (serving_default's decoding)
        -> BackbonePreprocess (the backbone's preprocess_input) -> backbone(training=False)
        -> features [*shape], stored as float16 or float32 bytes

The pixels are the ones the Trainer's image input pipeline and the exported model compute, so a
head trained on these features fits the backbone it is exported with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline_components.features import files
from pipeline_components.features.config import FeatureSpec
from pipeline_components.inference.handler import clean_tf_message


def build_extractor(spec: FeatureSpec, weights_file: str | None = None) -> Any:
    """pixels float32 [N, H, W, 3] 0..255 -> backbone features: a keras.Model of the spec's
    backbone, with `weights_file` (a .weights.h5 of the backbone) when given, else the spec's
    weights. Any: keras.Model (Keras ships no types)."""
    from pipeline_components.trainer import model as model_lib

    # float32 also under a mixed_float16 policy: the stored precision is the spec's dtype
    with model_lib.dtype_policy("float32"):
        backbone = model_lib.build_backbone(
            spec.backbone, "none" if weights_file else spec.weights, spec.image_size
        )
        if weights_file:
            model_lib.load_backbone_weights(backbone, weights_file, spec.backbone)
        return wrap_backbone(backbone, spec)


def wrap_backbone(backbone: Any, spec: FeatureSpec) -> Any:
    """The backbone with its preprocessing in front (the Trainer's model minus the head)."""
    import keras

    from pipeline_components.trainer import model as model_lib

    pixels = keras.Input((*spec.image_size, 3), name="pixels")
    x = model_lib.BackbonePreprocess(spec.backbone, name=model_lib.PREPROCESS)(pixels)
    return keras.Model(pixels, backbone(x, training=False), name="features")


# Images this process has run through a backbone (every Extractor): what proves a run that
# reused its features did no backbone pass (tests; the DirectRunner runs the job in-process).
_images_extracted = 0


def images_extracted() -> int:
    return _images_extracted


class Extractor:
    """Encoded images -> feature bytes, one call per batch. An image the decoder rejects gets
    its reason instead: the batch is halved until it is found, so its batch-mates still get
    their features."""

    def __init__(self, spec: FeatureSpec, weights_file: str | None = None) -> None:
        import tensorflow as tf

        from pipeline_components.trainer.export import decode_and_resize

        self.spec = spec
        self.model = build_extractor(spec, weights_file)
        self.shape = tuple(int(d) for d in self.model.output.shape[1:])
        size, exif = spec.image_size, spec.exif_transpose

        def extract(images: tf.Tensor) -> tf.Tensor:
            pixels = tf.map_fn(
                lambda e: decode_and_resize(e, size, exif),
                images,
                fn_output_signature=tf.TensorSpec([*size, 3], tf.float32),
            )
            return tf.cast(self.model(pixels, training=False), tf.float32)

        self._fn = tf.function(extract, input_signature=[tf.TensorSpec([None], tf.string)])

    def features(self, images: Sequence[bytes]) -> list[bytes | str]:
        """Per image: its features as bytes of the spec's dtype, or why it has none (a str)."""
        import tensorflow as tf

        images = list(images)
        if not images:
            return []
        try:
            out = self._fn(tf.constant(images, dtype=tf.string)).numpy()
        except tf.errors.InvalidArgumentError as e:
            if len(images) == 1:
                return [clean_tf_message(e.message)]
            half = len(images) // 2
            return self.features(images[:half]) + self.features(images[half:])
        global _images_extracted
        _images_extracted += len(images)
        return [files.to_bytes(row, self.spec.dtype) for row in out]

    def array(self, images: Sequence[bytes]) -> np.ndarray:
        """Features of images that all decode, float32 [N, *shape] (tests, estimates)."""
        import tensorflow as tf

        return np.asarray(self._fn(tf.constant(list(images), dtype=tf.string)).numpy())


class FeatureHandler(ModelHandler[bytes, PredictionResult, Extractor]):
    """RunInference of the backbone: elements are encoded images, each result's inference is
    the image's feature bytes or the reason it has none (a str). The backbone is built from
    `weights_file` (the artifact's backbone.weights.h5), once per worker process, or
    `model_copies` times per machine shared by its processes."""

    def __init__(
        self,
        spec: FeatureSpec,
        weights_file: str,
        *,
        batch_size: int = 32,
        model_copies: int | None = None,
    ) -> None:
        super().__init__(
            min_batch_size=batch_size, max_batch_size=batch_size, model_copies=model_copies
        )
        self.spec = spec
        self.weights_file = weights_file

    def load_model(self) -> Extractor:
        return Extractor(self.spec, self.weights_file)

    def run_inference(
        self,
        batch: Sequence[bytes],
        model: Extractor,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        outputs = model.features(batch)
        return [PredictionResult(b"", out) for out in outputs]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)

    def __repr__(self) -> str:
        return f"FeatureHandler({self.spec.backbone!r}, {self.weights_file!r})"
