"""What both transports and both clients share: results, errors, labels, outputs -> Predictions.
Standard library only."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_SIGNATURE = "serving_default"
IMAGES_INPUT = "images"
# the shipped serving/config/batching_parameters.txt's max_batch_size: a request of more images
# is INVALID_ARGUMENT from a TF Serving that batches with it
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # gRPC's default is 4 MiB

# google.rpc.Code names by number (gRPC status codes, TensorFlow's error codes)
CODE_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
# tensorflow.serving.ModelVersionStatus.State
STATE_NAMES = {
    0: "UNKNOWN",
    10: "START",
    20: "LOADING",
    30: "AVAILABLE",
    40: "UNLOADING",
    50: "END",
}
# request errors that may come from one image of a request: the request is split to find it
PER_IMAGE_CODES = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")


def code_name(number: int) -> str:
    return CODE_NAMES[number] if 0 <= number < len(CODE_NAMES) else "UNKNOWN"


class ClientError(Exception):
    """Bad input to the client (a file, a flag); one line."""


class ServingError(ClientError):
    """A call failed; `.code` is the gRPC status name ("INVALID_ARGUMENT", ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def code_name(self) -> str:
        return self.code


@dataclasses.dataclass(frozen=True)
class Prediction:
    class_name: str
    score: float
    probabilities: dict[str, float]  # keyed by label (or by class index as text, see labels)
    class_id: int
    version: int | None  # the model version that answered (None over REST: not in its answer)


@dataclasses.dataclass(frozen=True)
class PredictionFailure:
    """One image's error when a list is predicted with `predict_each`."""

    error: Exception

    @property
    def message(self) -> str:
        return str(self.error)


@dataclasses.dataclass(frozen=True)
class RawPrediction:
    outputs: dict[str, Any]  # name -> numpy array (TensorFlow client) or nested lists
    model_name: str
    version: int | None
    signature_name: str


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    model_name: str
    version: int | None
    signature_defs: dict  # name -> tensorflow.SignatureDef (proto, or its JSON over REST)
    summary: dict = dataclasses.field(default_factory=dict, repr=False)

    def signatures(self) -> dict[str, dict]:
        """{signature: {"inputs": {name: {"dtype", "shape"}}, "outputs": {...}}}, JSON-able."""
        return self.summary


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str  # OK when healthy
    error_message: str


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """Which model, version and signature a call is for."""

    name: str
    signature_name: str = DEFAULT_SIGNATURE
    version: int | None = None
    version_label: str | None = None


def read_labels(labels: Sequence[str] | str | os.PathLike[str] | None) -> list[str] | None:
    """A labels.txt path (one label a line) or a list -> labels; None stays None."""
    if labels is None:
        return None
    if isinstance(labels, str | os.PathLike):
        try:
            with open(labels, encoding="utf-8", newline="") as f:
                text = f.read()
        except OSError:
            raise ClientError(f"labels file {labels} does not exist or cannot be read") from None
        # exactly as written (pipeline_components.core.artifacts.parse_labels, which this
        # package cannot import): split at "\n" only, nothing stripped but a CRLF's "\r"
        lines = (line.removesuffix("\r") for line in text.split("\n"))
        return [line for line in lines if line]
    return [str(label) for label in labels]


def read_image_file(image: str | os.PathLike[str] | bytes | bytearray | memoryview) -> bytes:
    """A local path or bytes -> encoded image bytes."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    path = os.fspath(image)
    if not os.path.isfile(path):
        raise ClientError(f"image file {path} does not exist")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ClientError(f"cannot read image file {path}: {e.strerror or e}") from None


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def predictions_from(
    outputs: Mapping[str, Any],
    count: int,
    labels: list[str] | None,
    version: int | None,
    where: str,
) -> list[Prediction]:
    """The outputs of a classifier signature (`probabilities` [N, C], optional `class_ids`,
    `classes`) -> one Prediction per image; `where` names the model for errors."""
    if "probabilities" not in outputs:
        raise ClientError(
            f"{where} has no 'probabilities' output (outputs: {', '.join(sorted(outputs))}); "
            "use predict_raw"
        )
    probs = [[float(p) for p in row] for row in _plain(outputs["probabilities"])]
    if len(probs) != count:
        raise ClientError(f"{where} answered {len(probs)} rows for {count} images")
    width = len(probs[0]) if probs else len(labels or [])
    names = labels or [str(i) for i in range(width)]
    if probs and len(names) != width:
        raise ClientError(
            f"the model returns {width} class probabilities but {len(names)} labels were given"
        )
    ids = _plain(outputs["class_ids"]) if "class_ids" in outputs else None
    classes = _plain(outputs["classes"]) if "classes" in outputs else None
    predictions = []
    for row, p in enumerate(probs):
        class_id = int(ids[row]) if ids is not None else max(range(width), key=p.__getitem__)
        name = _text(classes[row]) if classes is not None else names[class_id]
        predictions.append(
            Prediction(
                class_name=name,
                score=p[class_id],
                probabilities=dict(zip(names, p, strict=True)),
                class_id=class_id,
                version=version,
            )
        )
    return predictions
