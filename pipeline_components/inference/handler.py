"""A RunInference model handler for the exported SavedModel's `serving_default` signature.

Beam's own `TFModelHandler*` load with `tf.keras.models.load_model` (which cannot read a Keras 3
`ExportArchive`) and need `tensorflow_hub`; this one loads with `tf.saved_model.load` and calls
the signature on a batch of encoded images (DT_STRING [-1]), the way TF Serving does. Batching is
RunInference's (`beam.BatchElements`, min = max = `batch_size`), and with `model_copies` set the
model is loaded that many times per machine and shared by every worker process there (Beam's
`share_model_across_processes`); otherwise each worker process loads its own copy once.

A batch the model rejects (an image that is not an image, a corrupt JPEG, one over the model's
`max_image_pixels`) is halved and re-run until the failing images are found, about 2*log2(N)
extra calls per bad image; each of those gets `{"error": reason}` instead of outputs, so one bad
file never fails its batch-mates or the job. This happens where the model lives, so no exception
crosses the process boundary of a shared model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference import base as _beam_inference
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline_components.core import artifacts

if _beam_inference.resource is None:
    # Beam 2.77 imports `resource` in one try block with its ModelManager, which needs torch;
    # without torch it loses `resource`, logs a warning per model load and reports no memory.
    import resource

    _beam_inference.resource = resource

_NOISE = ("Graph execution error", "Detected at node", "<stack traces unavailable>")


def clean_tf_message(message: str) -> str:
    """The one informative line of a TensorFlow runtime error (no node names, no op suffix)."""
    lines = [
        line.strip()
        for line in str(message).splitlines()
        if line.strip() and not line.strip().startswith(("[[", *_NOISE))
    ]
    text = lines[0] if lines else " ".join(str(message).split())
    text = re.sub(r"\s*\[Op:[^\]]*\]$", "", text).replace("\\'", "'")
    match = re.fullmatch(r"assertion failed: \[(.*)\]", text)
    return match.group(1) if match else text


class SignatureRunner:
    """A loaded SavedModel signature that scores lists of encoded images.

    `predict(images)` returns, per image, `{output name: value}` (`probabilities` a float32
    array, `scores` a float, `class_ids` an int, `classes` a str) or `{"error": reason}`.
    """

    def __init__(self, model_dir: str, signature_name: str = artifacts.SERVING_SIGNATURE):
        import tensorflow as tf

        self.model_dir = model_dir
        try:
            self._loaded = tf.saved_model.load(model_dir)
            self._fn = self._loaded.signatures[signature_name]
        except Exception as e:  # one line in the job's error, not TensorFlow's traceback
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RuntimeError(f"cannot load SavedModel {model_dir}: {first}") from None
        _, kwargs = self._fn.structured_input_signature
        self._input = next(iter(kwargs)) if len(kwargs) == 1 else artifacts.IMAGES_INPUT

    def predict(self, images: Sequence[bytes]) -> list[dict[str, Any]]:
        return self._predict(list(images))

    def _predict(self, images: list[bytes]) -> list[dict[str, Any]]:
        import tensorflow as tf

        if not images:
            return []
        try:
            out = self._fn(**{self._input: tf.constant(images, dtype=tf.string)})
        except tf.errors.InvalidArgumentError as e:
            if len(images) == 1:
                return [{"error": clean_tf_message(e.message)}]
            half = len(images) // 2
            return self._predict(images[:half]) + self._predict(images[half:])
        return split_outputs({k: v.numpy() for k, v in out.items()}, len(images))


def split_outputs(outputs: dict[str, np.ndarray], count: int) -> list[dict[str, Any]]:
    """Batched signature outputs -> one dict of plain values per element."""
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for name, values in outputs.items():
        for row, value in zip(rows, values, strict=True):
            if isinstance(value, np.ndarray):
                row[name] = value
            elif isinstance(value, bytes):
                row[name] = value.decode("utf-8")
            elif isinstance(value, np.integer):
                row[name] = int(value)
            else:
                row[name] = float(value)
    return rows


class SignatureModelHandler(ModelHandler[bytes, PredictionResult, SignatureRunner]):
    """RunInference over `serving_default` of the SavedModel at `model_dir`.

    Elements are encoded image bytes; each result is a `PredictionResult(example=bytes,
    inference=dict, model_id=model_dir)` whose inference holds the signature's outputs for that
    image, or `{"error": reason}` when the model rejected it.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        batch_size: int = 32,
        model_copies: int | None = None,
        signature_name: str = artifacts.SERVING_SIGNATURE,
    ):
        super().__init__(
            min_batch_size=batch_size, max_batch_size=batch_size, model_copies=model_copies
        )
        self.model_dir = model_dir
        self.signature_name = signature_name

    def load_model(self) -> SignatureRunner:
        return SignatureRunner(self.model_dir, self.signature_name)

    def run_inference(
        self,
        batch: Sequence[bytes],
        model: SignatureRunner,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        outputs = model.predict(list(batch))
        return [
            PredictionResult(example, out, self.model_dir)
            for example, out in zip(batch, outputs, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)

    def __repr__(self) -> str:
        return f"SignatureModelHandler({self.model_dir!r}, {self.signature_name!r})"
