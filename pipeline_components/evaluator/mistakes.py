"""Heat maps of the most confident mistakes: the candidate's `grad_cam` signature
(trainer/explain.py) called on the few images the Beam job picked (scoring.TopMistakes).

Run in the driver after the job, on at most `mistakes_per_class` x classes images, for the
class the model wrongly predicted: where it saw the class it said. A SavedModel without the
signature (exported before it existed, or not by the Trainer) gets no heat maps, and the gallery
says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline_components.core import artifacts, contract
from pipeline_components.core.errors import PipelineError

BATCH = 16


def has_grad_cam(model_dir: str) -> bool:
    """Whether the SavedModel exports `grad_cam` (read from saved_model.pb, not loaded)."""
    try:
        return artifacts.GRAD_CAM_SIGNATURE in contract.read_signature_defs(model_dir)
    except Exception:
        return False


def heat_maps(model_dir: str, items: list[dict[str, Any]]) -> list[np.ndarray]:
    """Grad-CAM maps [H, W] in [0, 1] (the model's input size) for each item's predicted class
    (`encoded`, `pred`), in batches of BATCH; a one-line PipelineError when the model fails."""
    import tensorflow as tf

    if not items:
        return []
    try:
        fn = tf.saved_model.load(model_dir).signatures[artifacts.GRAD_CAM_SIGNATURE]
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PipelineError(f"cannot load the grad_cam signature of {model_dir}: {first}") from None
    maps: list[np.ndarray] = []
    for start in range(0, len(items), BATCH):
        batch = items[start : start + BATCH]
        try:
            out = fn(
                images=tf.constant([item["encoded"] for item in batch], dtype=tf.string),
                class_ids=tf.constant([item["pred"] for item in batch], dtype=tf.int64),
            )
        except tf.errors.InvalidArgumentError as e:
            first = batch[0]["filename"]
            raise PipelineError(
                f"grad_cam failed on the batch starting at {first}: {e.message.splitlines()[0]}"
            ) from None
        maps += list(out["heatmaps"].numpy())
    return maps
