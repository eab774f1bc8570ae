"""TF Serving's REST API over the standard library (http.client, one keep-alive connection per
thread), for both clients: `--server http://HOST:PORT` (or https://)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

from .common import (
    IMAGES_INPUT,
    ModelMetadata,
    ModelRef,
    RawPrediction,
    ServingError,
    VersionStatus,
)

# HTTP code -> gRPC status name: the inverse of TF Serving's mapping (400 is also
# FAILED_PRECONDITION and OUT_OF_RANGE there; INVALID_ARGUMENT is what a client acts on)
HTTP_CODES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
    500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip


def is_rest_target(target: str) -> bool:
    return target.lower().startswith(("http://", "https://"))


def _b64(value: Any) -> Any:
    """Bytes anywhere in a nested value -> {"b64": ...}; the rest as it is."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_b64(v) for v in value]
    if hasattr(value, "tolist"):  # a numpy array, when the caller has numpy
        return _b64(value.tolist())
    return value


def _shape(info: dict) -> list[int] | None:
    shape = info.get("tensor_shape", {})
    if shape.get("unknown_rank"):
        return None
    return [int(d.get("size", 0)) for d in shape.get("dim", [])]


def signature_summary(signature_defs: dict) -> dict[str, dict]:
    """SignatureDefs as JSON (TF Serving's metadata answer) -> the signatures() summary."""
    return {
        name: {
            side: {
                key: {"dtype": info.get("dtype", "DT_INVALID"), "shape": _shape(info)}
                for key, info in sig.get(side, {}).items()
            }
            for side in ("inputs", "outputs")
        }
        for name, sig in signature_defs.items()
    }


class RestTransport:
    """Predict, status and metadata over TF Serving's REST API."""

    def __init__(
        self,
        url: str,
        timeout: float,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServingError("INVALID_ARGUMENT", f"not an http(s)://HOST:PORT URL: {url}")
        self.url = url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if self.https:
            self.context = ssl.create_default_context()
            if isinstance(root_certificates, bytes):
                self.context.load_verify_locations(cadata=root_certificates.decode())
            elif root_certificates is not None:
                self.context.load_verify_locations(cafile=os.fspath(root_certificates))
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    # -- the API ---------------------------------------------------------------------------

    def predict(
        self, model: ModelRef, inputs: dict[str, Any], output_filter: Sequence[str] = ()
    ) -> RawPrediction:
        """Columnar request ("inputs"), so any batch size (0 included) and shape works."""
        body: dict[str, Any] = {
            "signature_name": model.signature_name,
            "inputs": {name: _b64(value) for name, value in inputs.items()},
        }
        answer = self._request("POST", self._path(model) + ":predict", body)
        outputs = answer.get("outputs")
        if not isinstance(outputs, dict):  # a signature with one output answers it alone
            outputs = {output_filter[0] if output_filter else "output": outputs}
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        return RawPrediction(outputs, model.name, None, model.signature_name)

    def predict_images(self, model: ModelRef, images: list[bytes]) -> RawPrediction:
        return self.predict(model, {IMAGES_INPUT: images})

    def status(self, model: ModelRef) -> list[VersionStatus]:
        pinned = ModelRef(model.name, version=model.version)  # TF Serving ignores labels here
        answer = self._request("GET", self._path(pinned), None)
        return [
            VersionStatus(
                version=int(s.get("version", 0)),
                state=s.get("state", "UNKNOWN"),
                error_code=s.get("status", {}).get("error_code", "OK"),
                error_message=s.get("status", {}).get("error_message", ""),
            )
            for s in answer.get("model_version_status", [])
        ]

    def metadata(self, model: ModelRef) -> ModelMetadata:
        answer = self._request("GET", self._path(model) + "/metadata", None)
        spec = answer.get("model_spec", {})
        defs = answer.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        version = spec.get("version")
        return ModelMetadata(
            model_name=spec.get("name", model.name),
            version=int(version) if version not in (None, "") else None,
            signature_defs=defs,
            summary=signature_summary(defs),
        )

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    # -- HTTP ------------------------------------------------------------------------------

    def _path(self, model: ModelRef) -> str:
        path = f"{self.prefix}/v1/models/{urllib.parse.quote(model.name, safe='')}"
        if model.version is not None:
            path += f"/versions/{int(model.version)}"
        elif model.version_label:
            path += f"/labels/{urllib.parse.quote(model.version_label, safe='')}"
        return path

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self.https:
                connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.context
                )
            else:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _request(self, method: str, path: str, body: dict | None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):  # once more on a kept-alive connection the server closed
            connection = self._connection()
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
                break
            except TimeoutError:
                self._drop(connection)
                raise ServingError(
                    "DEADLINE_EXCEEDED",
                    f"TF Serving at {self.url} did not answer within {self.timeout:g} s",
                ) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop(connection)
                if attempt:
                    raise ServingError(
                        "UNAVAILABLE", f"cannot reach TF Serving at {self.url} (UNAVAILABLE)"
                    ) from None
            except OSError as e:
                self._drop(connection)
                reason = e.strerror or type(e).__name__
                raise ServingError(
                    "UNAVAILABLE", f"cannot reach TF Serving at {self.url} (UNAVAILABLE: {reason})"
                ) from None
        try:
            answer = json.loads(payload) if payload else {}
        except (ValueError, UnicodeDecodeError):
            answer = {"error": payload[:200].decode("utf-8", "replace")}
        if status != 200:
            message = answer.get("error", "") if isinstance(answer, dict) else str(answer)
            code = HTTP_CODES.get(status, "UNKNOWN")
            raise ServingError(code, f"TF Serving at {self.url}: {code}: {message}")
        return answer

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None
