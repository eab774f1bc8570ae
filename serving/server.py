"""`transfer-pipeline serve`: a TF-Serving-compatible gRPC and REST server over a model base path.

Speaks tensorflow.serving.PredictionService (Predict, GetModelMetadata; Classify, Regress and
MultiInference answer UNIMPLEMENTED), tensorflow.serving.ModelService (GetModelStatus) and
grpc.health.v1.Health over `<base_path>/<version>/` SavedModels, with TF Serving's status codes,
and TF Serving's REST API on `--rest-api-port` (serving.rest) on the same event loop, models and
limits. Flags mirror tensorflow_model_server's (`--model_base_path` -> `--model-base-path`, ...).

    transfer-pipeline serve --model-base-path serving_models/cats_dogs --model-name cats_dogs

Hostile clients: the server runs on gRPC's asyncio stack, so a request is read without holding
a thread: a client that sends headers and never the body costs no worker. Every RPC has a
server-side deadline (`--request-timeout-seconds`, or the client's if sooner) that covers
reading the request, waiting for a worker and running the model; status, metadata and health
answer on the event loop and never wait for a worker. gRPC limits concurrent RPCs, streams per
connection (a client queues calls over the limit: see ServerLimits.grpc_options), idle and old
connections, and pings dead peers (keepalive). Request tensors are
checked before they are materialised (serving.tensors). Shutdown ends within the drain time
plus a few seconds whatever is running.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from serving.batching import BatchingParameters, BatchScheduler, load_batching_parameters
from serving.errors import StatusError, clip, invalid
from serving.metrics import ServingMetrics, load_monitoring_config
from serving.model_config import ModelConfig, load_model_config_file
from serving.rest import RestApi
from serving.servables import (
    DEFAULT_LOAD_RETRY_INTERVAL_S,
    DEFAULT_MAX_NUM_LOAD_RETRIES,
    ModelManager,
    configure_tensorflow,
)
from serving.services import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ModelService,
    PredictionService,
    ServerLimits,
)

if TYPE_CHECKING:
    from google.protobuf import message

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_PORT = 8500
DEFAULT_REST_API_PORT = 8501
HOST_ENV = "TRANSFER_PIPELINE_SERVE_HOST"  # --host's default; the Dockerfile sets 0.0.0.0
DEFAULT_MAX_THREADS = max(16, 4 * (os.cpu_count() or 1))
SERVICE_NAMES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
# the RPCs TF Serving counts in request_count / request_latency (prediction_service_impl.cc)
COUNTED_RPCS = ("Predict", "Classify", "Regress")


@dataclasses.dataclass(frozen=True)
class _Method:
    request: type[message.Message]
    # (request, timeout) -> response; raises StatusError. None: the RPC's handler answers.
    fn: Callable[[Any, float | None], message.Message] | None
    blocking: bool  # runs TensorFlow: in a worker thread, not on the event loop
    model: Callable[[Any], str] = lambda request: request.model_spec.name  # for log lines


class _Server:
    """The grpc.aio server, its event loop thread and the worker threads for Predict."""

    def __init__(
        self,
        manager: ModelManager,
        limits: ServerLimits,
        max_threads: int,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.manager = manager
        self.limits = limits
        self.metrics = metrics or ServingMetrics(manager)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_threads, "grpc")
        self.busy = 0  # worker threads running a request now
        self._busy_lock = threading.Lock()
        self.prediction = PredictionService(manager, limits, self.metrics)
        self.models = ModelService(manager)
        self.health = self.call(self._make_health())
        self.server = self.call(self._make_server())
        self.rest: RestApi | None = None

    def start_rest(self, host: str, port: int, metrics_path: str | None = None) -> int:
        """Serve the REST API on host:port (0: a free port) on this loop, and the metrics at
        metrics_path (None: not served); the bound port."""

        async def start() -> int:
            self.rest = RestApi(
                self.prediction, self.models, self.manager, self.limits, self._rest_blocking
            )
            self.rest.serve_metrics(self.metrics, metrics_path)
            return await self.rest.start(host, port)

        return self.call(start())

    async def _rest_blocking(self, call: Callable[[], bytes], timeout: float) -> bytes:
        return await self._in_worker(lambda request, left: call(), None, timeout)

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float | None = 30.0) -> _T:
        """Run a coroutine on the loop from another thread; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _make_health(self) -> health.aio.HealthServicer:
        return health.aio.HealthServicer()

    async def _make_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=self.limits.grpc_options(),
            maximum_concurrent_rpcs=self.limits.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(*h) for h in self._handlers()]
        )
        return server

    def _handlers(self) -> Iterator[tuple[str, dict[str, grpc.RpcMethodHandler]]]:
        p, m = self.prediction, self.models
        services = {
            "tensorflow.serving.PredictionService": {
                "Predict": _Method(predict_pb2.PredictRequest, p.predict, True),
                "GetModelMetadata": _Method(
                    get_model_metadata_pb2.GetModelMetadataRequest, p.metadata, False
                ),
                "Classify": _Method(
                    classification_pb2.ClassificationRequest, p.unimplemented("Classify"), False
                ),
                "Regress": _Method(
                    regression_pb2.RegressionRequest, p.unimplemented("Regress"), False
                ),
                "MultiInference": _Method(
                    inference_pb2.MultiInferenceRequest,
                    p.unimplemented("MultiInference"),
                    False,
                    lambda r: r.tasks[0].model_spec.name if r.tasks else "",
                ),
            },
            "tensorflow.serving.ModelService": {
                "GetModelStatus": _Method(
                    get_model_status_pb2.GetModelStatusRequest, m.status, False
                ),
                "HandleReloadConfigRequest": _Method(
                    model_management_pb2.ReloadConfigRequest, m.reload_config, False, lambda r: ""
                ),
            },
        }
        for service, methods in services.items():
            yield (
                service,
                {
                    name: grpc.stream_unary_rpc_method_handler(
                        self._unary(f"{service.rsplit('.', 1)[-1]}.{name}", method),
                        request_deserializer=method.request.FromString,
                        response_serializer=lambda response: response.SerializeToString(),
                    )
                    for name, method in methods.items()
                },
            )
        check = _Method(health_pb2.HealthCheckRequest, None, False, lambda r: r.service)
        yield (
            "grpc.health.v1.Health",
            {
                "Check": grpc.stream_unary_rpc_method_handler(
                    self._unary("Health.Check", check, self.health.Check),
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=lambda response: response.SerializeToString(),
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.health.Watch,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=lambda response: response.SerializeToString(),
                ),
            },
        )

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """Seconds this RPC may take in all: the server's limit or the client's, if sooner."""
        remaining = context.time_remaining()
        limit = self.limits.request_timeout_s
        return limit if remaining is None else min(limit, remaining)

    def _unary(
        self,
        method: str,
        spec: _Method,
        handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[message.Message]]
        | None = None,
    ) -> Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], Awaitable[message.Message]]:
        """A unary RPC, registered as client-streaming so that reading the request happens
        under the server-side deadline (a unary handler only starts once the body is in)."""

        async def rpc(
            request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> message.Message:
            started = time.monotonic()
            budget = self._deadline(context)
            read = asyncio.ensure_future(context.read())
            done, _ = await asyncio.wait({read}, timeout=budget)
            if not done:
                read.add_done_callback(_consume)
                error = _timeout(budget, "the request to arrive")
                self._observe(method, spec, None, error.code.name, started)
                await self._fail(context, method, "", error)
            request = read.result()
            if request is grpc.aio.EOF:
                self._observe(method, spec, None, grpc.StatusCode.INVALID_ARGUMENT.name, started)
                await self._fail(context, method, "", invalid("no request message"))
            if handler is not None:  # health: the library's async servicer
                return await handler(request, context)
            try:
                fn = spec.fn
                assert fn is not None  # only health's _Method has none, and it has a handler
                if not spec.blocking:
                    response = fn(request, None)
                else:
                    left = budget - (time.monotonic() - started)
                    response = await asyncio.wait_for(self._in_worker(fn, request, left), left)
                self._observe(method, spec, request, "OK", started, response)
                return response
            except StatusError as e:
                error = e
            except (asyncio.TimeoutError, TimeoutError):
                error = _timeout(budget, "the answer")
            except Exception as e:  # a bug: say what, once, in one line
                error = StatusError(
                    grpc.StatusCode.INTERNAL,
                    f"internal error: {type(e).__name__}: {clip(' '.join(str(e).split()), 500)}",
                )
            self._observe(method, spec, request, error.code.name, started)
            await self._fail(context, method, spec.model(request), error)

        return rpc

    def _observe(
        self,
        method: str,
        spec: _Method,
        request: Any,
        status: str,
        started: float,
        response: message.Message | None = None,
    ) -> None:
        """TF Serving's request metrics, for the RPCs it counts (COUNTED_RPCS)."""
        service, _, api = method.partition(".")
        if service != "PredictionService" or api not in COUNTED_RPCS:
            return
        version, signature = None, ""
        answered = getattr(response, "model_spec", None)
        if answered is not None:
            version, signature = answered.version.value, answered.signature_name
        model = spec.model(request) if request is not None else ""
        elapsed = time.monotonic() - started
        self.metrics.request("GRPC", api, model, status, elapsed, version, signature)

    async def _in_worker(
        self, fn: Callable[[Any, float | None], _T], request: message.Message | None, timeout: float
    ) -> _T:
        def run() -> _T:
            with self._busy_lock:
                self.busy += 1
            try:
                return fn(request, timeout)
            finally:
                with self._busy_lock:
                    self.busy -= 1

        return await self.loop.run_in_executor(self.executor, run)

    @staticmethod
    async def _fail(
        context: grpc.aio.ServicerContext, method: str, model: str, error: StatusError
    ) -> None:
        """Log and abort the RPC with `error` (context.abort raises)."""
        level = logging.ERROR if error.code == grpc.StatusCode.INTERNAL else logging.WARNING
        log.log(level, "%s model=%r: %s: %s", method, clip(model), error.code.name, error.message)
        await context.abort(error.code, error.message)

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        stops = [self.server.stop(grace)]
        if self.rest is not None:
            stops.append(self.rest.stop(grace))
        await asyncio.gather(*stops)


def _timeout(seconds: float, what: str) -> StatusError:
    return StatusError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"deadline of {seconds:g} s exceeded waiting for {what} "
        "(the client's deadline or --request-timeout-seconds)",
    )


def _consume(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise


def _update_health(server: _Server, manager: ModelManager) -> None:
    """Each model name SERVING once one of its versions is loaded; the server once all are."""
    if not server.loop.is_running():  # stopped: a load that finished after shutdown
        return
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    everything = True
    statuses: dict[str, int] = {}
    for name in manager.models:
        ok = manager.available(name)
        everything &= ok
        statuses[name] = serving if ok else not_serving
    for name in SERVICE_NAMES:
        statuses[name] = serving if everything else not_serving

    async def apply() -> None:
        for name, status in statuses.items():
            await server.health.set(name, status)

    server.call(apply(), timeout=10)


@dataclasses.dataclass
class ServerHandle:
    """A running server: `.port`, `.target` (gRPC), `.rest_port`, `.rest_url` (REST, None when
    off), `.stop(grace)`; a context manager."""

    server: _Server
    host: str
    port: int
    manager: ModelManager
    rest_port: int | None = None
    metrics_path: str | None = None  # Prometheus metrics on the REST port (None: not served)

    @property
    def target(self) -> str:
        return f"{_host_for_url(self.host)}:{self.port}"

    @property
    def rest_url(self) -> str | None:
        if self.rest_port is None:
            return None
        return f"http://{_host_for_url(self.host)}:{self.rest_port}"

    @property
    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes this server (--monitoring-config-file), None when off."""
        if self.rest_url is None or self.metrics_path is None:
            return None
        return self.rest_url + self.metrics_path

    @property
    def metrics(self) -> ServingMetrics:
        return self.server.metrics

    @property
    def serving(self) -> bool:
        return all(self.manager.available(name) for name in self.manager.models)

    @property
    def busy(self) -> int:
        """Requests running in worker threads now (after stop: the ones that outlived it)."""
        return self.server.busy

    def wait_until_serving(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.serving:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, grace: float | None = 10.0) -> None:
        """Refuse new requests, let in-flight ones finish (up to `grace` s), then shut down.
        Returns within about grace + 3 s whatever is running: a request still running in
        TensorFlow then is abandoned (see `busy`)."""
        grace = 0.0 if grace is None else max(grace, 0.0)
        self.manager.stop(timeout=1.0)
        scheduler = self.manager.scheduler
        if scheduler is not None:
            scheduler.flush()  # queued batches run now instead of waiting for their timeout
        try:
            self.server.call(self.server._stop(grace), timeout=grace + 2.0)
        except (concurrent.futures.TimeoutError, TimeoutError):
            log.warning("gRPC server did not stop within %g s", grace + 2.0)
        if scheduler is not None:
            scheduler.stop(timeout=0.5)
        self.server.executor.shutdown(wait=False, cancel_futures=True)
        self.server.metrics.close()
        self.server.loop.call_soon_threadsafe(self.server.loop.stop)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _models(
    model_base_path: str | None,
    model_name: str,
    model_config_file: str | None,
    models: Iterable[ModelConfig] | None,
) -> list[ModelConfig]:
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
    limits: ServerLimits | None = None,
    max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
    load_retry_interval_s: float = DEFAULT_LOAD_RETRY_INTERVAL_S,
    model_config_file_poll_wait_seconds: float = 0.0,
    allow_version_labels_for_unavailable_models: bool = False,
    rest_api_port: int | None = None,
    monitoring_config_file: str | None = None,
) -> ServerHandle:
    """Start serving; returns once the versions present at startup are loaded.

    rest_api_port: also serve TF Serving's REST API on this port (0: a free one; None: off).
    monitoring_config_file: TF Serving's monitoring.config; when it enables Prometheus, the
    metrics (serving/metrics.py) are served on the REST port at its path.

    With a model config file, `model_config_file_poll_wait_seconds` > 0 re-reads it that
    often (models, policies and labels change without a restart; 0 reads it once, as TF
    Serving's flag of that name). Version labels follow TF Serving's rules (servables.py).

    Raises PipelineError for a bad configuration, a port that cannot be bound, or (like
    tensorflow_model_server at startup) a model whose versions all failed to load. A model with
    no version yet is not an error: the server waits for one (health NOT_SERVING until then).
    server_credentials (grpc.ssl_server_credentials) serves TLS instead of plaintext. `limits`
    bounds what a client may take (its max_message_bytes wins over the argument when given).
    """
    configs = _models(model_base_path, model_name, model_config_file, models)
    if max_threads < 1 or max_message_bytes < 1:
        raise PipelineError("--grpc-max-threads and --max-message-bytes must be >= 1")
    limits = limits or ServerLimits(max_message_bytes=max_message_bytes)
    metrics_path = _metrics_path(monitoring_config_file, rest_api_port)
    metrics = ServingMetrics()
    scheduler = _scheduler(enable_batching, batching_parameters, metrics)
    manager = ModelManager(
        configs, scheduler, max_num_load_retries, load_retry_interval_s,
        allow_version_labels_for_unavailable_models,
    )  # fmt: skip
    metrics.manager, manager.metrics = manager, metrics
    server = _Server(manager, limits, max_threads, metrics)
    _update_health(server, manager)
    manager.listeners.append(lambda: _update_health(server, manager))
    bound, rest_bound = _listen(
        server, scheduler, host, port, server_credentials, rest_api_port, metrics_path
    )
    handle = ServerHandle(server, host, bound, manager, rest_bound, metrics_path)
    _serve(handle, poll_wait_seconds, model_config_file, model_config_file_poll_wait_seconds)
    return handle


def _scheduler(
    enable_batching: bool,
    parameters: BatchingParameters | str | None,
    metrics: ServingMetrics,
) -> BatchScheduler | None:
    """The batch scheduler when batching is on (its parameters: given, a file, or defaults)."""
    if not enable_batching:
        return None
    if isinstance(parameters, str | os.PathLike):
        parameters = load_batching_parameters(str(parameters))
    return BatchScheduler(parameters or BatchingParameters(), metrics)


def _listen(
    server: _Server,
    scheduler: BatchScheduler | None,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
    rest_api_port: int | None,
    metrics_path: str | None,
) -> tuple[int, int | None]:
    """Bind the gRPC port (and the REST one); a port that cannot be bound is one line, with
    the event loop and the scheduler stopped."""
    try:
        bound = _bind(server, f"{_host_for_url(host)}:{port}", credentials)
        rest_bound = (
            None if rest_api_port is None else server.start_rest(host, rest_api_port, metrics_path)
        )
    except PipelineError:
        server.call(server._stop(0.0))
        server.loop.call_soon_threadsafe(server.loop.stop)
        if scheduler is not None:
            scheduler.stop()
        raise
    return bound, rest_bound


def _serve(
    handle: ServerHandle,
    poll_wait_seconds: float,
    model_config_file: str | None,
    config_poll_wait_seconds: float,
) -> None:
    """Start answering once the versions present at startup are loaded, then keep polling
    the file system (and the model config file)."""
    manager, server = handle.manager, handle.server
    try:
        # Like tensorflow_model_server: the port answers once the versions present at startup
        # are loaded (a client connecting earlier is UNAVAILABLE and retries, not NOT_FOUND).
        manager.poll()
        manager.check_initial_load()
        server.call(server.server.start())
    except BaseException:
        handle.stop(grace=0)
        raise
    manager.start_polling(poll_wait_seconds)
    if model_config_file is not None:
        path = model_config_file
        manager.start_config_polling(lambda: load_model_config_file(path), config_poll_wait_seconds)


def _metrics_path(monitoring_config_file: str | None, rest_api_port: int | None) -> str | None:
    """The metrics path a monitoring.config enables (None: off); they need the REST port."""
    if monitoring_config_file is None:
        return None
    path = load_monitoring_config(monitoring_config_file)
    if path is not None and rest_api_port is None:
        raise PipelineError(
            f"{monitoring_config_file} enables Prometheus metrics, which are served on the REST "
            "port: set --rest-api-port"
        )
    return path


def _bind(server: _Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            bound = server.server.add_insecure_port(address)
        else:
            bound = server.server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if not bound:
        raise PipelineError(f"cannot listen on {address} (port in use or host not local)")
    return bound


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transfer-pipeline serve",
        description="TF-Serving-compatible gRPC server (PredictionService, ModelService, "
        "health) and REST API over <model-base-path>/<version>/ SavedModels.",
    )
    _model_arguments(p)
    _network_arguments(p)
    _runtime_arguments(p)
    _limit_arguments(p)
    _load_retry_arguments(p)
    return p


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """Which models: one base path, or TF Serving's models.config."""
    p.add_argument("--model-base-path", help="folder (or gs://, s3://) of numeric version dirs")
    p.add_argument("--model-name", default="default", help="name clients ask for")
    p.add_argument("--model-config-file", help="TF Serving models.config (text proto)")
    p.add_argument(
        "--model-config-file-poll-wait-seconds",
        type=float,
        default=0.0,
        help="re-read --model-config-file this often (models, policies, labels); 0: once",
    )
    p.add_argument(
        "--allow-version-labels-for-unavailable-models",
        action="store_true",
        help="a new label may name a version not loaded yet (TF Serving's flag of that name)",
    )


def _network_arguments(p: argparse.ArgumentParser) -> None:
    """Where it listens: gRPC, REST, the metrics page."""
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port; 0 picks a free one")
    p.add_argument(
        "--host",
        default=os.environ.get(HOST_ENV, "127.0.0.1"),
        help=f"address to listen on (0.0.0.0: all); default ${HOST_ENV}, else 127.0.0.1",
    )
    p.add_argument("--port-file", help="write the bound port here once serving (atomic)")
    p.add_argument(
        "--rest-api-port",
        type=_rest_port,
        default=DEFAULT_REST_API_PORT,
        help="TF Serving's REST API (/v1/models/...) on this port; 0 turns it off; auto: a "
        "free port",
    )
    p.add_argument("--rest-api-port-file", help="write the bound REST port here once serving")
    p.add_argument(
        "--monitoring-config-file",
        help="TF Serving monitoring.config: prometheus_config { enable: true path: ... } serves "
        "Prometheus metrics on the REST port (docs/monitoring.md)",
    )


def _runtime_arguments(p: argparse.ArgumentParser) -> None:
    """How it runs: batching, polling, threads, draining."""
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
    p.add_argument(
        "--grpc-max-threads",
        type=int,
        default=DEFAULT_MAX_THREADS,
        help="worker threads running Predict requests",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish; the process "
        "exits within this + 5 s",
    )


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    """What one client may take (ServerLimits)."""
    d = ServerLimits()
    limits = p.add_argument_group("limits on what one client may take (docs/serving.md)")
    for flag, kind, default, text in (
        ("--max-message-bytes", int, d.max_message_bytes, "largest request (RESOURCE_EXHAUSTED)"),
        ("--max-request-bytes", int, d.max_request_bytes,
         "bytes a request's input tensors may declare, as materialised (INVALID_ARGUMENT)"),
        ("--max-string-elements", int, d.max_string_elements,
         "string elements (encoded images) in one request (INVALID_ARGUMENT)"),
        ("--request-timeout-seconds", float, d.request_timeout_s,
         "server-side deadline of every RPC: reading, queueing, running (DEADLINE_EXCEEDED)"),
        ("--max-concurrent-rpcs", int, d.max_concurrent_rpcs,
         "RPCs in progress on the whole server, stalled ones included (RESOURCE_EXHAUSTED)"),
        ("--max-concurrent-streams", int, d.max_concurrent_streams,
         "RPCs in progress on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a "
         "client queues the rest; one that does not gets REFUSED_STREAM)"),
        ("--keepalive-time-seconds", float, d.keepalive_time_s,
         "ping a connection after this long without traffic"),
        ("--keepalive-timeout-seconds", float, d.keepalive_timeout_s,
         "close a connection whose peer does not answer a ping within this"),
        ("--max-connection-idle-seconds", float, d.max_connection_idle_s,
         "close a connection without RPCs after this long"),
        ("--max-connection-age-seconds", float, d.max_connection_age_s,
         "close any connection after this long (+ --request-timeout-seconds for its RPCs)"),
        ("--rest-max-json-depth", int, d.rest_max_json_depth,
         "REST: how deep a request body's arrays and objects may nest (400)"),
        ("--rest-max-concurrent-requests", int, d.rest_max_concurrent_requests,
         "REST: predictions in progress at once; more wait within their deadline"),
        ("--rest-max-connections", int, d.rest_max_connections,
         "REST: open connections; more are answered 503 and closed"),
    ):  # fmt: skip
        limits.add_argument(flag, type=kind, default=default, help=text)


def _load_retry_arguments(p: argparse.ArgumentParser) -> None:
    """TF Serving's model load retries."""
    p.add_argument(
        "--max-num-load-retries",
        type=int,
        default=DEFAULT_MAX_NUM_LOAD_RETRIES,
        help="retries of a failed model load (TF Serving's --max_num_load_retries)",
    )
    p.add_argument(
        "--load-retry-interval-micros",
        type=int,
        default=int(DEFAULT_LOAD_RETRY_INTERVAL_S * 1e6),
        help="between load retries (TF Serving's --load_retry_interval_micros)",
    )


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(
        max_message_bytes=args.max_message_bytes,
        max_request_bytes=args.max_request_bytes,
        max_string_elements=args.max_string_elements,
        request_timeout_s=args.request_timeout_seconds,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_concurrent_streams=args.max_concurrent_streams,
        keepalive_time_s=args.keepalive_time_seconds,
        keepalive_timeout_s=args.keepalive_timeout_seconds,
        max_connection_idle_s=args.max_connection_idle_seconds,
        max_connection_age_s=args.max_connection_age_seconds,
        rest_max_json_depth=args.rest_max_json_depth,
        rest_max_concurrent_requests=args.rest_max_concurrent_requests,
        rest_max_connections=args.rest_max_connections,
    )


def _rest_port(text: str) -> int | None:
    """--rest-api-port: a port, 0 (off, as TF Serving's flag) or auto (a free port)."""
    if text == "auto":
        return 0
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number or auto: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 or auto, got {port}")
    return port or None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batching_parameters_file and not args.enable_batching:
        log.warning("--batching-parameters-file has no effect without --enable-batching")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: draining in-flight requests", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        handle = _serve_until_signalled(args, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if handle is not None and handle.busy:
        # TensorFlow cannot be interrupted, and Python waits for worker threads at exit: leave
        # now so that shutdown never outlasts the drain time.
        log.warning("exiting with %d request(s) still running past the drain time", handle.busy)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _write_port_file(path: str, port: int) -> None:
    try:
        fsutil.write_atomic(path, f"{port}\n")
    except Exception as e:
        raise PipelineError(f"cannot write the port file {path}: {e}") from None


def _serve_until_signalled(args: argparse.Namespace, stop: threading.Event) -> ServerHandle | None:
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
        limits=limits_from_args(args),
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_s=args.load_retry_interval_micros / 1e6,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=(
            args.allow_version_labels_for_unavailable_models
        ),
        rest_api_port=args.rest_api_port,
        monitoring_config_file=args.monitoring_config_file,
    )
    try:
        while not stop.is_set() and not handle.wait_until_serving(0.2):
            stop.wait(0.2)
        if not stop.is_set():
            if args.rest_api_port_file and handle.rest_port is not None:
                _write_port_file(args.rest_api_port_file, handle.rest_port)
            if args.port_file:
                _write_port_file(args.port_file, handle.port)
            models = ", ".join(
                f"{n} {handle.manager.loaded_versions(n)}" for n in handle.manager.models
            )
            log.info(
                "serving %s on %s, REST on %s (batching %s, metrics %s)",
                models,
                handle.target,
                handle.rest_url or "off",
                "on" if args.enable_batching else "off",
                handle.metrics_url or "off",
            )
        while not stop.wait(1.0):
            pass
    finally:
        handle.stop(grace=args.drain_seconds)
    log.info("stopped")
    return handle
