"""Server-side dynamic batching, and draining on SIGTERM through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_models import encode_image, export_tiny_model
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from serving.batching import BatchingParameters
from serving.client import PredictionClient
from serving.server import start_server

pytestmark = pytest.mark.timeout(120)

IMAGES = [encode_image(seed=20 + i, size=(12 + i, 18)) for i in range(8)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "m"
    export_tiny_model(str(base / "1"), num_classes=3, favourite=2, seed=5)
    return base


def start(base, **params):
    return start_server(
        str(base), "m", enable_batching=True, batching_parameters=BatchingParameters(**params)
    )


def request_for(images):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def test_concurrent_requests_are_merged_and_results_match_unbatched(base):
    fn = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    expected = [fn(images=tf.constant([img]))["probabilities"].numpy()[0] for img in IMAGES]
    handle = start(base, max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=1)
    barrier = threading.Barrier(len(IMAGES))
    results: dict[int, object] = {}

    def send(i):
        with PredictionClient(handle.target, "m", retries=0) as client:
            client.status()  # connect first, so the requests really are concurrent
            barrier.wait(10)
            results[i] = client.predict([IMAGES[i]])[0]

    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(IMAGES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        servable = handle.manager.resolve(model_pb2.ModelSpec(name="m"))
        calls, batches = servable.num_calls, handle.manager.scheduler.num_batches
    finally:
        handle.stop(grace=1)
    assert sorted(results) == list(range(len(IMAGES)))
    assert calls < len(IMAGES) and batches == calls  # merged: fewer model runs than requests
    for i, prediction in results.items():
        np.testing.assert_allclose(list(prediction.probabilities.values()), expected[i], atol=1e-6)
        assert prediction.class_name == "class_2"


def test_oversized_request_and_full_queue_get_tf_serving_codes(base):
    handle = start(
        base, max_batch_size=4, batch_timeout_micros=2_000_000, max_enqueued_batches=1,
        num_batch_threads=1,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(handle.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(request_for(IMAGES[:5]), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "Task size 5 is larger than maximum input batch size 4"

            waiting = stub.Predict.future(request_for(IMAGES[:1]), timeout=20)  # opens a batch
            scheduler = handle.manager.scheduler
            deadline = time.monotonic() + 10
            while scheduler.num_tasks < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as err:  # needs a second batch: queue is full
                stub.Predict(request_for(IMAGES[:4]), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "batch scheduling queue" in err.value.details()
            assert tf.make_ndarray(waiting.result().outputs["class_ids"]).tolist() == [2]
    finally:
        handle.stop(grace=1)


@pytest.fixture(scope="module")
def vgg19_base(tmp_path_factory):
    """The Trainer's real model (VGG19 without weights, 32x32): its convolutions are what an
    empty batch broke; the tiny Dense model of the other tests has none."""
    from pipeline_components.trainer.config import TrainerConfig
    from pipeline_components.trainer.export import export_saved_model
    from pipeline_components.trainer.model import create_model

    base = tmp_path_factory.mktemp("vgg19") / "m"
    net = create_model(TrainerConfig(backbone="vgg19", weights="none", image_size=[32, 32]), 2)
    export_saved_model(net, str(base / "1"), ["cat", "dog"], (32, 32), warmup_images=IMAGES[:1])
    return base


@pytest.mark.parametrize("batching", [False, True], ids=["batching off", "batching on"])
def test_an_empty_request_gets_empty_outputs_of_the_signature_types(vgg19_base, batching):
    """TF Serving clients expect 0 rows of every output for 0 images, not an error."""
    expected = {
        "probabilities": (types_pb2.DT_FLOAT, [0, 2]),
        "scores": (types_pb2.DT_FLOAT, [0]),
        "class_ids": (types_pb2.DT_INT64, [0]),
        "classes": (types_pb2.DT_STRING, [0]),
    }
    handle = start_server(
        str(vgg19_base), "m", enable_batching=batching, poll_wait_seconds=0,
        batching_parameters=BatchingParameters(max_batch_size=8, batch_timeout_micros=1000),
    )  # fmt: skip
    try:
        with grpc.insecure_channel(handle.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            empty = stub.Predict(request_for(np.array([], dtype=object)), timeout=30)
            one = stub.Predict(request_for(IMAGES[:1]), timeout=30)  # and the model still runs
    finally:
        handle.stop(grace=1)
    got = {
        name: (t.dtype, [d.size for d in t.tensor_shape.dim]) for name, t in empty.outputs.items()
    }
    assert got == expected
    assert [d.size for d in one.outputs["probabilities"].tensor_shape.dim] == [1, 2]
    # what TF Serving runs: the SavedModel itself, both signatures
    loaded = tf.saved_model.load(str(vgg19_base / "1"))
    pixels = loaded.signatures["predict_pixels"](pixels=tf.zeros([0, 32, 32, 3]))
    assert pixels["probabilities"].shape == (0, 2) and pixels["classes"].dtype == tf.string


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_drains_in_flight_requests_and_exits_zero(base, tmp_path):
    params = tmp_path / "batching_parameters.txt"
    params.write_text(
        "max_batch_size { value: 64 }\n"
        "batch_timeout_micros { value: 3000000 }\n"  # requests wait 3 s in the queue
        "num_batch_threads { value: 1 }\n"
    )
    port_file = tmp_path / "port"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "pipeline_components.cli", "serve",
        "--model-base-path", str(base), "--model-name", "m", "--port", "0",
        "--port-file", str(port_file), "--rest-api-port", "0", "--enable-batching",
        "--batching-parameters-file", str(params),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 150
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        target = f"127.0.0.1:{port_file.read_text().strip()}"
        clients = [PredictionClient(target, "m", retries=0, timeout=60) for _ in range(6)]
        for client in clients:
            assert client.wait_until_available(timeout=30) == 1
        outcomes: list[object] = []

        def send(client, image):
            try:
                outcomes.append(client.predict([image])[0].class_name)
            except Exception as e:
                outcomes.append(e)

        threads = [
            threading.Thread(target=send, args=(c, img))
            for c, img in zip(clients, IMAGES, strict=False)
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)  # all six are now waiting in the server's batch queue
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert outcomes == ["class_2"] * 6, output
    assert proc.returncode == 0, output
    assert "received SIGTERM: draining" in output
