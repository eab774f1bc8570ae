"""Dynamic batching with TF Serving's parameters (`--enable_batching --batching_parameters_file`).

Semantics follow TF Serving's BasicBatchScheduler / BatchingSession:

- each (servable version, signature, input layout) has its own queue of batches; a request (a
  "task" of N rows) joins the open batch at the tail if it fits within `max_batch_size`, else
  opens a new one;
- a batch runs when it is full, when its oldest task has waited `batch_timeout_micros`, or when
  a newer batch is queued behind it; `num_batch_threads` threads run batches, shared by all queues;
- a task larger than `max_batch_size` is INVALID_ARGUMENT ("Task size N is larger than maximum
  input batch size M") — it is not split, as with TF Serving's default
  `enable_large_batch_splitting: false`;
- a queue already holding `max_enqueued_batches` batches rejects a task that needs a new batch
  with UNAVAILABLE ("The batch scheduling queue to which this task was submitted is full");
- `allowed_batch_sizes` pads a batch (repeating its first row) up to the next allowed size.

Differences, on purpose, so that one client's bad request never fails its batch-mates:

- a merged batch that fails (whatever the error) is split in two halves that run separately,
  recursively: the failing task is found in about 2 log2(N) extra runs, not N, and every other
  task gets its answer. The server also runs a request whose images look broken or too large
  from their headers alone, unmerged (`Servable.run`), so junk rarely reaches a merged batch;
- an empty task (0 rows) is merged like any other and gets its outputs' 0-row slice; padding
  repeats the first row of the first non-empty task.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TYPE_CHECKING

import grpc
import numpy as np

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from serving.errors import StatusError, invalid

if TYPE_CHECKING:
    from google.protobuf import message

    from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]  # a task's or a batch's tensors, by input or output name
BatchFn = Callable[[Arrays], Arrays]  # runs one merged batch

# Text-proto fields of tensorflow.serving.BatchingParameters that are parsed but have no effect
# here (they tune TF Serving's C++ scheduler or its large-batch splitting).
_IGNORED_FIELDS = (
    "thread_pool_name",
    "pad_variable_length_inputs",
    "enable_large_batch_splitting",
    "max_execution_batch_size",
    "batch_padding_policy",
)


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's defaults (BasicBatchScheduler::Options) where the file leaves a field out."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        checks = (
            (self.max_batch_size >= 1, "max_batch_size must be >= 1"),
            (self.batch_timeout_micros >= 0, "batch_timeout_micros must be >= 0"),
            (self.max_enqueued_batches >= 1, "max_enqueued_batches must be >= 1"),
            (self.num_batch_threads >= 1, "num_batch_threads must be >= 1"),
            (
                list(self.allowed_batch_sizes) == sorted(set(self.allowed_batch_sizes)),
                "allowed_batch_sizes must be strictly increasing",
            ),
            (
                not self.allowed_batch_sizes or self.allowed_batch_sizes[-1] == self.max_batch_size,
                "the last of allowed_batch_sizes must equal max_batch_size",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _batching_parameters_class() -> type[message.Message]:
    """tensorflow.serving.BatchingParameters (session_bundle_config.proto), built at runtime:
    the tensorflow-serving-api wheel ships no Python module for it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    int64 = (F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL)
    # name: (number, (type, type_name, label)); 1-7 as in session_bundle_config.proto (the text
    # format needs only names and types; the last three are parsed to be ignored, see above)
    fields = {
        "max_batch_size": (1, int64),
        "batch_timeout_micros": (2, int64),
        "max_enqueued_batches": (3, int64),
        "num_batch_threads": (4, int64),
        "thread_pool_name": (5, (F.TYPE_MESSAGE, ".google.protobuf.StringValue", F.LABEL_OPTIONAL)),
        "allowed_batch_sizes": (6, (F.TYPE_INT64, None, F.LABEL_REPEATED)),
        "pad_variable_length_inputs": (7, (F.TYPE_BOOL, None, F.LABEL_OPTIONAL)),
        "enable_large_batch_splitting": (8, (F.TYPE_BOOL, None, F.LABEL_OPTIONAL)),
        "max_execution_batch_size": (9, int64),
        "batch_padding_policy": (10, (F.TYPE_STRING, None, F.LABEL_OPTIONAL)),
    }
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="transfer_pipeline/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    for name, (number, (type_, type_name, label)) in fields.items():
        field = message.field.add(name=name, number=number, type=type_, label=label)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file_proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


def parse_batching_parameters(text: str, source: str = "batching parameters") -> BatchingParameters:
    """TF Serving's batching_parameters.txt (text proto) -> BatchingParameters."""
    from google.protobuf import text_format

    proto = _batching_parameters_class()()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise PipelineError(f"{source}: not a valid BatchingParameters text proto: {e}") from None
    values: dict = {}
    for f in dataclasses.fields(BatchingParameters):  # the fields the local server honours
        if f.name == "allowed_batch_sizes":
            if proto.allowed_batch_sizes:
                values[f.name] = tuple(proto.allowed_batch_sizes)
        elif proto.HasField(f.name):  # an Int64Value wrapper: absent means TF Serving's default
            values[f.name] = getattr(proto, f.name).value
    for name in _IGNORED_FIELDS:
        field = proto.DESCRIPTOR.fields_by_name[name]
        is_set = proto.HasField(name) if field.message_type else bool(getattr(proto, name))
        if is_set:
            log.warning("%s: %s is not supported by the local server; ignored", source, name)
    try:
        return BatchingParameters(**values)
    except ValueError as e:
        raise PipelineError(f"{source}: {e}") from None


def load_batching_parameters(path: str) -> BatchingParameters:
    try:
        text = fsutil.read_text(path)
    except Exception:
        raise PipelineError(
            f"batching parameters file {path} does not exist or cannot be read"
        ) from None
    return parse_batching_parameters(text, source=str(path))


# ---------------------------------------------------------------------------------------------


def task_size(inputs: Arrays) -> int:
    """Rows in a request: every input must share its 0th dimension (as TF Serving requires)."""
    sizes: set[int] = set()
    for name, array in inputs.items():
        if array.ndim == 0:
            raise invalid(
                f"Batching Run() input tensors must have at least one dimension: '{name}'"
            )
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


@dataclasses.dataclass
class _Task:
    inputs: Arrays
    size: int
    future: Future[Arrays]
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class _Batch:
    created: float
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    size: int = 0


@dataclasses.dataclass
class _Queue:
    fn: BatchFn
    batches: collections.deque[_Batch] = dataclasses.field(default_factory=collections.deque)


class BatchScheduler:
    """Merges concurrent tasks into batches along dim 0, runs `fn` once per batch, splits back."""

    def __init__(self, params: BatchingParameters, metrics: ServingMetrics | None = None) -> None:
        self.params = params
        self.metrics = metrics  # TF Serving's batching_session metrics (serving/metrics.py)
        self._queues: dict[Hashable, _Queue] = {}
        self._cond = threading.Condition()
        self._flushing = False  # run batches without waiting for their timeout
        self._closed = False  # reject new tasks
        self.num_batches = 0
        self.num_tasks = 0
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, fn: BatchFn, inputs: Arrays) -> Future[Arrays]:
        """Queue one task; the Future yields this task's rows of `fn`'s outputs."""
        size = task_size(inputs)
        if size > self.params.max_batch_size:
            raise invalid(
                f"Task size {size} is larger than maximum input batch size "
                f"{self.params.max_batch_size}"
            )
        task = _Task(inputs, size, Future())
        if self.metrics is not None:
            self.metrics.input_batch_size.observe(size)
        with self._cond:
            if self._closed:
                raise StatusError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            queue = self._queues.setdefault(key, _Queue(fn))
            tail = queue.batches[-1] if queue.batches else None
            if tail is None or tail.size + size > self.params.max_batch_size:
                if len(queue.batches) >= self.params.max_enqueued_batches:
                    raise StatusError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full",
                    )
                tail = _Batch(created=time.monotonic())
                queue.batches.append(tail)
            tail.tasks.append(task)
            tail.size += size
            self.num_tasks += 1
            self._cond.notify()
        return task.future

    def flush(self) -> None:
        """From now on, run batches as soon as a thread is free (shutdown: drain fast)."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Reject new tasks, run what is queued without waiting for timeouts, end the threads;
        waits at most `timeout` s in all (the threads are daemons: a batch still running then
        does not keep the process alive)."""
        with self._cond:
            self._flushing = self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def _worker(self) -> None:
        while True:
            with self._cond:
                picked = self._next_batch()
                while picked is None:
                    if self._closed and not self._queues:
                        return
                    self._cond.wait(self._wait_seconds())
                    picked = self._next_batch()
                self.num_batches += 1
            run_batch(*picked, self.params.allowed_batch_sizes, self.metrics)

    def _ready(self, queue: _Queue, now: float) -> bool:
        head = queue.batches[0]
        timeout = self.params.batch_timeout_micros / 1e6
        return (
            self._flushing
            or len(queue.batches) > 1
            or head.size >= self.params.max_batch_size
            or now - head.created >= timeout
        )

    def _next_batch(self) -> tuple[BatchFn, _Batch] | None:
        """Pop the oldest ready batch (caller holds the lock)."""
        now = time.monotonic()
        ready = [(q.batches[0].created, k) for k, q in self._queues.items() if self._ready(q, now)]
        if not ready:
            return None
        key = min(ready, key=lambda item: item[0])[1]
        queue = self._queues[key]
        batch = queue.batches.popleft()
        if not queue.batches:
            del self._queues[key]
        return queue.fn, batch

    def _wait_seconds(self) -> float | None:
        if not self._queues:
            return None
        timeout = self.params.batch_timeout_micros / 1e6
        oldest = min(q.batches[0].created for q in self._queues.values())
        return max(oldest + timeout - time.monotonic(), 0.0)


def _padded_size(size: int, allowed: tuple[int, ...]) -> int:
    return next((a for a in allowed if a >= size), size)


def _merge(tasks: list[_Task], allowed: tuple[int, ...]) -> tuple[Arrays, int]:
    total = sum(t.size for t in tasks)
    padding = _padded_size(total, allowed) - total if total else 0
    source = next((t for t in tasks if t.size), tasks[0])  # a task with a row to repeat
    merged: Arrays = {}
    for name in tasks[0].inputs:
        parts = [t.inputs[name] for t in tasks]
        if padding:
            parts.append(np.repeat(source.inputs[name][:1], padding, axis=0))
        merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return merged, total + padding


def _split(outputs: Arrays, tasks: list[_Task], batch_size: int) -> None:
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != batch_size:
            raise StatusError(
                grpc.StatusCode.INTERNAL,
                f"batched output '{name}' has shape {list(value.shape)}; expected "
                f"{batch_size} rows, one per input row",
            )
    start = 0
    for task in tasks:
        end = start + task.size
        task.future.set_result({name: value[start:end] for name, value in outputs.items()})
        start = end


def run_batch(
    fn: BatchFn, batch: _Batch, allowed: tuple[int, ...] = (), metrics: ServingMetrics | None = None
) -> int:
    """Run a batch's (not cancelled) tasks merged; returns how many times fn ran."""
    tasks = [t for t in batch.tasks if t.future.set_running_or_notify_cancel()]
    if metrics is not None:
        from serving.metrics import THREAD_POOL_NAME

        now = time.monotonic()
        for t in tasks:
            metrics.queuing_latency.observe((now - t.enqueued) * 1e6, THREAD_POOL_NAME)
    return _run_tasks(fn, tasks, allowed, metrics) if tasks else 0


def _run_tasks(
    fn: BatchFn, tasks: list[_Task], allowed: tuple[int, ...], metrics: ServingMetrics | None
) -> int:
    """Merged; on failure bisect, so only the task(s) at fault fail. Never raises."""
    try:
        merged, size = _merge(tasks, allowed)
        if metrics is not None:  # TF Serving's ProcessBatch: padded size, padding, one run
            metrics.processed_batch_size.observe(size)
            metrics.padding_size.observe(size - sum(t.size for t in tasks), str(size))
            metrics.wrapped_run_count.inc()
        _split(fn(merged), tasks, size)
        return 1
    except Exception as e:  # never leave a client waiting
        if len(tasks) == 1:
            _fail(tasks, e)
            return 1
    half = len(tasks) // 2
    return (
        1
        + _run_tasks(fn, tasks[:half], allowed, metrics)
        + _run_tasks(fn, tasks[half:], allowed, metrics)
    )


def _fail(tasks: list[_Task], error: Exception) -> None:
    for task in tasks:
        if not task.future.done():
            task.future.set_exception(error)
