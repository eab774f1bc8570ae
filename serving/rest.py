"""TF Serving's REST API on the gRPC server's event loop (`transfer-pipeline serve
--rest-api-port`), over the same models, version policy, labels, limits, timeouts and batching.

    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    {"instances": [...]} or
                                                                  {"inputs": ...}
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            GetModelStatus as JSON
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   GetModelMetadata as JSON

Request and answer formats follow TF Serving (`util/json_tensor.cc`): the row format
(`instances` -> `predictions`) and the columnar one (`inputs` -> `outputs`), `{"b64": ...}` for
bytes, values converted to the signature's input dtypes, string outputs whose name ends in
`_bytes` answered as `{"b64": ...}`, floats written in their shortest form. A JSON body becomes
the same PredictRequest the gRPC side takes (`PredictionService.predict`), so checks, limits,
batching and error messages are one code path; an error is `{"error": "<message>"}` with the HTTP
code TF Serving gives its gRPC status (`model_servers/http_server.cc`: INVALID_ARGUMENT and
FAILED_PRECONDITION 400, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNIMPLEMENTED 501, UNAVAILABLE
503, DEADLINE_EXCEEDED 504, ...). A body over --max-message-bytes is 413 and too many open
connections 503 (TF Serving has neither bound).

Hostile clients: the body is read on the event loop under the request's deadline
(--request-timeout-seconds, which also closes a connection that sends no complete request
within it), at most --max-message-bytes of it; its nesting is checked before it is parsed
(--rest-max-json-depth); parsing, conversion and the model run in the worker threads. At most
--rest-max-concurrent-requests predictions are in progress (the others wait for a slot within
their deadline) and --rest-max-connections connections are open.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from pipeline_components.core.errors import PipelineError
from serving.errors import StatusError, clip, invalid
from serving.tensors import dtype_name, shape_proto, to_ndarray

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics
    from serving.servables import ModelManager
    from serving.services import ModelService, PredictionService, ServerLimits

log = logging.getLogger(__name__)

# TF Serving's path patterns (model_servers/http_rest_api_util.cc), case-insensitive
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)

# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc)
_C = grpc.StatusCode
HTTP_STATUS = {
    _C.OK: 200, _C.CANCELLED: 499, _C.UNKNOWN: 500, _C.INVALID_ARGUMENT: 400,
    _C.DEADLINE_EXCEEDED: 504, _C.NOT_FOUND: 404, _C.ALREADY_EXISTS: 409,
    _C.PERMISSION_DENIED: 403, _C.RESOURCE_EXHAUSTED: 429, _C.FAILED_PRECONDITION: 400,
    _C.ABORTED: 409, _C.OUT_OF_RANGE: 400, _C.UNIMPLEMENTED: 501, _C.INTERNAL: 500,
    _C.UNAVAILABLE: 503, _C.DATA_LOSS: 500, _C.UNAUTHENTICATED: 401,
}  # fmt: skip
BODY_TOO_LARGE = 413
# the gRPC status an answer that no gRPC status produced is counted as (request_count's status)
HTTP_ONLY_STATUS = {
    BODY_TOO_LARGE: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
COUNTED_VERBS = ("predict", "classify", "regress")  # the REST `API` label; GETs have ""
BYTES_SUFFIX = "_bytes"  # TF Serving answers string outputs named *_bytes as {"b64": ...}
MAX_DEBUG_CHARS = 256  # of a JSON value echoed in an error (TF Serving's kMaxJsonDebugStringBytes)
SIGNATURE_DEF = "signature_def"


class HttpError(Exception):
    """An answer with an HTTP code that no gRPC status maps to (413, 503 for connections)."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


# -- routes ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Route:
    model: str
    version: int | None
    label: str | None
    verb: str  # predict, classify, regress, status, metadata

    def model_spec(self, signature_name: str | None = None) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model)
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        if signature_name is not None:
            spec.signature_name = signature_name
        return spec


def _unquote(text: str, what: str) -> str:
    try:
        return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise invalid(f"Failed to decode {what}: {clip(text)}") from None


def parse_route(method: str, path: str) -> Route:
    """An HTTP method and raw (percent-encoded) path -> Route; TF Serving's errors otherwise."""
    if not path.lower().startswith("/v1/"):
        raise StatusError(_C.NOT_FOUND, f"no such resource: {clip(path)} (the API is /v1/models)")
    match = None
    if method == "POST":
        match = PREDICT_PATH.fullmatch(path)
    elif method == "GET":
        match = STATUS_PATH.fullmatch(path)
    if match is None:
        raise invalid(f"Malformed request: {method} {clip(path)}")
    name, version_text, label, verb = match.groups()
    if not name:
        raise invalid("Missing model name in request.")
    version = None
    if version_text:
        version = int(version_text)
        if version >= 2**63:
            raise invalid(f"Failed to convert version: {clip(version_text)} to numeric.")
    return Route(
        model=_unquote(name, "model name"),
        version=version,
        label=_unquote(label, "model version label") if label else None,
        verb=(verb or "status").lower(),
    )


# -- JSON body -> tensors (TF Serving's FillPredictRequestFromJson) -------------------------

# dtype -> (TensorProto field, the JSON type check, TF Serving's type name)
_INTS = {
    types_pb2.DT_INT32: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT16: (-(2**31), 2**31 - 1),  # TF Serving reads these as int32 too
    types_pb2.DT_INT8: (-(2**31), 2**31 - 1),
    types_pb2.DT_UINT8: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT64: (-(2**63), 2**63 - 1),
    types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_FIELDS = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val", types_pb2.DT_STRING: "string_val",
}  # fmt: skip


def debug_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return clip(text, MAX_DEBUG_CHARS)


_JSON_TYPES = (
    (bool, "BOOL"), (int, "NUMBER"), (float, "NUMBER"), (str, "STRING"), (list, "ARRAY"),
    (dict, "OBJECT"), (type(None), "NULL"),
)  # fmt: skip


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "UNKNOWN")


def _type_error(value: Any, dtype: int) -> StatusError:
    return invalid(
        f"JSON Value: {debug_text(value)} Type: {_json_type(value)} is not of expected type: "
        f"{dtype_name(dtype).removeprefix('DT_').lower()}"
    )


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value: Any) -> bytes:
    if not is_b64(value):
        raise invalid(f"JSON Value: {debug_text(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _scalar(value: Any, dtype: int) -> Any:
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
        if isinstance(value, dict):
            return decode_b64(value)
        raise _type_error(value, dtype)
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if type(value) in (int, float):
            return float(value)
        raise _type_error(value, dtype)
    if dtype == types_pb2.DT_BOOL:
        if type(value) is bool:
            return value
        raise _type_error(value, dtype)
    if dtype in _INTS:
        low, high = _INTS[dtype]
        if type(value) is int and low <= value <= high:
            return value
        raise _type_error(value, dtype)
    raise StatusError(
        _C.UNIMPLEMENTED,
        f"Conversion of JSON Value: {debug_text(value)} to type: {dtype_name(dtype)}",
    )


def dense_shape(value: Any) -> list[int]:
    """The shape of a (dense) JSON value, following the first element of each list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(
                f"JSON Value: {debug_text(value)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {len(shape)}"
            )
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
            f"size: {shape[level]}"
        )
    if level == len(shape) - 1 and not any(isinstance(v, list) for v in value):
        out.extend(_scalar(v, dtype) for v in value)  # the innermost lists, in one go
        return
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def json_values(value: Any, dtype: int) -> tuple[list[int], list]:
    """A JSON value -> (its dense shape, its values in row-major order, converted to dtype)."""
    shape = dense_shape(value)
    values: list = []
    _fill(value, 0, shape, dtype, values)
    return shape, values


def tensor_proto(dtype: int, shape: list[int], values: list) -> tensor_pb2.TensorProto:
    field = _FIELDS.get(dtype)
    if field is None:  # _scalar has refused anything else already, unless there is no value
        raise StatusError(_C.UNIMPLEMENTED, f"Conversion of JSON to type: {dtype_name(dtype)}")
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(shape))
    getattr(proto, field).extend(values)
    return proto


def _instances(items: list, dtypes: dict[str, int]) -> dict[str, tensor_pb2.TensorProto]:
    """The row format: each element is one row of every input (an object keyed by input when
    the signature has several)."""
    objects = isinstance(items[0], dict) and not is_b64(items[0])
    if not objects and len(dtypes) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    shapes: dict[str, list[int]] = {}
    values: dict[str, list] = {name: [] for name in dtypes}
    for row, item in enumerate(items):
        if objects != (isinstance(item, dict) and not is_b64(item)):
            kind = "object but got list" if objects else "value/list but got object"
            raise invalid(f"Expecting {kind} at item {row} of input list")
        parts = item if objects else {next(iter(dtypes)): item}
        for name, value in parts.items():
            where = f"Failed to process element: {row}" + (f" key: {clip(name)}" if objects else "")
            if name not in dtypes:
                raise invalid(
                    f"{where} of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
                    f"have named input: {clip(name)}"
                )
            try:
                shape, row_values = json_values(value, dtypes[name])
            except StatusError as e:
                raise StatusError(
                    e.code, f"{where} of 'instances' list. Error: {e.code.name}: {e.message}"
                ) from None
            if shapes.setdefault(name, shape) != shape:
                raise invalid(f"Expecting shape {_dims(shapes[name])} but got: {_dims(shape)}")
            values[name].extend(row_values)
        if objects and set(parts) != set(dtypes):
            raise invalid(
                f"Failed to process element: {row} of 'instances' list. JSON object: "
                f"{debug_text(item)} keys must be equal to: {','.join(sorted(dtypes))}"
            )
    return {
        name: tensor_proto(dtype, [len(items), *shapes[name]], values[name])
        for name, dtype in dtypes.items()
    }


def _dims(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _inputs(value: Any, dtypes: dict[str, int]) -> dict[str, tensor_pb2.TensorProto]:
    """The columnar format: one value per input (the value itself when there is one input)."""
    if not isinstance(value, dict) or is_b64(value):
        if len(dtypes) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        value = {next(iter(dtypes)): value}
    tensors = {}
    for name, dtype in dtypes.items():
        if name not in value:
            raise invalid(f"Missing named input: {clip(name)} in 'inputs' object.")
        shape, values = json_values(value[name], dtype)
        tensors[name] = tensor_proto(dtype, shape, values)
    return tensors


def request_format(doc: dict) -> str:
    """ "row" (instances) or "columnar" (inputs); TF Serving's errors for anything else."""
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            f"JSON Value: {debug_text(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist"
        )
    if has_instances:
        if not isinstance(doc["instances"], list):
            raise invalid(
                f"JSON Value: {debug_text(doc)} Expecting 'instances' to be an list/array"
            )
        if not doc["instances"]:
            raise invalid(f"JSON Value: {debug_text(doc)} No values in 'instances' array")
        return "row"
    if has_inputs:
        return "columnar"
    raise invalid("Missing 'inputs' or 'instances' key")


def request_tensors(doc: dict, dtypes: dict[str, int]) -> tuple[dict, str]:
    fmt = request_format(doc)
    if fmt == "row":
        return _instances(doc["instances"], dtypes), fmt
    return _inputs(doc["inputs"], dtypes), fmt


# -- nesting and parsing --------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1


def json_depth(body: bytes, limit: int) -> int:
    """How deep the body's arrays and objects nest (strings skipped), counted without parsing;
    stops counting once over `limit`."""
    stripped = _STRING.sub(b'""', body)
    depth, deepest, chunk = 0, 0, 1 << 20
    for start in range(0, len(stripped), chunk):
        codes = np.frombuffer(stripped, np.uint8, min(chunk, len(stripped) - start), start)
        running = np.cumsum(_DEPTH_STEP[codes], dtype=np.int32) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
        if deepest > limit:
            break
    return deepest


def parse_body(body: bytes, max_depth: int) -> dict:
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    depth = json_depth(body, max_depth)
    if depth > max_depth:
        raise invalid(
            f"JSON Parse error: nested deeper than {max_depth} levels (--rest-max-json-depth)"
        )
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" at offset: {e.pos}" if isinstance(e, json.JSONDecodeError) else ""
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise invalid(f"JSON Parse error: {reason}{where}") from None
    except RecursionError:  # cannot happen under max_depth; kept as a guard
        raise invalid("JSON Parse error: nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {debug_text(doc)} Is not object")
    return doc


# -- tensors -> JSON ------------------------------------------------------------------------


def output_json(array: np.ndarray, name: str) -> Any:
    """One output as TF Serving writes it: nested lists; floats in their shortest form."""
    if array.dtype == object:
        as_bytes = name.endswith(BYTES_SUFFIX)
        items = np.empty(array.size, dtype=object)
        items[:] = [
            {"b64": base64.b64encode(bytes(x)).decode()}
            if as_bytes
            else bytes(x).decode("utf-8", "replace")
            for x in array.ravel()
        ]
        return items.reshape(array.shape).tolist()
    if array.dtype == np.float32:  # 0.2, not 0.20000000298023224
        return array.astype(str).astype(np.float64).tolist()
    return array.tolist()


def response_json(outputs: dict[str, np.ndarray], fmt: str) -> dict:
    names = sorted(outputs)
    values = {name: output_json(outputs[name], name) for name in names}
    if fmt == "columnar":
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    rows = {outputs[name].shape[0] if outputs[name].ndim else -1 for name in names}
    if len(rows) != 1 or -1 in rows:
        raise invalid(
            "Tensor name: outputs have inconsistent batch sizes "
            f"{ {n: list(outputs[n].shape) for n in names} }; use the 'inputs' format"
        )
    count = rows.pop()
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    return {"predictions": [{name: values[name][i] for name in names} for i in range(count)]}


def _to_json(message: Any, **options: bool) -> dict:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True, **options)


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict:
    return _to_json(response)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    """TF Serving's layout: {"model_spec": ..., "metadata": {"signature_def": ...}}, proto
    field names kept."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF].Unpack(signature_map)
    return {
        "model_spec": _to_json(response.model_spec, preserving_proto_field_name=True),
        "metadata": {SIGNATURE_DEF: _to_json(signature_map, preserving_proto_field_name=True)},
    }


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8", "replace")


def json_bytes(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "replace")


# -- the HTTP server ------------------------------------------------------------------------

RunBlocking = Callable[[Callable[[], bytes], float], Awaitable[bytes]]


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes: a connection over --rest-max-connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        body = error_body(f"more than {self.limit} open connections (--rest-max-connections)")
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        assert isinstance(transport, asyncio.Transport)
        transport.write(head.encode() + body)
        transport.close()


class RestApi:
    """The REST endpoints over the gRPC side's services; runs on its event loop."""

    def __init__(
        self,
        prediction: PredictionService,
        models: ModelService,
        manager: ModelManager,
        limits: ServerLimits,
        run_blocking: RunBlocking,
    ) -> None:
        self.prediction, self.models, self.manager = prediction, models, manager
        self.limits = limits
        self.run_blocking = run_blocking
        self._slots = asyncio.Semaphore(limits.rest_max_concurrent_requests)
        self._web = web.Server(
            self._handle,
            keepalive_timeout=limits.request_timeout_s,  # also: a request must arrive in time
            access_log=None,
        )
        self._listener: asyncio.Server | None = None
        self._metrics: ServingMetrics | None = None
        self._metrics_path: str | None = None

    def serve_metrics(self, metrics: ServingMetrics, path: str | None) -> None:
        """Count requests into `metrics` (TF Serving's request_count, request_latency), and
        serve the Prometheus page at `path` (None: not served, as TF Serving without
        monitoring.config)."""
        self._metrics, self._metrics_path = metrics, path

    async def start(self, host: str, port: int) -> int:
        limit = self.limits.rest_max_connections

        def connection() -> asyncio.Protocol:
            if len(self._web.connections) >= limit:
                return _Refuse(limit)
            return self._web()

        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(
                connection, host, port, reuse_address=True, backlog=128
            )
        except OSError as e:
            raise PipelineError(
                f"cannot listen on {host}:{port} for the REST API ({e.strerror or e})"
            ) from None
        return int(self._listener.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections, let requests finish within `grace` s."""
        if self._listener is not None:
            self._listener.close()
        self._web.pre_shutdown()
        await self._web.shutdown(grace)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        deadline = started + self.limits.request_timeout_s
        path = request.raw_path.split("?", 1)[0]
        if self._metrics_path is not None and path == self._metrics_path:
            return await self._metrics_page()
        close = False
        seen: dict[str, Any] = {}  # what the request turned out to be: model, api, version, ...
        try:
            route = parse_route(request.method, path)
            seen.update(model=route.model, api=route.verb if route.verb in COUNTED_VERBS else "")
            if route.verb == "predict":
                body = await self._predict(request, route, deadline, seen)
            elif route.verb in ("classify", "regress"):
                raise StatusError(
                    _C.UNIMPLEMENTED,
                    f"{route.verb} is not implemented by this server: the models export "
                    "predict signatures only; use :predict",
                )
            else:
                body = json_bytes(self._status_or_metadata(route))
            self._observe(path, seen, "OK", started)
            return web.Response(body=body, content_type="application/json")
        except StatusError as e:
            status, message, code = HTTP_STATUS.get(e.code, 500), e.message, e.code.name
            level = logging.ERROR if status == 500 else logging.WARNING
            log.log(level, "REST %s %s: %s: %s", request.method, clip(path), e.code.name, message)
        except HttpError as e:
            status, message, close = e.status, e.message, e.close
            code = HTTP_ONLY_STATUS.get(status, "UNKNOWN")
            log.warning("REST %s %s: HTTP %d: %s", request.method, clip(path), status, message)
        except Exception as e:  # a bug: say what, once, in one line
            status, code = 500, "INTERNAL"
            message = f"internal error: {type(e).__name__}: {clip(' '.join(str(e).split()), 500)}"
            log.error("REST %s %s: %s", request.method, clip(path), message)
        self._observe(path, seen, code, started)
        response = web.Response(body=error_body(message), status=status)
        response.content_type = "application/json"
        if close:
            response.force_close()
        return response

    def _observe(self, path: str, seen: dict[str, Any], status: str, started: float) -> None:
        """TF Serving counts every request its /v1/ dispatcher takes (http_server.cc)."""
        if self._metrics is None or not path.lower().startswith("/v1/"):
            return
        self._metrics.request(
            "REST",
            seen.get("api", ""),
            seen.get("model", ""),
            status,
            time.monotonic() - started,
            seen.get("version"),
            seen.get("signature", ""),
        )

    async def _metrics_page(self) -> web.Response:
        """The Prometheus page, rendered in the metrics thread within the request deadline."""
        from serving.metrics import CONTENT_TYPE

        assert self._metrics is not None
        future = asyncio.wrap_future(self._metrics.render_in_thread())
        try:
            page = await asyncio.wait_for(future, self.limits.request_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            body = error_body("the metrics page was not ready in time (--request-timeout-seconds)")
            return web.Response(body=body, status=504, content_type="application/json")
        return web.Response(body=page, headers={"Content-Type": CONTENT_TYPE})

    def _status_or_metadata(self, route: Route) -> dict:
        if route.verb == "metadata":
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=route.model_spec(), metadata_field=[SIGNATURE_DEF]
            )
            return metadata_json(self.prediction.metadata(request))
        status_request = get_model_status_pb2.GetModelStatusRequest(model_spec=route.model_spec())
        return status_json(self.models.status(status_request))

    async def _predict(
        self, request: web.BaseRequest, route: Route, deadline: float, seen: dict[str, Any]
    ) -> bytes:
        try:
            await asyncio.wait_for(self._slots.acquire(), _left(deadline))
        except (asyncio.TimeoutError, TimeoutError):
            raise _deadline(self.limits.request_timeout_s, "a free request slot") from None
        try:
            body = await self._read_body(request, deadline)
            left = _left(deadline)
            try:
                return await asyncio.wait_for(
                    self.run_blocking(lambda: self.predict_json(route, body, left, seen), left),
                    left,
                )
            except (asyncio.TimeoutError, TimeoutError):
                raise _deadline(self.limits.request_timeout_s, "the answer") from None
        finally:
            self._slots.release()

    async def _read_body(self, request: web.BaseRequest, deadline: float) -> bytes:
        limit = self.limits.max_message_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _too_large(declared, limit)
        chunks, size = [], 0
        try:
            while chunk := await asyncio.wait_for(request.content.readany(), _left(deadline)):
                size += len(chunk)
                if size > limit:
                    raise _too_large(size, limit)
                chunks.append(chunk)
        except (asyncio.TimeoutError, TimeoutError):
            raise HttpError(
                HTTP_STATUS[_C.DEADLINE_EXCEEDED],
                f"deadline of {self.limits.request_timeout_s:g} s exceeded waiting for the "
                "request body (--request-timeout-seconds)",
                close=True,
            ) from None
        return b"".join(chunks)

    def predict_json(
        self, route: Route, body: bytes, timeout: float, seen: dict[str, Any] | None = None
    ) -> bytes:
        """A :predict body -> the JSON answer (in a worker thread: parsing and the model);
        `seen` gets the version and signature that answered."""
        doc = parse_body(body, self.limits.rest_max_json_depth)
        signature_name = doc.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid(
                f"JSON Value: {debug_text(doc)} not formatted correctly. 'signature_name' key "
                "must be a string value."
            )
        spec = route.model_spec(signature_name)
        servable = self.manager.resolve(spec)
        signature = servable.signature(signature_name)
        tensors, fmt = request_tensors(doc, signature.input_dtypes)
        predict_request = predict_pb2.PredictRequest(model_spec=spec)
        for name, proto in tensors.items():
            predict_request.inputs[name].CopyFrom(proto)
        response = self.prediction.predict(predict_request, timeout)
        if seen is not None:
            seen.update(
                version=response.model_spec.version.value,
                signature=response.model_spec.signature_name,
            )
        outputs = {name: to_ndarray(t, name) for name, t in response.outputs.items()}
        return json_bytes(response_json(outputs, fmt))


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _deadline(seconds: float, what: str) -> StatusError:
    return StatusError(
        _C.DEADLINE_EXCEEDED,
        f"deadline of {seconds:g} s exceeded waiting for {what} (--request-timeout-seconds)",
    )


def _too_large(size: int, limit: int) -> HttpError:
    return HttpError(
        BODY_TOO_LARGE,
        f"request body of {size} bytes or more is over the limit of {limit} bytes "
        "(--max-message-bytes)",
        close=True,
    )
