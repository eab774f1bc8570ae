"""PredictionClient: one model on one TF Serving endpoint, over gRPC (`HOST:PORT`) or REST
(`http://HOST:PORT`, `https://...`), with long lists split into requests that fit the server."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .common import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SIGNATURE,
    PER_IMAGE_CODES,
    ClientError,
    ModelMetadata,
    ModelRef,
    Prediction,
    PredictionFailure,
    RawPrediction,
    ServingError,
    VersionStatus,
    predictions_from,
    read_image_file,
    read_labels,
)
from .rest import RestTransport, is_rest_target

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (images done, images in all)
Result = Prediction | PredictionFailure


def error_code(error: Exception) -> str:
    """The gRPC status name of a client error (either client's ServingError), else ""."""
    code = getattr(error, "code", "")
    return str(getattr(code, "name", code))


class PredictionClient:
    """Predict / GetModelMetadata / GetModelStatus against one model on one TF Serving endpoint.

    target: `HOST:PORT` is gRPC, `http://HOST:PORT` (or https://) is TF Serving's REST API.
    version or version_label pins the model version (default: the latest the server has);
    timeout is each call's deadline in seconds; UNAVAILABLE (server down, restarting, batch
    queue full) is retried `retries` times with exponential backoff, nothing else is.
    labels (a list or a labels.txt path) names the probability columns; without it they are
    keyed by class index ("0", "1", ...), since TF Serving's API does not carry label lists.
    tls / root_certificates (PEM bytes or path) switch to TLS (https:// for REST).
    A list of images is sent as requests of at most max_batch_size images (the server's batching
    max_batch_size), max_concurrency of them at once, answers in input order.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        signature_name: str = DEFAULT_SIGNATURE,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float = 10.0,
        tls: bool = False,
        root_certificates: bytes | str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: int = 3,
        backoff_s: float = 0.1,
        labels: Sequence[str] | str | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        if version is not None and version_label:
            raise self._usage_error("give a model version or a version label, not both")
        if max_batch_size < 1 or max_concurrency < 1:
            raise self._usage_error("max_batch_size and max_concurrency must be >= 1")
        self.target = target
        self.model_name = model_name
        self.signature_name = signature_name
        self.version = version
        self.version_label = version_label
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_concurrency
        self.labels = self._read_labels(labels)
        self.rest = is_rest_target(target)
        if self.rest:
            self.transport: Any = RestTransport(target, timeout, root_certificates)
        else:
            self.transport = self._grpc_transport(tls, root_certificates, max_message_bytes)

    # -- what the TensorFlow client (serving/client.py) replaces -----------------------------

    def _grpc_transport(
        self, tls: bool, root_certificates: bytes | str | None, max_message_bytes: int
    ) -> Any:
        from .grpc_lite import GrpcLiteTransport

        return GrpcLiteTransport(
            self.target, self.timeout, tls, root_certificates, max_message_bytes
        )

    @staticmethod
    def _usage_error(message: str) -> Exception:
        return ClientError(message)

    @staticmethod
    def _read_labels(labels: Sequence[str] | str | None) -> list[str] | None:
        return read_labels(labels)

    @staticmethod
    def read_image(image: Any) -> bytes:
        return read_image_file(image)

    def _error(self, error: ServingError) -> Exception:
        return error

    # -- public API ------------------------------------------------------------------------

    @property
    def model(self) -> ModelRef:
        return ModelRef(self.model_name, self.signature_name, self.version, self.version_label)

    def predict(self, images: Sequence | str | bytes | os.PathLike) -> list[Prediction]:
        """Classify images (paths or encoded bytes), in order; raises the first image's error."""
        results = self.predict_each(images)
        for result in results:
            if isinstance(result, PredictionFailure):
                raise result.error
        return [r for r in results if isinstance(r, Prediction)]

    def predict_each(
        self, images: Sequence | str | bytes | os.PathLike, progress: Progress | None = None
    ) -> list[Result]:
        """Classify images, one result per image in order: a Prediction, or a PredictionFailure
        for an image that cannot be read or that the server refuses (the request it was in is
        split to find it, so the others still get answers). An error of the whole call (server
        unreachable, unknown model) is raised."""
        if isinstance(images, str | bytes | os.PathLike):
            images = [images]
        if not images:
            raise self._usage_error("no images to predict")
        results: list[Result | None] = [None] * len(images)
        readable: list[tuple[int, bytes]] = []
        for i, image in enumerate(images):
            try:
                readable.append((i, self.read_image(image)))
            except Exception as e:
                if isinstance(image, bytes | bytearray | memoryview):
                    raise
                results[i] = PredictionFailure(e)
        chunks = [
            readable[start : start + self.max_batch_size]
            for start in range(0, len(readable), self.max_batch_size)
        ]
        done = len(images) - len(readable)
        workers = min(self.max_concurrency, len(chunks)) or 1
        with concurrent.futures.ThreadPoolExecutor(workers, "predict") as pool:
            futures = [pool.submit(self._predict_chunk, chunk) for chunk in chunks]
            try:
                for chunk, future in zip(chunks, futures, strict=True):
                    for (i, _), result in zip(chunk, future.result(), strict=True):
                        results[i] = result
                    done += len(chunk)
                    if progress is not None:
                        progress(done, len(images))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return [r for r in results if r is not None]

    def predict_raw(
        self, inputs: Mapping[str, Any], output_filter: Sequence[str] = ()
    ) -> RawPrediction:
        """Send any inputs (per transport: nested lists, bytes; TensorProtos for gRPC with the
        TensorFlow client) as one request."""
        return self._call(self.transport.predict, self.model, dict(inputs), tuple(output_filter))

    def metadata(self) -> ModelMetadata:
        return self._call(self.transport.metadata, self.model)

    def status(self) -> list[VersionStatus]:
        """GetModelStatus: every version the server knows of (or the pinned one)."""
        return self._call(self.transport.status, self.model)

    def wait_until_available(self, timeout: float = 60.0, poll_s: float = 0.2) -> int:
        """Block until a version is AVAILABLE (the pinned one, if any); return its number."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                statuses = self.status()
                available = [s.version for s in statuses if s.state == "AVAILABLE"]
                if available:
                    return max(available)
                last = "; ".join(f"version {s.version}: {s.state} {s.error_message}".strip()
                                 for s in statuses)  # fmt: skip
            except Exception as e:
                if error_code(e) not in ("UNAVAILABLE", "NOT_FOUND"):
                    raise
                last = str(e)
            if time.monotonic() >= deadline:
                raise self._error(
                    ServingError(
                        "DEADLINE_EXCEEDED",
                        f"model {self.model_name} not AVAILABLE at {self.target} after "
                        f"{timeout:g} s ({last})",
                    )
                )
            time.sleep(poll_s)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _predict_chunk(self, chunk: list[tuple[int, bytes]], probed: bool = False) -> list[Result]:
        """One request; on an error that one image may cause, the halves again (so a bad
        image costs about 2 log2(n) extra requests, and the others get their answers)."""
        images = [data for _, data in chunk]
        try:
            raw = self._call(self.transport.predict_images, self.model, images)
            where = f"model {self.model_name} signature {self.signature_name}"
            return list(predictions_from(raw.outputs, len(images), self.labels, raw.version, where))
        except Exception as e:
            if error_code(e) not in PER_IMAGE_CODES:
                raise
            if not probed and self._fails_without_images(e):
                raise  # about the request, not an image: an unknown label, signature, ...
            if len(chunk) == 1:
                return [PredictionFailure(e)]
        half = len(chunk) // 2
        return self._predict_chunk(chunk[:half], True) + self._predict_chunk(chunk[half:], True)

    def _fails_without_images(self, error: Exception) -> bool:
        """Does a request of 0 images fail the same way? (Then no image is at fault.)"""
        try:
            self._call(self.transport.predict_images, self.model, [])
        except Exception as probe:
            return error_code(probe) == error_code(error) and str(probe) == str(error)
        return False

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(*args)
            except ServingError as e:
                if e.code != "UNAVAILABLE" or attempt == self.retries:
                    raise self._error(e) from None
                log.debug("UNAVAILABLE from %s, retrying in %.2f s", self.target, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")
