"""Prometheus metrics of `transfer-pipeline serve`, with TF Serving's names, labels and buckets.

Served on the REST port at the path of `--monitoring-config-file` (TF Serving's
MonitoringConfig: `prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }`),
in TF Serving's exposition (util/prometheus_exporter.cc: `/` becomes `:`, a counter's samples
carry its name without `_total`, histograms as `_bucket{le}`, `_sum`, `_count`), so one
dashboard and one rule file serve both servers. What both servers know uses TF Serving's own
metric (tensorflow_serving/servables/tensorflow/util.cc, batching/batching_session.cc,
batching/batching_util.h, tensorflow/cc/saved_model/loader.cc):

    :tensorflow:serving:request_count{model_name,status}             Predict/Classify/Regress
                                                                      over gRPC, every /v1/ REST
                                                                      request; status: OK, ...
    :tensorflow:serving:request_latency{model_name,API,entrypoint}   us, answered OK only; API
                                                                      Predict (gRPC) or the REST
                                                                      verb (predict, "" for GET)
    :tensorflow:serving:runtime_latency{model_name,API,runtime}      us, the model's run (with
                                                                      batching: queue included)
    :tensorflow:serving:batching_session:queuing_latency{thread_pool_name}   us per request
    :tensorflow:serving:batching_session:input_batch_size            rows per request
    :tensorflow:serving:batching_session:processed_batch_size        rows per run, padded
    :tensorflow:serving:batching_session:padding_size{execution_batch_size}
    :tensorflow:serving:batching_session:wrapped_run_count           model runs of batches
    :tensorflow:cc:saved_model:load_attempt_count{model_path,status} success / fail

What TF Serving does not expose is a separate `transfer_pipeline_serving_*` family: requests
by version and signature, each version's state (TF Serving exports none: on Kubernetes its
readiness stands in, docs/monitoring.md), the versions available, the labels.

Bounded: every label value comes from a fixed set or from the server's own configuration (a
model name that is not configured is recorded as `_unknown_`, a signature the version does not
have as ""), so a client cannot grow the series; the page is rendered from a copy taken under
short locks, in one thread of its own, never on a prediction worker.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError

if TYPE_CHECKING:
    from google.protobuf import message


class ModelManager(Protocol):
    """What the metrics read of serving.servables.ModelManager (named here, not imported:
    the servables import the batching and the batching these metrics)."""

    @property
    def models(self) -> Mapping[str, Any]: ...

    def state_snapshot(self, name: str) -> Iterable[tuple[int, Any]]: ...

    def loaded_versions(self, name: str) -> list[int]: ...

    def labels(self, name: str) -> Mapping[str, int]: ...


DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
UNKNOWN_MODEL = "_unknown_"
RUNTIME = "TF2"  # TF Serving says TF1 (a Session) or TFRT; this server runs TF2 functions
THREAD_POOL_NAME = ""  # what TF Serving's BatchingSession reports (CreateBatchingSession)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exponential(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """tensorflow::monitoring::Buckets::Exponential: scale * growth**i, i < count (then +Inf)."""
    return tuple(scale * growth**i for i in range(count))


LATENCY_BUCKETS = exponential(10, 1.8, 33)  # us, ~20 minutes
BATCH_SIZE_BUCKETS = exponential(1, 2, 14)
QUEUING_BUCKETS = exponential(100, 1.2, 52)  # us, ~1 second


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    return ",".join(parts + ([extra] if extra else []))


def _limit_text(limit: float) -> str:
    return f"{limit:.6g}"  # absl::StrCat(double), as TF Serving prints bucket limits


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclasses.dataclass
class Counter:
    name: str
    help: str
    labelnames: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._values: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, by: int = 1) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + by

    def value(self, *labels: str) -> int:
        with self._lock:
            return self._values.get(labels, 0)

    def lines(self, tf_style: bool) -> list[str]:
        with self._lock:
            values = sorted(self._values.items())
        head = [] if tf_style else [f"# HELP {self.name} {self.help}"]
        head.append(f"# TYPE {self.name} counter")
        return head + [f"{self.name}{{{_labels(self.labelnames, k)}}} {v}" for k, v in values]


@dataclasses.dataclass
class Histogram:
    """TF's semantics: a value goes to the first bucket whose limit is above it."""

    name: str
    help: str
    labelnames: tuple[str, ...]
    limits: tuple[float, ...]

    def __post_init__(self) -> None:
        self._cells: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_right(self.limits, value)
        with self._lock:
            counts, total = self._cells.setdefault(labels, ([0] * (len(self.limits) + 1), [0.0]))
            counts[index] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            cell = self._cells.get(labels)
            return sum(cell[0]) if cell else 0

    def lines(self, tf_style: bool) -> list[str]:
        with self._lock:
            cells = sorted((k, (list(c), s[0])) for k, (c, s) in self._cells.items())
        out = [] if tf_style else [f"# HELP {self.name} {self.help}"]
        out.append(f"# TYPE {self.name} histogram")
        for key, (counts, total) in cells:
            cumulative = 0
            for i, n in enumerate(counts):
                cumulative += n
                le = _limit_text(self.limits[i]) if i < len(self.limits) else "+Inf"
                labels = _labels(self.labelnames, key, f'le="{le}"')
                out.append(f"{self.name}_bucket{{{labels}}} {cumulative}")
            plain = _labels(self.labelnames, key)
            out.append(f"{self.name}_sum{{{plain}}} {_number(total)}")
            out.append(f"{self.name}_count{{{plain}}} {cumulative}")
        return out


@dataclasses.dataclass
class Gauge:
    """Computed when the page is rendered: (label values, value) pairs from `read`."""

    name: str
    help: str
    labelnames: tuple[str, ...]
    read: Callable[[], Iterable[tuple[tuple[str, ...], float]]]

    def lines(self, tf_style: bool) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        out += [
            f"{self.name}{{{_labels(self.labelnames, k)}}} {_number(v)}" for k, v in self.read()
        ]
        return out


TF = ":tensorflow:serving:"
OURS = "transfer_pipeline_serving_"


class ServingMetrics:
    """Every metric of one server; recorded from the gRPC and REST handlers, the prediction
    service, the batch scheduler and the model manager."""

    def __init__(self, manager: ModelManager | None = None) -> None:
        self.manager = manager
        self.request_count = Counter(TF + "request_count", "", ("model_name", "status"))
        self.request_latency = Histogram(
            TF + "request_latency", "", ("model_name", "API", "entrypoint"), LATENCY_BUCKETS
        )
        self.runtime_latency = Histogram(
            TF + "runtime_latency", "", ("model_name", "API", "runtime"), LATENCY_BUCKETS
        )
        b = TF + "batching_session:"
        self.queuing_latency = Histogram(
            b + "queuing_latency", "", ("thread_pool_name",), QUEUING_BUCKETS
        )
        self.input_batch_size = Histogram(b + "input_batch_size", "", (), BATCH_SIZE_BUCKETS)
        self.processed_batch_size = Histogram(
            b + "processed_batch_size", "", (), BATCH_SIZE_BUCKETS
        )
        self.padding_size = Histogram(
            b + "padding_size", "", ("execution_batch_size",), BATCH_SIZE_BUCKETS
        )
        self.wrapped_run_count = Counter(b + "wrapped_run_count", "")
        self.load_attempt_count = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count", "", ("model_path", "status")
        )
        self.requests = Counter(
            OURS + "requests_total",
            "requests by model, served version, signature, entrypoint and status",
            ("model_name", "version", "signature", "entrypoint", "status"),
        )
        self._render_pool = concurrent.futures.ThreadPoolExecutor(1, "metrics")

    # -- recording -------------------------------------------------------------------------

    def model_label(self, name: str) -> str:
        """The model_name label: a configured model's name, else UNKNOWN_MODEL (bounded)."""
        manager = self.manager
        return name if manager is None or name in manager.models else UNKNOWN_MODEL

    def request(
        self,
        entrypoint: str,
        api: str,
        model: str,
        status: str,
        seconds: float,
        version: int | None = None,
        signature: str = "",
    ) -> None:
        """One request as TF Serving counts it: its status; its latency when answered OK."""
        name = self.model_label(model)
        self.request_count.inc(name, status)
        if status == "OK":
            self.request_latency.observe(seconds * 1e6, name, api, entrypoint)
        shown = "" if version is None else str(version)
        self.requests.inc(name, shown, signature, entrypoint, status)

    def runtime(self, model: str, api: str, seconds: float) -> None:
        self.runtime_latency.observe(seconds * 1e6, self.model_label(model), api, RUNTIME)

    def load_attempt(self, path: str, ok: bool) -> None:
        self.load_attempt_count.inc(path, "success" if ok else "fail")

    # -- the page --------------------------------------------------------------------------

    def _states(self) -> Iterable[tuple[tuple[str, ...], float]]:
        from tensorflow_serving.apis import get_model_status_pb2

        State = get_model_status_pb2.ModelVersionStatus.State  # noqa: N806 (servables' name)
        manager = self.manager
        for name in sorted(manager.models if manager else ()):
            for version, state in manager.state_snapshot(name) if manager else []:
                yield (name, str(version), State.Name(state.state)), 1.0

    def _available(self) -> Iterable[tuple[tuple[str, ...], float]]:
        manager = self.manager
        for name in sorted(manager.models if manager else ()):
            yield (name,), float(len(manager.loaded_versions(name))) if manager else 0.0

    def _label_versions(self) -> Iterable[tuple[tuple[str, ...], float]]:
        manager = self.manager
        for name in sorted(manager.models if manager else ()):
            for label, version in sorted(manager.labels(name).items()) if manager else []:
                yield (name, label), float(version)

    def render(self) -> bytes:
        """The exposition page (TF Serving's families first, then this server's own)."""
        lines: list[str] = []
        for metric in (
            self.request_count,
            self.request_latency,
            self.runtime_latency,
            self.queuing_latency,
            self.input_batch_size,
            self.processed_batch_size,
            self.padding_size,
            self.wrapped_run_count,
            self.load_attempt_count,
        ):
            lines += metric.lines(tf_style=True)
        lines += self.requests.lines(tf_style=False)
        gauges = (
            Gauge(
                OURS + "model_version_state",
                "1 for each version the server knows, labelled with its state "
                "(START, LOADING, AVAILABLE, UNLOADING, END)",
                ("model_name", "version", "state"),
                self._states,
            ),
            Gauge(
                OURS + "available_versions",
                "versions of the model loaded and answering",
                ("model_name",),
                self._available,
            ),
            Gauge(
                OURS + "label_version",
                "the version a version label (stable, canary) points to",
                ("model_name", "label"),
                self._label_versions,
            ),
        )
        for gauge in gauges:
            lines += gauge.lines(tf_style=False)
        return ("\n".join(lines) + "\n").encode("utf-8")

    def render_in_thread(self) -> concurrent.futures.Future[bytes]:
        """Render in the metrics thread (one page at a time; never a prediction worker)."""
        return self._render_pool.submit(self.render)

    def close(self) -> None:
        self._render_pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------ monitoring.config


def _monitoring_config_class() -> type[message.Message]:
    """tensorflow.serving.MonitoringConfig (config/monitoring_config.proto), built at runtime:
    the tensorflow-serving-api wheel ships no Python module for it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="transfer_pipeline/monitoring_config.proto", package="tensorflow.serving"
    )
    file_proto.syntax = "proto3"
    prometheus = file_proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = file_proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=F.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=F.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )


def parse_monitoring_config(text: str, source: str = "monitoring config") -> str | None:
    """TF Serving's monitoring.config (text proto) -> the metrics path, or None when
    Prometheus is not enabled."""
    from google.protobuf import text_format

    proto = _monitoring_config_class()()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise PipelineError(f"{source}: not a valid MonitoringConfig text proto: {e}") from None
    prometheus = proto.prometheus_config
    if not prometheus.enable:
        return None
    path = prometheus.path or DEFAULT_PATH
    if not path.startswith("/") or path.lower().startswith("/v1/") or path.lower() == "/v1":
        raise PipelineError(
            f"{source}: prometheus_config.path must start with / and not with /v1/ (the "
            f"REST API's), got {path!r}"
        )
    return str(path)


def load_monitoring_config(path: str) -> str | None:
    try:
        text = fsutil.read_text(path)
    except Exception:
        raise PipelineError(
            f"monitoring config file {path} does not exist or cannot be read"
        ) from None
    return parse_monitoring_config(text, source=str(path))
