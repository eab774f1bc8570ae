"""What `transfer-pipeline serve` answers, apart from how it is asked: TF Serving's
PredictionService and ModelService as plain methods (request proto -> response proto, or
StatusError) over a ModelManager, and the limits one client may take (ServerLimits). The gRPC
transport (serving.server) and the REST one (serving.rest) both call these, so checks, limits
and answers are the same over either."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
)

from pipeline_components.core.errors import PipelineError
from serving.errors import StatusError, clip, invalid
from serving.tensors import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_STRING_ELEMENTS,
    RequestBudget,
    to_tensor_proto,
)

if TYPE_CHECKING:
    from google.protobuf import message
    from tensorflow_serving.apis import model_pb2

    from serving.metrics import ServingMetrics
    from serving.servables import ModelManager

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SIGNATURE_DEF = "signature_def"


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one client may take from the server; each is a `transfer-pipeline serve` flag."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # --max-message-bytes
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # --max-request-bytes
    max_string_elements: int = DEFAULT_MAX_STRING_ELEMENTS  # --max-string-elements
    request_timeout_s: float = 30.0  # --request-timeout-seconds
    max_concurrent_rpcs: int = 256  # --max-concurrent-rpcs
    max_concurrent_streams: int = 100  # --max-concurrent-streams (per connection)
    keepalive_time_s: float = 60.0  # --keepalive-time-seconds
    keepalive_timeout_s: float = 20.0  # --keepalive-timeout-seconds
    max_connection_idle_s: float = 300.0  # --max-connection-idle-seconds
    max_connection_age_s: float = 1800.0  # --max-connection-age-seconds
    # REST (serving.rest); its body limit is max_message_bytes, its deadline request_timeout_s
    rest_max_json_depth: int = 32  # --rest-max-json-depth
    rest_max_concurrent_requests: int = 256  # --rest-max-concurrent-requests
    rest_max_connections: int = 1024  # --rest-max-connections

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                flag = (
                    field.name.replace("_s", "_seconds")
                    if field.name.endswith("_s")
                    else field.name
                )
                raise PipelineError(f"--{flag.replace('_', '-')} must be > 0")

    def grpc_options(self) -> list[tuple[str, int]]:
        ms = lambda seconds: int(seconds * 1000)  # noqa: E731
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a silent share
            # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a client queues calls over it (and one
            # that ignores it gets REFUSED_STREAM for the extra streams)
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            # gRPC's overload protection (on by default) also refuses a new stream while more
            # than max_concurrent_streams are still *allocated*: streams already answered but
            # not yet freed count, so a client that keeps 100 calls in flight got a share
            # refused (UNAVAILABLE "Stream removed"). Off: the limit is the HTTP/2 one, which
            # clients honour; the server-wide bound is max_concurrent_rpcs.
            ("grpc.http.overload_protection", 0),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle_s)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(self.request_timeout_s)),
        ]


def _model_spec(
    target: model_pb2.ModelSpec, name: str, version: int, signature_name: str | None = None
) -> None:
    target.name = name
    target.version.value = version
    if signature_name is not None:
        target.signature_name = signature_name


class PredictionService:
    """tensorflow.serving.PredictionService as plain methods: request -> response, or
    StatusError. `Server` calls them (Predict in a worker thread, the others on the loop)."""

    def __init__(
        self,
        manager: ModelManager,
        limits: ServerLimits | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.manager = manager
        self.limits = limits or ServerLimits()
        self.metrics = metrics

    def predict(
        self, request: predict_pb2.PredictRequest, timeout: float | None = None
    ) -> predict_pb2.PredictResponse:
        servable = self.manager.resolve(request.model_spec)
        signature = servable.signature(request.model_spec.signature_name)
        wanted = signature.output_filter(list(request.output_filter))
        budget = RequestBudget(self.limits.max_request_bytes, self.limits.max_string_elements)
        arrays = signature.decode(request.inputs, budget)
        started = time.monotonic()
        outputs = servable.run(signature, arrays, self.manager.scheduler, timeout)
        if self.metrics is not None:  # TF Serving's runtime_latency: the run, queue included
            self.metrics.runtime(servable.name, "Predict", time.monotonic() - started)
        response = predict_pb2.PredictResponse()
        _model_spec(response.model_spec, servable.name, servable.version, signature.name)
        for name in wanted:
            response.outputs[name].CopyFrom(to_tensor_proto(outputs[name]))
        return response

    def metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, timeout: float | None = None
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise invalid(f"Metadata field {clip(field)} is not supported")
        servable = self.manager.resolve(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _model_spec(response.model_spec, servable.name, servable.version)
        response.metadata[SIGNATURE_DEF].Pack(signature_map)
        return response

    @staticmethod
    def unimplemented(method: str) -> Callable[[message.Message, float | None], NoReturn]:
        def fail(request: message.Message, timeout: float | None = None) -> NoReturn:
            raise StatusError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not implemented by this server: the models export predict "
                "signatures only; use Predict",
            )

        return fail


class ModelService:
    """tensorflow.serving.ModelService as plain methods (see PredictionService)."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def status(
        self, request: get_model_status_pb2.GetModelStatusRequest, timeout: float | None = None
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state in self.manager.version_states(spec.name, version):
            entry = response.model_version_status.add(version=number, state=state.state)
            entry.status.error_code = state.error_code
            entry.status.error_message = state.error_message
        return response

    @staticmethod
    def reload_config(
        request: model_management_pb2.ReloadConfigRequest, timeout: float | None = None
    ) -> NoReturn:
        raise StatusError(
            grpc.StatusCode.UNIMPLEMENTED,
            "HandleReloadConfigRequest is not implemented by this server; restart it with "
            "the new --model-config-file",
        )
