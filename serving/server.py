"""`transfer-pipeline serve`: a TF-Serving-compatible gRPC server over a model base path.

Speaks tensorflow.serving.PredictionService (Predict, GetModelMetadata; Classify, Regress and
MultiInference answer UNIMPLEMENTED), tensorflow.serving.ModelService (GetModelStatus) and
grpc.health.v1.Health over `<base_path>/<version>/` SavedModels, with TF Serving's status codes.
Flags mirror tensorflow_model_server's (`--model_base_path` -> `--model-base-path`, ...).

    transfer-pipeline serve --model-base-path serving_models/cats_dogs --model-name cats_dogs
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from serving.batching import BatchingParameters, BatchScheduler, load_batching_parameters
from serving.errors import StatusError, invalid
from serving.model_config import ModelConfig, load_model_config_file
from serving.servables import ModelManager, configure_tensorflow
from serving.tensors import to_tensor_proto

log = logging.getLogger(__name__)

DEFAULT_PORT = 8500
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_THREADS = max(16, 4 * (os.cpu_count() or 1))
SIGNATURE_DEF = "signature_def"
SERVICE_NAMES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


def _answer(context, method: str, model: str, response_cls, fn):
    """Run fn; a StatusError becomes that gRPC status, anything else INTERNAL. Never raises."""
    try:
        return fn()
    except StatusError as e:
        code, message = e.code, e.message
        log.warning("%s model=%r: %s: %s", method, model, code.name, message)
    except Exception as e:
        code = grpc.StatusCode.INTERNAL
        message = f"internal error: {type(e).__name__}: {' '.join(str(e).split())[:500]}"
        log.error("%s model=%r: INTERNAL: %s", method, model, message)
    context.set_code(code)
    context.set_details(message)
    return response_cls()


def _model_spec(target, name: str, version: int, signature_name: str | None = None) -> None:
    target.name = name
    target.version.value = version
    if signature_name is not None:
        target.signature_name = signature_name


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        return _answer(
            context,
            "Predict",
            request.model_spec.name,
            predict_pb2.PredictResponse,
            lambda: self.predict(request, context.time_remaining()),
        )

    def predict(self, request, timeout: float | None = None) -> predict_pb2.PredictResponse:
        servable = self.manager.resolve(request.model_spec)
        signature = servable.signature(request.model_spec.signature_name)
        wanted = signature.output_filter(list(request.output_filter))
        arrays = signature.decode(request.inputs)
        outputs = servable.run(signature, arrays, self.manager.scheduler, timeout)
        response = predict_pb2.PredictResponse()
        _model_spec(response.model_spec, servable.name, servable.version, signature.name)
        for name in wanted:
            response.outputs[name].CopyFrom(to_tensor_proto(outputs[name]))
        return response

    def GetModelMetadata(self, request, context):
        return _answer(
            context,
            "GetModelMetadata",
            request.model_spec.name,
            get_model_metadata_pb2.GetModelMetadataResponse,
            lambda: self.metadata(request),
        )

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise invalid(f"Metadata field {field} is not supported")
        servable = self.manager.resolve(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _model_spec(response.model_spec, servable.name, servable.version)
        response.metadata[SIGNATURE_DEF].Pack(signature_map)
        return response

    def _unimplemented(self, method: str, model: str, context, response_cls):
        def fail():
            raise StatusError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not implemented by this server: the models export predict "
                "signatures only; use Predict",
            )

        return _answer(context, method, model, response_cls, fail)

    def Classify(self, request, context):
        return self._unimplemented(
            "Classify", request.model_spec.name, context, classification_pb2.ClassificationResponse
        )

    def Regress(self, request, context):
        return self._unimplemented(
            "Regress", request.model_spec.name, context, regression_pb2.RegressionResponse
        )

    def MultiInference(self, request, context):
        model = request.tasks[0].model_spec.name if request.tasks else ""
        return self._unimplemented(
            "MultiInference", model, context, inference_pb2.MultiInferenceResponse
        )


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        return _answer(
            context,
            "GetModelStatus",
            request.model_spec.name,
            get_model_status_pb2.GetModelStatusResponse,
            lambda: self.status(request),
        )

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
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

    def HandleReloadConfigRequest(self, request, context):
        from tensorflow_serving.apis import model_management_pb2

        def fail():
            raise StatusError(
                grpc.StatusCode.UNIMPLEMENTED,
                "HandleReloadConfigRequest is not implemented by this server; restart it with "
                "the new --model-config-file",
            )

        return _answer(
            context,
            "HandleReloadConfigRequest",
            "",
            model_management_pb2.ReloadConfigResponse,
            fail,
        )


def _update_health(servicer: health.HealthServicer, manager: ModelManager) -> None:
    """Each model name SERVING once one of its versions is loaded; the server once all are."""
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    everything = True
    for name in manager.models:
        ok = manager.available(name)
        everything &= ok
        servicer.set(name, serving if ok else not_serving)
    for name in SERVICE_NAMES:
        servicer.set(name, serving if everything else not_serving)


@dataclasses.dataclass
class ServerHandle:
    """A running server: `.port`, `.target`, `.stop(grace)`; a context manager."""

    server: grpc.Server
    host: str
    port: int
    manager: ModelManager
    health: health.HealthServicer
    prediction_service: PredictionService

    @property
    def target(self) -> str:
        return f"{_host_for_url(self.host)}:{self.port}"

    @property
    def serving(self) -> bool:
        return all(self.manager.available(name) for name in self.manager.models)

    def wait_until_serving(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.serving:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, grace: float | None = 10.0) -> None:
        """Refuse new requests, let in-flight ones finish (up to `grace` s), then shut down."""
        self.health.enter_graceful_shutdown()
        self.manager.stop()
        scheduler = self.manager.scheduler
        if scheduler is not None:
            scheduler.flush()  # queued batches run now instead of waiting for their timeout
        self.server.stop(grace).wait()
        if scheduler is not None:
            scheduler.stop()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace=1.0)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _models(model_base_path, model_name, model_config_file, models) -> list[ModelConfig]:
    given = [x is not None for x in (model_base_path, model_config_file, models)]
    if sum(given) != 1:
        raise PipelineError("give exactly one of --model-base-path or --model-config-file")
    if models is not None:
        configs = list(models)
    elif model_config_file is not None:
        configs = load_model_config_file(model_config_file)
    else:
        configs = [ModelConfig(name=model_name, base_path=str(model_base_path))]
    for config in configs:
        if not fsutil.isdir(config.base_path):
            raise PipelineError(
                f"model base path {config.base_path} (model {config.name}) does not exist"
            )
    return configs


def start_server(
    model_base_path: str | None = None,
    model_name: str = "default",
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    model_config_file: str | None = None,
    models: list[ModelConfig] | None = None,
    enable_batching: bool = False,
    batching_parameters: BatchingParameters | str | None = None,
    poll_wait_seconds: float = 1.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_threads: int = DEFAULT_MAX_THREADS,
    server_credentials: grpc.ServerCredentials | None = None,
) -> ServerHandle:
    """Start serving; returns once the versions present at startup are loaded.

    Raises PipelineError for a bad configuration, a port that cannot be bound, or (like
    tensorflow_model_server at startup) a model whose versions all failed to load. A model with
    no version yet is not an error: the server waits for one (health NOT_SERVING until then).
    server_credentials (grpc.ssl_server_credentials) serves TLS instead of plaintext.
    """
    configs = _models(model_base_path, model_name, model_config_file, models)
    server = _grpc_server(max_threads, max_message_bytes)
    scheduler = None
    if enable_batching:
        if isinstance(batching_parameters, str | os.PathLike):
            batching_parameters = load_batching_parameters(str(batching_parameters))
        scheduler = BatchScheduler(batching_parameters or BatchingParameters())
    manager = ModelManager(configs, scheduler)
    health_servicer = health.HealthServicer()
    _update_health(health_servicer, manager)
    manager.listeners.append(lambda: _update_health(health_servicer, manager))
    prediction_service = PredictionService(manager)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction_service, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = _bind(server, f"{_host_for_url(host)}:{port}", server_credentials)
    except PipelineError:
        if scheduler is not None:
            scheduler.stop()
        raise
    server.start()
    handle = ServerHandle(server, host, bound, manager, health_servicer, prediction_service)
    try:
        manager.poll()
        manager.check_initial_load()
    except BaseException:
        handle.stop(grace=0)
        raise
    manager.start_polling(poll_wait_seconds)
    return handle


def _grpc_server(max_threads: int, max_message_bytes: int) -> grpc.Server:
    if max_threads < 1 or max_message_bytes < 1:
        raise PipelineError("--grpc-max-threads and --max-message-bytes must be >= 1")
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a silent share
        ],
    )


def _bind(server: grpc.Server, address: str, credentials) -> int:
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if not bound:
        raise PipelineError(f"cannot listen on {address} (port in use or host not local)")
    return bound


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transfer-pipeline serve",
        description="TF-Serving-compatible gRPC server (PredictionService, ModelService, "
        "health) over <model-base-path>/<version>/ SavedModels.",
    )
    p.add_argument("--model-base-path", help="folder (or gs://, s3://) of numeric version dirs")
    p.add_argument("--model-name", default="default", help="name clients ask for")
    p.add_argument("--model-config-file", help="TF Serving models.config (text proto)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port; 0 picks a free one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port-file", help="write the bound port here once serving (atomic)")
    p.add_argument("--enable-batching", action="store_true", help="server-side dynamic batching")
    p.add_argument("--batching-parameters-file", help="TF Serving batching_parameters.txt")
    p.add_argument(
        "--file-system-poll-wait-seconds",
        type=float,
        default=1.0,
        help="seconds between scans for new versions; 0 scans once at startup",
    )
    p.add_argument("--tensorflow-intra-op-parallelism", type=int, default=0, help="0: auto")
    p.add_argument("--tensorflow-inter-op-parallelism", type=int, default=0, help="0: auto")
    p.add_argument(
        "--tensorflow-thread-spinning",
        action="store_true",
        help="let idle TensorFlow threads spin (lower latency only on otherwise idle cores)",
    )
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument("--grpc-max-threads", type=int, default=DEFAULT_MAX_THREADS)
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batching_parameters_file and not args.enable_batching:
        log.warning("--batching-parameters-file has no effect without --enable-batching")
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s: draining in-flight requests", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve_until_signalled(args, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_port_file(path: str, port: int) -> None:
    try:
        fsutil.write_atomic(path, f"{port}\n")
    except Exception as e:
        raise PipelineError(f"cannot write the port file {path}: {e}") from None


def _serve_until_signalled(args, stop: threading.Event) -> int:
    configure_tensorflow(
        args.tensorflow_intra_op_parallelism,
        args.tensorflow_inter_op_parallelism,
        args.tensorflow_thread_spinning,
    )
    handle = start_server(
        args.model_base_path,
        args.model_name,
        args.port,
        args.host,
        model_config_file=args.model_config_file,
        enable_batching=args.enable_batching,
        batching_parameters=args.batching_parameters_file,
        poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_message_bytes=args.max_message_bytes,
        max_threads=args.grpc_max_threads,
    )
    try:
        while not stop.is_set() and not handle.wait_until_serving(0.2):
            stop.wait(0.2)
        if not stop.is_set():
            if args.port_file:
                _write_port_file(args.port_file, handle.port)
            models = ", ".join(
                f"{n} {handle.manager.loaded_versions(n)}" for n in handle.manager.models
            )
            log.info(
                "serving %s on %s (batching %s)",
                models,
                handle.target,
                "on" if args.enable_batching else "off",
            )
        while not stop.wait(1.0):
            pass
    finally:
        handle.stop(grace=args.drain_seconds)
    log.info("stopped")
    return 0
