"""Loaded model versions and the manager that follows a base path like TF Serving does.

- A version is a subdirectory of the base path named by digits only that holds
  `saved_model.pb` (or `.pbtxt`): `core.artifacts.served_versions`, the definition the Pusher and
  the Evaluator use too. Anything else — `.5.tmp-x` (the Pusher's hidden temporary
  sibling), `latest`, a numeric directory whose `saved_model.pb` is not written yet (object
  stores have no atomic rename; the Pusher copies that file last) — is ignored.
- Which versions are wanted follows the model's version policy (latest N / all / specific).
- Loading and unloading follow TF Serving's AvailabilityPreservingPolicy: new versions are
  loaded before old ones are unloaded, and an old version keeps serving while no wanted version
  has loaded (e.g. when the new one fails to load). A failed load is retried like TF Serving's
  `--max_num_load_retries` (default 5) every `--load_retry_interval_micros` (default 60 s), and
  again from the start whenever its `saved_model.pb` changes. At startup a model whose versions
  all fail is fatal at once (the server exits; TF Serving would retry first).
- On load, `assets.extra/tf_serving_warmup_requests` is replayed (TF Serving's warmup format);
  a failing warmup fails the load.
- Version labels (`version_labels` in models.config) follow TF Serving's rule: a label is
  moved only onto an AVAILABLE version; a label that is new (or unchanged) may name a version
  not loaded yet when `allow_version_labels_for_unavailable_models` is set, as TF Serving's flag
  of that name allows. A label waiting for its version keeps its old version meanwhile and is
  applied at the next poll after the version loads. Labels are applied after the versions of a
  poll are loaded (the order tensorflow/serving#1608 asks for), so at startup a label on a
  version that loads is always accepted; a label on a version that did not load stops the
  startup with TF Serving's message, unless the flag is set.
- `reload(models)` swaps in a new model list (TF Serving's `--model_config_file_poll_wait_seconds`
  re-reads the file): new models are loaded, dropped ones unloaded, policies and labels change.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from pipeline_components.core import artifacts, fsutil, image_header
from pipeline_components.core.contract import read_signature_defs  # also serving's, for tests
from pipeline_components.core.errors import PipelineError
from serving.batching import BatchScheduler
from serving.errors import StatusError, clean_tf_message, clip, from_tf_error, invalid
from serving.model_config import ModelConfig
from serving.tensors import RequestBudget, check_request_tensor, dtype_name, to_ndarray

if TYPE_CHECKING:
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import model_pb2

    from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
DEFAULT_MAX_NUM_LOAD_RETRIES = 5  # TF Serving's --max_num_load_retries
DEFAULT_LOAD_RETRY_INTERVAL_S = 60.0  # TF Serving's --load_retry_interval_micros

State = get_model_status_pb2.ModelVersionStatus.State


def _shape_text(shape: Sequence[int | None]) -> str:
    dims = ["-1" if d is None else str(d) for d in shape]
    return "[" + ", ".join(dims[:8] + (["..."] if len(dims) > 8 else [])) + "]"


class Signature:
    """One SignatureDef of a loaded SavedModel: checks inputs like TF Serving, then runs."""

    def __init__(self, name: str, fn: tf.types.experimental.ConcreteFunction) -> None:
        self.name = name
        self.fn = fn
        self.inputs: dict[str, tf.TensorSpec] = dict(fn.structured_input_signature[1])
        self.outputs: tuple[str, ...] = tuple(sorted(fn.structured_outputs))
        # input name -> DataType enum, sorted by name (what a JSON body is converted to)
        self.input_dtypes = {
            name: self.inputs[name].dtype.as_datatype_enum for name in sorted(self.inputs)
        }
        # per input: (DataType enum, dims with None for unknown, or None for unknown rank),
        # computed once: TensorSpec's own checks cost tens of microseconds per request
        self._expected = {
            name: (
                spec.dtype.as_datatype_enum,
                None if spec.shape.rank is None else tuple(spec.shape.as_list()),
            )
            for name, spec in self.inputs.items()
        }

    def decode(
        self, protos: Mapping[str, tensor_pb2.TensorProto], budget: RequestBudget | None = None
    ) -> dict[str, np.ndarray]:
        """Request TensorProtos -> numpy arrays, or INVALID_ARGUMENT naming the input at fault.
        Every input's dtype, shape and size is checked (against `budget`, the request's limits)
        before any of them is materialised."""
        expected = ",".join(sorted(self.inputs))
        for name in protos:
            if name not in self.inputs:
                raise invalid(
                    f"input tensor alias not found in signature: {clip(name)}. "
                    f"Inputs expected to be in the set {{{expected}}}."
                )
        if missing := sorted(set(self.inputs) - set(protos)):
            raise invalid(f"missing input(s) {{{','.join(missing)}}} of signature {self.name}")
        budget = budget if budget is not None else RequestBudget()
        for name, proto in protos.items():
            self._check_one(name, proto, budget)
        return {name: to_ndarray(proto, name) for name, proto in protos.items()}

    def _check_one(self, name: str, proto: tensor_pb2.TensorProto, budget: RequestBudget) -> None:
        dtype, dims = self._expected[name]
        if proto.dtype != dtype:
            raise invalid(
                f"input '{name}' has dtype {dtype_name(proto.dtype)} but signature "
                f"{self.name} expects {dtype_name(dtype)}"
            )
        shape = check_request_tensor(proto, name, budget)
        if dims is not None and (
            len(dims) != len(shape)
            or any(d is not None and d != n for d, n in zip(dims, shape, strict=True))
        ):
            raise invalid(
                f"input '{name}' has shape {_shape_text(shape)} but signature "
                f"{self.name} expects {_shape_text(dims)}"
            )

    def output_filter(self, names: Sequence[str]) -> tuple[str, ...]:
        if not names:
            return self.outputs
        for name in names:
            if name not in self.outputs:
                raise invalid(
                    f"output tensor alias not found in signature: {clip(name)} Outputs expected to "
                    f"be in the set {{{','.join(self.outputs)}}}."
                )
        if len(set(names)) != len(names):
            raise invalid(f"duplicate output tensor alias in output_filter: {clip(list(names))}")
        return tuple(names)

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.fn(**arrays)
        except tf.errors.OpError as e:
            raise from_tf_error(e) from None
        except (TypeError, ValueError) as e:  # arguments the function cannot bind
            raise invalid(clean_tf_message(str(e))) from None
        return {name: value.numpy() for name, value in outputs.items()}


class Servable:
    """One loaded version of one model."""

    _uids = itertools.count()

    def __init__(self, name: str, version: int, path: str) -> None:
        self.name, self.version, self.path = name, version, path
        self.uid = next(self._uids)
        self._model = tf.saved_model.load(path, tags=["serve"])
        self.signature_defs = read_signature_defs(path)
        self.signatures = {k: Signature(k, fn) for k, fn in self._model.signatures.items()}
        # Recorded by this project's export (None for other SavedModels): its string inputs are
        # encoded images, checked against this limit in the graph.
        self.max_image_pixels = artifacts.read_max_image_pixels(path)
        self._calls = itertools.count()
        self.num_calls = 0  # signature executions (a merged batch counts once)

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            # TF Serving: FAILED_PRECONDITION, 'Serving signature key "x" not found.'
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{clip(name)}" not found.',
            )
        return self.signatures[name]

    def call(self, signature: Signature, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.num_calls = next(self._calls) + 1
        return signature(arrays)

    def run(
        self,
        signature: Signature,
        arrays: dict[str, np.ndarray],
        scheduler: BatchScheduler | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run directly, or through the batch scheduler (merged with concurrent requests). A
        request whose images look broken or too large from their headers runs unmerged, so the
        model's error reaches that client only and its would-be batch-mates are not re-run."""
        if scheduler is None or not self.mergeable(arrays):
            return self.call(signature, arrays)
        layout = tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in arrays.items()))
        future = scheduler.submit(
            (self.uid, signature.name, layout), lambda batch: self.call(signature, batch), arrays
        )
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StatusError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline exceeded while waiting in the batch queue",
            ) from None

    def mergeable(self, arrays: dict[str, np.ndarray]) -> bool:
        """False when a string input of a model exported here holds an element that is not a
        complete JPEG/PNG/GIF/BMP within the model's pixel limit, judged from headers alone."""
        if self.max_image_pixels is None:
            return True
        for array in arrays.values():
            if array.dtype != object:
                continue
            for item in array.ravel():
                try:
                    header = image_header.read_header(bytes(item))
                except (image_header.HeaderError, TypeError):
                    return False
                if (
                    header.fmt == "webp"
                    or not header.complete
                    or header.pixels > self.max_image_pixels
                ):
                    return False
        return True

    def warmup(self) -> int:
        """Replay TF Serving warmup records (PredictLog only); returns how many ran."""
        from tensorflow_serving.apis import prediction_log_pb2

        path = artifacts.warmup_file(self.path)
        if not fsutil.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise ValueError(f"{path} holds more than {MAX_WARMUP_RECORDS} warmup records")
            entry = prediction_log_pb2.PredictionLog.FromString(record)
            if entry.WhichOneof("log_type") != "predict_log":
                log.warning("warmup record of type %s skipped", entry.WhichOneof("log_type"))
                continue
            request = entry.predict_log.request
            try:
                signature = self.signature(request.model_spec.signature_name)
                self.call(signature, signature.decode(request.inputs))
            except StatusError as e:
                raise ValueError(f"warmup request {count} failed: {e.message}") from None
        self.num_calls = 0
        self._calls = itertools.count()
        return count


def configure_tensorflow(intra_op: int = 0, inter_op: int = 0, spinning: bool = False) -> bool:
    """Thread settings for the TensorFlow runtime; effective only before its first use.

    TensorFlow's thread pools spin while idle by default. In a server that is harmful: between
    requests the spinning threads take the cores the gRPC threads need (on 2 busy cores, p50
    latency of a small MobileNet fell by about a third with spinning off). Returns whether the
    settings took effect (False once TensorFlow has run anything in this process).
    """
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    if ctx._initialized:  # private: there is no public switch for thread spinning
        log.warning("TensorFlow already initialized; thread settings not applied")
        return False
    config = config_pb2.ConfigProto()
    config.experimental.disable_thread_spinning = not spinning
    ctx._config = config
    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    return True


def versions_to_unload(
    loaded: set[int], aspired: set[int], keep: AbstractSet[int] = frozenset()
) -> set[int]:
    """TF Serving's AvailabilityPreservingPolicy, applied until nothing changes: unaspired
    versions go once an aspired version serves (or none is aspired); otherwise only the newest
    unaspired one is kept, so the model never goes dark while a new version fails to load."""
    unaspired = sorted(loaded - aspired - keep)
    if not aspired or aspired & loaded:
        return set(unaspired)
    return set(unaspired[:-1])


def _fingerprint(path: str) -> tuple[tuple[str, int, int], ...]:
    stats = []
    for name in artifacts.SAVED_MODEL_FILES:
        file = fsutil.join(path, name)
        if fsutil.exists(file):
            stat = tf.io.gfile.stat(file)
            stats.append((name, stat.length, stat.mtime_nsec))
    return tuple(stats)


def _one_line(error: BaseException) -> str:
    if isinstance(error, tf.errors.OpError):
        return clean_tf_message(error.message)
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:500]


@dataclasses.dataclass(frozen=True)
class VersionState:
    state: int
    error_code: int = 0  # google.rpc / tensorflow.error.Code
    error_message: str = ""


class ModelManager:
    """Keeps the wanted versions of each configured model loaded; answers lookups by ModelSpec."""

    def __init__(
        self,
        models: list[ModelConfig],
        scheduler: BatchScheduler | None = None,
        max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
        load_retry_interval_s: float = DEFAULT_LOAD_RETRY_INTERVAL_S,
        allow_version_labels_for_unavailable_models: bool = False,
    ) -> None:
        if max_num_load_retries < 0 or load_retry_interval_s < 0:
            raise PipelineError("--max-num-load-retries and the retry interval must be >= 0")
        self.models = {m.name: m for m in models}
        self.allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._labels: dict[str, dict[str, int]] = {n: {} for n in self.models}
        self._label_problems: dict[str, str] = {}  # model -> why a label is not applied yet
        self.scheduler = scheduler
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval_s = load_retry_interval_s
        self._servables: dict[str, dict[int, Servable]] = {n: {} for n in self.models}
        self._states: dict[str, dict[int, VersionState]] = {n: {} for n in self.models}
        # (name, version) -> (saved_model.pb fingerprint, failed attempts, next retry time)
        self._failed: dict[tuple[str, int], tuple[tuple, int, float]] = {}
        self._warned: dict[str, str] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.listeners: list[Callable[[], None]] = []
        self.metrics: ServingMetrics | None = None  # load attempts (serving/metrics.py)

    # -- lookups (request path) ------------------------------------------------------------

    def resolve(self, spec: model_pb2.ModelSpec) -> Servable:
        """ModelSpec -> loaded Servable; TF Serving's status codes and messages otherwise."""
        name = spec.name
        choice = spec.WhichOneof("version_choice")
        versions = self._servables.get(name)  # a name is only ever a key
        if choice == "version_label":
            labels = self._labels.get(name, {})
            if spec.version_label not in labels:
                raise invalid(f"Unrecognized servable version label: {clip(spec.version_label)}")
            version = labels[spec.version_label]
        elif choice == "version":
            version = spec.version.value
        else:
            if not versions:
                raise StatusError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Latest({clip(name)})",
                )
            return versions[max(versions)]
        servable = (versions or {}).get(version)
        if servable is None:
            raise StatusError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({clip(name)}, {version})",
            )
        return servable

    def version_states(
        self, name: str, version: int | None = None
    ) -> list[tuple[int, VersionState]]:
        states = dict(self._states.get(name, {}))
        if version is not None:
            if version not in states:
                raise StatusError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {clip(name)}",
                )
            return [(version, states[version])]
        if not states:
            raise StatusError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {clip(name)}"
            )
        return sorted(states.items())

    def state_snapshot(self, name: str) -> list[tuple[int, VersionState]]:
        """Every version of a model the manager knows, with its state (none: empty)."""
        return sorted(self._states.get(name, {}).items())

    def loaded_versions(self, name: str) -> list[int]:
        return sorted(self._servables.get(name, {}))

    def labels(self, name: str) -> dict[str, int]:
        """The version labels in force for a model (what a version_label request resolves)."""
        return dict(self._labels.get(name, {}))

    def available(self, name: str) -> bool:
        return bool(self._servables.get(name))

    # -- polling ---------------------------------------------------------------------------

    def poll(self) -> None:
        with self._poll_lock:
            for config in list(self.models.values()):
                if self._stopping.is_set():
                    return
                self._sync(config)
                self._apply_labels(config)
        for listener in self.listeners:
            listener()

    def reload(self, models: list[ModelConfig]) -> bool:
        """Swap in a new model list (a re-read models.config); True when it changed. New models
        and versions load at the next poll; a model no longer listed is unloaded now."""
        wanted = {m.name: m for m in models}
        with self._poll_lock:
            if wanted == self.models:
                return False
            for name in [n for n in self.models if n not in wanted]:
                for version in self.loaded_versions(name):
                    self._unload(name, version)
                with self._lock:
                    self._servables.pop(name, None)
                    self._labels.pop(name, None)
                self._label_problems.pop(name, None)
            for name in wanted:
                with self._lock:
                    self._servables.setdefault(name, {})
                    self._states.setdefault(name, {})
                    self._labels.setdefault(name, {})
            self.models = wanted
        log.info("model config reloaded: %s", ", ".join(sorted(wanted)))
        return True

    def _apply_labels(self, config: ModelConfig) -> None:
        """TF Serving's UpdateModelVersionLabelMap, per label: onto an available version; a new
        or unchanged label onto any version with allow_unavailable_labels; otherwise the label
        keeps its current version (if any) until its new one is available."""
        name = config.name
        current = self._labels.get(name, {})
        available = set(self._servables.get(name, {}))
        applied: dict[str, int] = {}
        waiting = []
        for label, version in sorted(config.labels.items()):
            new_or_same = label not in current or current[label] == version
            if version in available or (self.allow_unavailable_labels and new_or_same):
                applied[label] = version
            else:
                waiting.append(
                    f"Request to assign label to version {version} of model {name}, which is "
                    f"not currently available for inference (label '{label}')"
                )
                if label in current:
                    applied[label] = current[label]
        with self._lock:
            self._labels[name] = applied
        if waiting:
            if self._label_problems.get(name) != waiting[0]:
                log.warning("%s: it keeps its current version until then", waiting[0])
            self._label_problems[name] = waiting[0]
        else:
            self._label_problems.pop(name, None)

    def check_initial_load(self) -> None:
        """Like TF Serving at startup: a model whose wanted versions all failed is fatal, and so
        is a label on a version that is not available (unless allowed, see the docstring)."""
        for name in self.models:
            failed = [(v, s) for v, s in self._states[name].items() if s.error_code]
            if failed and not self._servables[name]:
                version, state = max(failed)
                raise PipelineError(
                    f"model {name} version {version} failed to load: {state.error_message}"
                )
            if name in self._label_problems:
                raise PipelineError(self._label_problems[name])

    def start_config_polling(
        self, loader: Callable[[], list[ModelConfig]], interval_s: float
    ) -> None:
        """Re-read the model config every interval_s seconds (TF Serving's
        --model_config_file_poll_wait_seconds); a file that cannot be read or parsed is logged
        and the config in force stays."""
        if interval_s <= 0:
            return

        def loop() -> None:
            while not self._stopping.wait(interval_s):
                try:
                    models = loader()
                except Exception as e:
                    log.error("failed to read the model config: %s", _one_line(e))
                    continue
                try:
                    if self.reload(models):
                        self.poll()
                except Exception as e:  # keep polling whatever one pass hit
                    log.error("model config reload failed: %s", _one_line(e))

        thread = threading.Thread(target=loop, name="model-config-poller", daemon=True)
        thread.start()
        self._config_thread = thread

    def _next_retry(self) -> float | None:
        """When the earliest pending load retry is due (time.monotonic), None if none is."""
        due = [
            at
            for _, attempts, at in list(self._failed.values())
            if attempts <= self.max_num_load_retries
        ]
        return min(due, default=None)

    def start_polling(self, interval_s: float) -> None:
        """Poll every interval_s seconds in a thread (<= 0: only the once at startup), and
        whenever a failed load's retry is due."""
        if self._thread is not None or (interval_s <= 0 and self._next_retry() is None):
            return

        def loop() -> None:
            while True:
                waits = [interval_s] if interval_s > 0 else []
                if (due := self._next_retry()) is not None:
                    waits.append(max(due - time.monotonic(), 0.0))
                if self._stopping.wait(min(waits) if waits else None):
                    return
                try:
                    self.poll()
                except Exception as e:  # keep polling whatever one pass hit
                    log.error("polling failed: %s: %s", type(e).__name__, _one_line(e))

        self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling; waits at most `timeout` s for a load in progress (the thread is a
        daemon: a load that takes longer does not keep the process alive)."""
        self._stopping.set()
        for thread in (self._thread, getattr(self, "_config_thread", None)):
            if thread is not None:
                thread.join(timeout)

    def _warn_once(self, name: str, message: str) -> None:
        if self._warned.get(name) != message:
            self._warned[name] = message
            log.warning("%s", message)

    def _sync(self, config: ModelConfig) -> None:
        try:
            on_disk = artifacts.served_versions(config.base_path)
        except Exception as e:
            self._warn_once(config.name, f"cannot list {config.base_path}: {_one_line(e)}")
            return
        if not on_disk:
            self._warn_once(
                config.name, f"no versions of model {config.name} found under {config.base_path}"
            )
        else:
            self._warned.pop(config.name, None)
        aspired = config.aspired(set(on_disk))
        for version in sorted(aspired - set(self._servables[config.name]), reverse=True):
            if self._stopping.is_set():
                return
            self._load(config.name, version, on_disk[version])
        keep = set(config.versions) if config.policy == "specific" else set()
        loaded = set(self._servables[config.name])
        for version in sorted(versions_to_unload(loaded, aspired, keep)):
            self._unload(config.name, version)

    def _set_state(self, name: str, version: int, state: VersionState) -> None:
        with self._lock:
            self._states[name] = {**self._states[name], version: state}

    def _load(self, name: str, version: int, path: str) -> None:
        fingerprint = _fingerprint(path)
        key = (name, version)
        attempts = 0
        if key in self._failed:
            failed_fingerprint, attempts, due = self._failed[key]
            if failed_fingerprint != fingerprint:
                attempts = 0  # changed since: a new version of the files, a fresh start
            elif attempts > self.max_num_load_retries or time.monotonic() < due:
                return  # retries used up (until the files change), or not due yet
        self._set_state(name, version, VersionState(State.LOADING))
        start = time.monotonic()
        try:
            servable = Servable(name, version, path)
            warmed = servable.warmup()
        except Exception as e:
            if self.metrics is not None:
                self.metrics.load_attempt(path, ok=False)
            code = (
                e.error_code
                if isinstance(e, tf.errors.OpError)
                else grpc.StatusCode.UNKNOWN.value[0]
            )
            attempts += 1
            retry = attempts <= self.max_num_load_retries
            self._failed[key] = (
                fingerprint,
                attempts,
                time.monotonic() + self.load_retry_interval_s,
            )
            state = State.LOADING if retry else State.END
            self._set_state(name, version, VersionState(state, code, _one_line(e)))
            interval = self.load_retry_interval_s
            then = (
                f"retry {attempts} of {self.max_num_load_retries} in {interval:g} s"
                if retry
                else "not retried until its saved_model.pb changes"
            )
            log.error(
                "failed to load model %s version %d from %s: %s (%s)",
                name, version, path, _one_line(e), then,
            )  # fmt: skip
            return
        self._failed.pop(key, None)
        if self.metrics is not None:
            self.metrics.load_attempt(path, ok=True)
        with self._lock:
            self._servables[name] = {**self._servables[name], version: servable}
            self._states[name] = {**self._states[name], version: VersionState(State.AVAILABLE)}
        log.info(
            "loaded model %s version %d from %s in %.2f s (signatures: %s; %d warmup requests)",
            name, version, path, time.monotonic() - start,
            ", ".join(sorted(servable.signatures)), warmed,
        )  # fmt: skip

    def _unload(self, name: str, version: int) -> None:
        self._set_state(name, version, VersionState(State.UNLOADING))
        with self._lock:
            self._servables[name] = {v: s for v, s in self._servables[name].items() if v != version}
        # Requests already holding the servable finish with it; it is freed after them.
        self._set_state(name, version, VersionState(State.END))
        log.info("unloaded model %s version %d", name, version)
