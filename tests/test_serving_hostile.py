"""Hostile requests cannot take a model server down: decompression bombs and shape-expanding
protos (against a live server process and against the SavedModel in process), stalled
connections, batch-mates of bad requests, a shutdown under a request that will not end, and a
seeded fuzz run whose every answer is a status from docs/serving.md's table."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import serving_models
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from pipeline_components.core.image_header import DEFAULT_MAX_IMAGE_PIXELS
from serving.batching import BatchingParameters
from serving.errors import StatusError
from serving.servables import Servable
from serving.server import start_server
from serving.services import ServerLimits
from serving.tensors import shape_proto

pytestmark = pytest.mark.timeout(300)

LIMIT = DEFAULT_MAX_IMAGE_PIXELS
IMAGE = serving_models.encode_image(seed=7)
SERVING_DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"


def bmp_claiming(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    return header + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)


BOMBS = {
    "png 23000x23000 1-bit": lambda: serving_models.png_bomb(23_000),
    "gif 65535x65535 screen": lambda: serving_models.gif_image((65535, 65535)),
    "gif 65535x65535 frame": lambda: serving_models.gif_image((1, 1), [(65535, 65535)]),
    "gif 3 frames of 4000x4000": lambda: serving_models.gif_image((4000, 4000), [(4000, 4000)] * 3),
    "jpeg claiming 60000x60000": lambda: serving_models.jpeg_claiming(60_000, 60_000),
    "bmp claiming 60000x60000": lambda: bmp_claiming(60_000, 60_000),
}


def tensor(dtype, shape, **fields) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(shape), **fields)


# Tiny protos that claim huge tensors: (signature, input, proto, words in the message)
EXPANDING = {
    "float [2000,224,224,3] from one value": (
        "predict_pixels", "pixels",
        tensor(types_pb2.DT_FLOAT, [2000, 224, 224, 3], float_val=[1.0]), "--max-request-bytes",
    ),
    "20,000,000 strings from one": (
        "serving_default", "images",
        tensor(types_pb2.DT_STRING, [20_000_000], string_val=[b"x"]), "--max-string-elements",
    ),
    "float tensor_content shorter than its shape": (
        "predict_pixels", "pixels",
        tensor(types_pb2.DT_FLOAT, [4, 16, 16, 3], tensor_content=b"\0" * 12), "tensor_content",
    ),
    "dimensions whose product overflows int64": (
        "predict_pixels", "pixels",
        tensor(types_pb2.DT_FLOAT, [2**62, 2**62, 16, 3]), "--max-request-bytes",
    ),
    "float [1,16,16,3] holding 2 of its 768 values": (
        "predict_pixels", "pixels",
        tensor(types_pb2.DT_FLOAT, [1, 16, 16, 3], float_val=[1.0, 2.0]), "holds 2 values",
    ),
}  # fmt: skip


def images_request(images, model="m") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model))
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def proto_request(signature, name, proto, model="m") -> predict_pb2.PredictRequest:
    spec = model_pb2.ModelSpec(name=model, signature_name=signature)
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs[name].CopyFrom(proto)
    return request


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class PeakRSS:
    """Highest VmRSS of a process (MB) while the block runs, sampled every 2 ms: catches an
    allocation that is freed again before the block ends."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self.start = status_kb(self.pid, "VmRSS") / 1024
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kb(self.pid, "VmRSS") / 1024)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.start


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hostile") / "m"
    serving_models.export_tiny_model(str(base / "1"), num_classes=3, favourite=1, seed=3)
    return base


@contextlib.contextmanager
def server_process(base: Path, work: Path, *args: str):
    """`transfer-pipeline serve` in its own process (what is measured is its RSS alone), gRPC
    and REST on free ports; yields (process with .rest_url, gRPC target)."""
    port_file = work / f"port-{time.monotonic_ns()}"
    rest_port_file = work / f"rest-port-{time.monotonic_ns()}"
    command = [
        sys.executable, "-m", "pipeline_components.cli", "serve", "--model-base-path", str(base),
        "--model-name", "m", "--port", "0", "--port-file", str(port_file),
        "--rest-api-port", "auto", "--rest-api-port-file", str(rest_port_file), *args,
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    log_path = work / f"server-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        proc.log_path = log_path
        proc.rest_url = f"http://127.0.0.1:{rest_port_file.read_text().strip()}"
        yield proc, f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def live(model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("live")
    params = work / "batching_parameters.txt"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n")
    with (
        server_process(
            model_dir, work, "--enable-batching", "--batching-parameters-file", str(params)
        ) as (proc, target),
        grpc.insecure_channel(target) as channel,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(images_request([IMAGE]), timeout=30)  # warm
        yield proc, stub


# -- decompression bombs and expanding protos -----------------------------------------------


@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_are_invalid_argument_from_a_live_server_fast_and_small(live, name):
    proc, stub = live
    data = BOMBS[name]()
    assert len(data) < 70_000
    hwm = status_kb(proc.pid, "VmHWM") / 1024
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(images_request([IMAGE, data]), timeout=30)
    assert time.monotonic() - start < 2.0
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element 1 is" in err.value.details()
    assert f"over the limit of {LIMIT} pixels (max_image_pixels)" in err.value.details()
    assert status_kb(proc.pid, "VmHWM") / 1024 - hwm < 300  # peak memory of the server
    assert stub.Predict(images_request([IMAGE]), timeout=10).outputs["scores"]


def test_bombs_are_invalid_argument_in_the_saved_model_in_process(model_dir):
    """What TF Serving runs: the check is in the graph, not in this project's server."""
    fn = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    fn(images=tf.constant([IMAGE]))
    for name, make in BOMBS.items():
        data = make()
        with PeakRSS(os.getpid()) as rss, pytest.raises(tf.errors.InvalidArgumentError) as err:
            start = time.monotonic()
            fn(images=tf.constant([IMAGE, data]))
        assert time.monotonic() - start < 2.0, name
        assert f"over the limit of {LIMIT} pixels (max_image_pixels)" in str(err.value), name
        assert rss.growth < 300, (name, rss.growth)


@pytest.mark.parametrize("name", list(EXPANDING))
def test_expanding_protos_are_invalid_argument_from_a_live_server(live, name):
    proc, stub = live
    signature, input_name, proto, words = EXPANDING[name]
    request = proto_request(signature, input_name, proto)
    assert len(request.SerializeToString()) < 200
    hwm = status_kb(proc.pid, "VmHWM") / 1024
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=30)
    assert time.monotonic() - start < 2.0
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details() and f"input '{input_name}'" in err.value.details()
    assert status_kb(proc.pid, "VmHWM") / 1024 - hwm < 300


def test_expanding_protos_are_refused_before_materialising_in_process(model_dir):
    servable = Servable("m", 1, str(model_dir / "1"))
    for name, (signature, input_name, proto, words) in EXPANDING.items():
        with PeakRSS(os.getpid()) as rss, pytest.raises(StatusError) as err:
            start = time.monotonic()
            servable.signature(signature).decode({input_name: proto})
        assert time.monotonic() - start < 2.0, name
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.message
        assert rss.growth < 300, (name, rss.growth)


def test_client_strings_are_clipped_in_answers(live):
    _, stub = live
    request = images_request([IMAGE], model="m" * 100_000)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(err.value.details()) < 200 and "(100000 chars)" in err.value.details()


# -- stalled connections --------------------------------------------------------------------


def stalled_call(port: int, path: str):
    """An HTTP/2 connection with one gRPC call whose headers and first 5 bytes (a message
    header promising 1 MB) are sent, and nothing more, ever."""
    import h2.config
    import h2.connection

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [
        (":method", "POST"), (":scheme", "http"), (":path", path),
        (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])  # fmt: skip
    conn.send_data(1, b"\x00" + struct.pack(">I", 1 << 20))
    sock.sendall(conn.data_to_send())
    return sock, conn


def grpc_status_of(call, timeout: float) -> str | None:
    """Read the server's frames until the call's trailers; their grpc-status."""
    import h2.events

    sock, conn = call
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            return None
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                found = {_text(k): _text(v) for k, v in event.headers}
                if "grpc-status" in found:
                    return found["grpc-status"]
        sock.sendall(conn.data_to_send())
    return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_stalled_connections_do_not_starve_predict_or_health(model_dir):
    limits = ServerLimits(request_timeout_s=3.0)
    handle = start_server(str(model_dir), "m", limits=limits, poll_wait_seconds=0)
    stalled = []
    try:
        methods = ["/tensorflow.serving.PredictionService/Predict", "/grpc.health.v1.Health/Check"]
        stalled = [stalled_call(handle.port, methods[i % 2]) for i in range(32)]
        time.sleep(0.5)  # the server has seen all 32 calls' headers
        with grpc.insecure_channel(handle.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(3):
                start = time.monotonic()
                response = stub.Predict(images_request([IMAGE, IMAGE]), timeout=2)
                assert len(response.outputs["scores"].float_val) == 2
                check = health.Check(health_pb2.HealthCheckRequest(service="m"), timeout=2)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                assert time.monotonic() - start < 2.0
        # the server's own deadline ends a call whose body never comes: DEADLINE_EXCEEDED (4)
        assert grpc_status_of(stalled[0], timeout=10) == "4"
    finally:
        for sock, _ in stalled:
            sock.close()
        handle.stop(grace=1)


# -- many calls at once: well-behaved clients wait, rude ones are refused ------------------


def concurrent_calls(target: str, calls: int, channels: int) -> list:
    """`calls` Predicts in flight at once over `channels` fresh channels; the failures."""
    opened = [grpc.insecure_channel(target) for _ in range(channels)]
    try:
        stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in opened]
        request = images_request([IMAGE])
        futures = [stubs[i % channels].Predict.future(request, timeout=60) for i in range(calls)]
        failures = []
        for future in futures:  # each bounded by its deadline
            try:
                assert len(future.result().outputs["scores"].float_val) == 1
            except grpc.RpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")
        return failures
    finally:
        for channel in opened:
            channel.close()


def test_200_calls_at_once_on_one_channel_or_on_200_channels_all_succeed(model_dir):
    """gRPC's normal use is one channel with many calls in flight. A connection carries at most
    --max-concurrent-streams (100) at once: a client queues the rest until a stream ends. The
    server refused them instead (13-24% UNAVAILABLE "Stream removed (RST_STREAM error code 7)"):
    gRPC's overload protection counted streams not yet freed after their answer."""
    handle = start_server(str(model_dir), "m", poll_wait_seconds=0)
    try:
        shared = [concurrent_calls(handle.target, 200, channels=1) for _ in range(5)]
        separate = concurrent_calls(handle.target, 200, channels=200)
    finally:
        handle.stop(grace=1)
    assert [len(f) for f in shared] == [0] * 5, {f for round_ in shared for f in round_}
    assert separate == []


class RudeH2Connection:
    """A raw HTTP/2 connection that reads the server's SETTINGS but ignores its stream limit,
    opening stalled gRPC calls (headers and 5 bytes promising 1 MB, never the rest)."""

    def __init__(self, port: int):
        import h2.config
        import h2.connection

        class Rude(h2.connection.H2Connection):
            open_outbound_streams = property(lambda self: 0)  # h2 would enforce the limit

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.port = port
        self.conn = Rude(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.refused: set[int] = set()
        self.statuses: dict[int, str] = {}
        while self.conn.remote_settings.max_concurrent_streams > 10_000:  # not seen yet
            self.read(1.0)

    def open_stalled(self, count: int) -> None:
        for _ in range(count):
            stream = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream, [
                (":method", "POST"), (":scheme", "http"),
                (":path", "/tensorflow.serving.PredictionService/Predict"),
                (":authority", f"127.0.0.1:{self.port}"), ("content-type", "application/grpc"),
                ("te", "trailers"),
            ])  # fmt: skip
            self.conn.send_data(stream, b"\x00" + struct.pack(">I", 1 << 20))
        self.sock.sendall(self.conn.data_to_send())

    def read(self, seconds: float) -> None:
        import h2.events

        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.StreamReset) and event.error_code == 7:
                self.refused.add(event.stream_id)
            if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                found = {_text(k): _text(v) for k, v in event.headers}
                if "grpc-status" in found:
                    self.statuses[event.stream_id] = found["grpc-status"]
        self.sock.sendall(self.conn.data_to_send())


def test_streams_over_the_limits_are_refused_and_the_server_stays_responsive(model_dir):
    """The bounds the fix keeps: a client that ignores the advertised stream limit gets
    REFUSED_STREAM for every stream over it, RPCs over --max-concurrent-rpcs (server-wide) get
    RESOURCE_EXHAUSTED, and stalled calls end at --request-timeout-seconds."""
    limits = ServerLimits(max_concurrent_streams=10, max_concurrent_rpcs=16, request_timeout_s=4)
    handle = start_server(str(model_dir), "m", limits=limits, poll_wait_seconds=0)
    rude = []
    try:
        rude = [RudeH2Connection(handle.port), RudeH2Connection(handle.port)]
        rude[0].open_stalled(15)  # 10 fit the connection, 5 do not
        time.sleep(0.3)
        rude[1].open_stalled(10)  # fit the connection; 4 are over the server's 16
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for r in rude:
                r.read(0.05)
        assert len(rude[0].refused) == 5 and not rude[1].refused
        assert list(rude[1].statuses.values()).count("8") == 4  # RESOURCE_EXHAUSTED
        assert not rude[0].statuses  # the 10 accepted streams are still waiting for bodies
        while len(rude[0].statuses) < 10 and time.monotonic() < deadline + 5:
            rude[0].read(0.1)
        assert set(rude[0].statuses.values()) == {"4"}  # DEADLINE_EXCEEDED, by the server
        assert concurrent_calls(handle.target, 20, channels=1) == []  # slots free again
    finally:
        for r in rude:
            r.sock.close()
        handle.stop(grace=1)


# -- batching: one client's bad or empty request never fails its batch-mates ---------------


def concurrent_predictions(handle, requests: dict, first=None):
    """Send `first` (if any), wait until it is queued (or answered), then the rest at once,
    each on its own connection made beforehand; the outcomes by key."""
    outcomes = {}
    items = ([first] if first else []) + list(requests.items())
    channels = {key: grpc.insecure_channel(handle.target) for key, _ in items}
    for channel in channels.values():
        grpc.channel_ready_future(channel).result(timeout=10)

    def send(key, request):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channels[key])
        try:
            outcomes[key] = stub.Predict(request, timeout=30)
        except grpc.RpcError as e:
            outcomes[key] = e

    threads = [threading.Thread(target=send, args=item) for item in items]
    try:
        if first is not None:
            threads[0].start()
            deadline = time.monotonic() + 10
            while handle.manager.scheduler.num_tasks < 1 and threads[0].is_alive():
                assert time.monotonic() < deadline
                time.sleep(0.005)
        for t in threads[1 if first else 0 :]:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for channel in channels.values():
            channel.close()
    return outcomes


def test_an_empty_request_never_fails_its_batch_mates(model_dir):
    params = BatchingParameters(
        max_batch_size=8, batch_timeout_micros=500_000, num_batch_threads=1,
        allowed_batch_sizes=(4, 8),
    )  # fmt: skip
    handle = start_server(
        str(model_dir), "m", enable_batching=True, batching_parameters=params, poll_wait_seconds=0
    )
    fn = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    images = [serving_models.encode_image(seed=40 + i) for i in range(3)]
    try:
        outcomes = concurrent_predictions(
            handle,
            {i: images_request([img]) for i, img in enumerate(images)},
            first=("empty", images_request(np.array([], dtype=object))),
        )
        batches = handle.manager.scheduler.num_batches
    finally:
        handle.stop(grace=1)
    assert batches == 1  # all four were merged (and padded from 3 rows to 4)
    empty = outcomes["empty"]
    assert not isinstance(empty, grpc.RpcError), empty
    assert tf.make_ndarray(empty.outputs["probabilities"]).shape == (0, 3)
    for i, img in enumerate(images):
        assert not isinstance(outcomes[i], grpc.RpcError), outcomes[i]
        expected = fn(images=tf.constant([img]))["probabilities"].numpy()
        got = tf.make_ndarray(outcomes[i].outputs["probabilities"])
        np.testing.assert_allclose(got, expected, atol=1e-6)


def corrupt_png(seed: int) -> bytes:
    """Headers intact (IHDR, IEND): merged with others; the pixel data fails to decode."""
    data = bytearray(serving_models.encode_image(seed=seed, size=(16, 16)))
    start = data.find(b"IDAT") + 8
    data[start : start + 16] = b"\xff" * 16
    return bytes(data)


@pytest.mark.parametrize("bad", ["corrupt body", "not an image"])
def test_a_bad_request_fails_alone_without_n_plus_1_runs(model_dir, bad):
    params = BatchingParameters(
        max_batch_size=16, batch_timeout_micros=500_000, num_batch_threads=1
    )
    handle = start_server(
        str(model_dir), "m", enable_batching=True, batching_parameters=params, poll_wait_seconds=0
    )
    images = [serving_models.encode_image(seed=50 + i) for i in range(8)]
    junk = corrupt_png(1) if bad == "corrupt body" else b"GIF89a, or so it says"
    try:
        servable = handle.manager.resolve(model_pb2.ModelSpec(name="m"))
        outcomes = concurrent_predictions(
            handle,
            {i: images_request([img]) for i, img in enumerate(images)},
            first=("bad", images_request([IMAGE, junk])),
        )
        calls = servable.num_calls
    finally:
        handle.stop(grace=1)
    assert isinstance(outcomes["bad"], grpc.RpcError)
    assert outcomes["bad"].code() == grpc.StatusCode.INVALID_ARGUMENT
    for i in range(len(images)):
        assert not isinstance(outcomes[i], grpc.RpcError), outcomes[i]
    # 9 requests: the old re-run-each-alone cost 1 + 9 model runs
    if bad == "corrupt body":  # merged, then bisected: 1 + 2 + 2 + 2 + 2 runs at most
        assert calls <= 9
    else:  # judged from its header: run alone, never merged
        assert calls <= 2


# -- shutdown -------------------------------------------------------------------------------


def test_sigterm_ends_the_process_within_drain_plus_5_s_during_an_endless_request(tmp_path):
    base = tmp_path / "slow"
    serving_models.export_slow_model(str(base / "1"))
    with server_process(base, tmp_path, "--drain-seconds", "1") as (proc, target):
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m"))
        request.inputs["seconds"].CopyFrom(tf.make_tensor_proto([120.0], dtype=tf.float32))
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            call = stub.Predict.future(request, timeout=180)
            time.sleep(1.5)  # running inside TensorFlow now
            assert not call.done()
            proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            proc.wait(60)
            took = time.monotonic() - start
            assert call.exception(10) is not None  # the client is told, not left hanging
    assert took < 1 + 5, took
    assert proc.returncode == 0
    assert "still running past the drain time" in proc.log_path.read_text()


# -- fuzzing --------------------------------------------------------------------------------


def documented_statuses() -> set[str]:
    """The gRPC statuses in docs/serving.md's table of request problems."""
    text = SERVING_DOC.read_text()
    table = text[text.index("| request problem | gRPC status |") :].split("\n\n")[0]
    return set(re.findall(r"\|\s*([A-Z_]{2,})\s*\|", table))


def real_images(rng) -> list[bytes]:
    import io

    from PIL import Image

    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        buf = io.BytesIO()
        pixels = rng.integers(0, 255, (int(rng.integers(4, 40)), int(rng.integers(4, 40)), 3))
        Image.fromarray(pixels.astype(np.uint8)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


DTYPES = [types_pb2.DT_FLOAT, types_pb2.DT_STRING, types_pb2.DT_INT64, types_pb2.DT_DOUBLE,
          types_pb2.DT_HALF, types_pb2.DT_BOOL, types_pb2.DT_UINT8, types_pb2.DT_COMPLEX64,
          types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT, 999]  # fmt: skip


def fuzz_request(rng, images: list[bytes]) -> predict_pb2.PredictRequest:
    kind = int(rng.integers(0, 8))
    big = "x" * int(rng.choice([10, 5000, 200_000]))
    if kind == 0:  # random dtype, shape and values
        proto = tensor_pb2.TensorProto(dtype=int(rng.choice(DTYPES)))
        for _ in range(int(rng.integers(0, 6))):
            proto.tensor_shape.dim.add(size=int(rng.choice([-1, 0, 1, 3, 16, 10**6, 2**40])))
        proto.tensor_shape.unknown_rank = bool(rng.random() < 0.05)
        proto.float_val.extend(rng.random(int(rng.integers(0, 50))).tolist())
        proto.string_val.extend([rng.bytes(int(rng.integers(0, 20)))] * int(rng.integers(0, 3)))
        if rng.random() < 0.3:
            proto.tensor_content = rng.bytes(int(rng.integers(0, 64)))
        return proto_request(str(rng.choice(["serving_default", "predict_pixels", "", big])),
                             str(rng.choice(["images", "pixels", big])), proto)  # fmt: skip
    if kind in (1, 2):  # truncated or mutated real images
        data = bytearray(images[int(rng.integers(0, len(images)))])
        if kind == 1:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        return images_request([IMAGE, bytes(data)])
    if kind == 3:  # random bytes, some behind real magic numbers
        magic = rng.choice([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff", b"BM"])
        return images_request([magic + rng.bytes(int(rng.integers(0, 300)))])
    if kind == 4:  # huge names everywhere
        request = images_request([IMAGE], model=str(rng.choice(["m", big])))
        request.model_spec.signature_name = str(rng.choice(["", big]))
        if rng.random() < 0.5:
            request.model_spec.version_label = big
        request.output_filter.append(str(rng.choice(["scores", big])))
        request.inputs[big].CopyFrom(request.inputs["images"])
        return request
    if kind == 5:  # bombs
        return images_request([IMAGE, BOMB_CACHE[int(rng.integers(0, len(BOMB_CACHE)))]])
    if kind == 6:  # pixels of random shapes and layouts
        shape = [int(rng.integers(0, 3)), 16, 16, 3] if rng.random() < 0.7 else [2, 7, 7, 3]
        values = rng.random(int(np.prod(shape))).astype(np.float32)
        proto = tf.make_tensor_proto(values.reshape(shape))
        return proto_request("predict_pixels", "pixels", proto)
    return images_request(images[: int(rng.integers(0, len(images)))])  # valid, maybe empty


BOMB_CACHE: list[bytes] = []


def test_seeded_fuzz_gets_only_documented_statuses_and_the_server_stays_up(live):
    proc, stub = live
    allowed = documented_statuses()
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "DEADLINE_EXCEEDED"} <= allowed
    assert not {"UNKNOWN", "INTERNAL"} & allowed
    BOMB_CACHE[:] = [make() for make in BOMBS.values()]
    rng = np.random.default_rng(20261129)
    images = real_images(rng)
    requests = [fuzz_request(rng, images) for _ in range(2000)]
    rss = status_kb(proc.pid, "VmRSS") / 1024
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def worker(chunk):
        for request in chunk:
            try:
                stub.Predict(request, timeout=30)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                assert "\n" not in (e.details() or ""), e.details()
                assert len(e.details() or "") < 1000, e.details()[:200]
            with lock:
                codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=worker, args=(requests[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    print("fuzz statuses:", codes)
    assert sum(codes.values()) == 2000, codes
    assert set(codes) <= allowed, codes
    assert codes.get("OK", 0) > 100 and codes.get("INVALID_ARGUMENT", 0) > 500, codes
    assert proc.poll() is None
    assert stub.Predict(images_request([IMAGE]), timeout=10).outputs["scores"]
    assert status_kb(proc.pid, "VmRSS") / 1024 - rss < 300


# -- REST: the same hostile requests as JSON ---------------------------------------------------

REST_CODES = {200, 400, 404, 413, 501}  # serving/rest.py's table, without 5xx for a bad request


def random_json(rng, depth: int = 0):
    kind = int(rng.integers(0, 8 if depth < 6 else 5))
    if kind == 0:
        return float(rng.choice([0.5, -1e308, 1e308, 3.0, float("nan")]))
    if kind == 1:
        return int(rng.choice([0, -1, 2**31, 2**63, -(2**64)]))
    if kind == 2:
        return str(rng.choice(["", "x" * 300, "images", "🐶", "\u0000"]))
    if kind == 3:
        return bool(rng.random() < 0.5)
    if kind == 4:
        return None
    if kind == 5:
        return {"b64": str(rng.choice(["", "!!", "eA==", "eA", "=" * 5]))}
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    keys = ["instances", "inputs", "signature_name", "images", "pixels", "b64"]
    return {
        str(rng.choice(keys)): random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))
    }


def fuzz_rest_request(rng, images: list[bytes]) -> tuple[str, str, bytes]:
    """(method, path, body) of a seeded hostile REST request."""
    import base64
    import json

    path = str(rng.choice([
        "/v1/models/m:predict", "/v1/models/m:predict", "/v1/models/m/versions/1:predict",
        "/v1/models/nope:predict", "/v1/models/m/labels/x:predict",
        "/v1/models/m/versions/99:predict",
        "/v1/models/m%ff:predict", "/v1/models/" + "m" * 5000 + ":predict", "/v1/models/m:classify",
        "/v1/models/m", "/v1/models/m/metadata", "/v1/models/m/versions/99999999999999999999",
        "/v1/../etc/passwd", "/",
    ]))  # fmt: skip
    method = "GET" if ":" not in path.rsplit("/", 1)[-1] and rng.random() < 0.7 else "POST"
    b64 = lambda data: {"b64": base64.b64encode(data).decode()}  # noqa: E731
    kind = int(rng.integers(0, 9))
    if kind == 0:  # random JSON documents
        body = json.dumps(random_json(rng)).encode()
    elif kind == 1:  # images, mutated or truncated, in either format
        data = bytearray(images[int(rng.integers(0, len(images)))])
        for _ in range(int(rng.integers(0, 6))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data)))]
        key = str(rng.choice(["instances", "inputs"]))
        body = json.dumps({key: [b64(IMAGE), b64(bytes(data))]}).encode()
    elif kind == 2:  # bombs
        body = json.dumps(
            {"instances": [b64(BOMB_CACHE[int(rng.integers(0, len(BOMB_CACHE)))])]}
        ).encode()
    elif kind == 3:  # nesting, deep and very deep
        depth = int(rng.choice([5, 31, 33, 1000, 100_000]))
        body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == 4:  # pixels of random shapes, types and sizes
        shape = [int(rng.integers(0, 3)), int(rng.choice([1, 16, 17])), 16, 3]
        values = np.round(rng.random(int(np.prod(shape))), 2).reshape(shape).tolist()
        body = json.dumps({"signature_name": "predict_pixels",
                           str(rng.choice(["instances", "inputs"])): values}).encode()  # fmt: skip
    elif kind == 5:  # bytes that are not JSON, or not UTF-8
        body = rng.bytes(int(rng.integers(0, 400)))
    elif kind == 6:  # truncated valid bodies
        body = json.dumps({"instances": [b64(IMAGE)] * 3}).encode()
        body = body[: int(rng.integers(0, len(body)))]
    elif kind == 7:  # many instances: over the batch, over the string budget
        count = int(rng.choice([0, 1, 9, 10_001]))
        body = json.dumps({"instances": [b64(IMAGE[:8])] * count}).encode()
    else:  # valid
        body = json.dumps(
            {"instances": [b64(img) for img in images[: int(rng.integers(1, 4))]]}
        ).encode()
    return method, path, body


def test_seeded_rest_fuzz_never_answers_5xx_and_the_server_stays_up(live):
    import http.client

    proc, stub = live
    BOMB_CACHE[:] = [make() for make in BOMBS.values()]
    rng = np.random.default_rng(20261130)
    images = real_images(rng)
    requests = [fuzz_rest_request(rng, images) for _ in range(600)]
    host, port = proc.rest_url.removeprefix("http://").split(":")
    rss = status_kb(proc.pid, "VmRSS") / 1024
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def worker(chunk):
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        for method, path, body in chunk:
            try:
                connection.request(method, path, body=body if method == "POST" else None)
                response = connection.getresponse()
                answer = response.read()
            except (http.client.HTTPException, ConnectionError):  # closed after a 413
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
                continue
            assert response.getheader("Content-Type", "").startswith("application/json"), answer
            if response.status != 200:
                message = __import__("json").loads(answer)["error"]
                assert "\n" not in message and len(message) < 1000, message[:200]
            with lock:
                codes[response.status] = codes.get(response.status, 0) + 1

    threads = [threading.Thread(target=worker, args=(requests[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    print("REST fuzz statuses:", codes)
    assert sum(codes.values()) >= 590, codes
    assert set(codes) <= REST_CODES, codes
    assert codes.get(200, 0) > 50 and codes.get(400, 0) > 200, codes
    assert proc.poll() is None
    assert stub.Predict(images_request([IMAGE]), timeout=10).outputs["scores"]
    assert status_kb(proc.pid, "VmRSS") / 1024 - rss < 300


def test_rest_slow_idle_and_excess_clients_are_bounded(model_dir):
    """A body that never comes ends at the request timeout (504, connection closed); a
    connection that sends nothing is closed; connections over the limit get 503."""
    limits = ServerLimits(request_timeout_s=2.0, rest_max_connections=4)
    handle = start_server(str(model_dir), "m", limits=limits, poll_wait_seconds=0, rest_api_port=0)
    sockets = []
    try:
        slow = socket.create_connection(("127.0.0.1", handle.rest_port), timeout=10)
        sockets.append(slow)
        slow.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
        idle = socket.create_connection(("127.0.0.1", handle.rest_port), timeout=10)
        sockets.append(idle)
        start = time.monotonic()
        answer = slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 504"), answer[:100]
        assert b"waiting for the request body (--request-timeout-seconds)" in answer
        assert idle.recv(100) == b""  # closed by the server, nothing sent
        assert time.monotonic() - start < 10
        sockets += [socket.create_connection(("127.0.0.1", handle.rest_port)) for _ in range(4)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", handle.rest_port), timeout=10)
        sockets.append(extra)
        refused = extra.recv(65536)
        assert refused.startswith(b"HTTP/1.1 503") and b"--rest-max-connections" in refused
    finally:
        for sock in sockets:
            sock.close()
        handle.stop(grace=1)


def test_bad_limit_flags_are_one_line_errors(model_dir, capsys):
    from pipeline_components import cli

    argv = ["serve", "--model-base-path", str(model_dir), "--model-name", "m", "--port", "0"]
    assert cli.main([*argv, "--request-timeout-seconds", "0"]) == 1
    assert capsys.readouterr().err.strip() == (
        "transfer-pipeline serve: error: --request-timeout-seconds must be > 0"
    )
