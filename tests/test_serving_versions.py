"""Version management like TF Serving: pushes under load, partial and broken versions."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_models import encode_image, export_tiny_model, push_version

from pipeline_components import cli
from pipeline_components.core.errors import PipelineError
from serving.client import PredictionClient, ServingError
from serving.model_config import ModelConfig
from serving.server import start_server

pytestmark = pytest.mark.timeout(120)

IMAGE = encode_image(seed=3)
POLL_S = 0.1


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three SavedModels outside any base path: favourite class 0, 1 and 2."""
    root = tmp_path_factory.mktemp("exports")
    for favourite in range(3):
        export_tiny_model(str(root / f"fav{favourite}"), favourite=favourite, seed=favourite)
    return root


@pytest.fixture
def base(tmp_path, exported):
    base = tmp_path / "serving" / "m"
    push_version(str(exported / "fav0"), str(base), 1)
    return base


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def states(handle):
    with PredictionClient(handle.target, "m") as client:
        return {s.version: s.state for s in client.status()}


def test_new_version_pushed_under_load_is_picked_up_with_no_failed_requests(base, exported):
    handle = start_server(str(base), "m", poll_wait_seconds=POLL_S)
    stop = threading.Event()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    errors: list[Exception] = []

    def hammer(results):
        with PredictionClient(handle.target, "m", retries=0) as client:
            while not stop.is_set():
                try:
                    p = client.predict([IMAGE])[0]
                    results.append((p.version, p.class_name))
                except Exception as e:
                    errors.append(e)

    threads = [threading.Thread(target=hammer, args=(r,)) for r in seen]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: all(len(r) >= 3 for r in seen), what="traffic on version 1")
        push_version(str(exported / "fav1"), str(base), 2)
        wait_for(lambda: all(r and r[-1][0] == 2 for r in seen), what="version 2 answering")
        counts = [len(r) for r in seen]
        wait_for(lambda: all(len(r) >= c + 3 for r, c in zip(seen, counts, strict=True)))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        current = states(handle)
        handle.stop(grace=1)
    assert errors == []
    for results in seen:
        assert set(results) == {(1, "class_0"), (2, "class_1")}
        switch = results.index((2, "class_1"))  # once version 2 answers, version 1 never again
        assert set(results[switch:]) == {(2, "class_1")}
    assert current == {1: "END", 2: "AVAILABLE"}


def test_half_written_and_hidden_version_dirs_are_ignored_until_complete(base, exported):
    handle = start_server(str(base), "m", poll_wait_seconds=POLL_S)
    try:
        partial = base / "3"
        shutil.copytree(exported / "fav1", partial, ignore=shutil.ignore_patterns("saved_model.pb"))
        shutil.copytree(exported / "fav2", base / ".4.tmp-0a1b2c3d")  # Pusher's temp sibling
        (base / "latest").mkdir()
        time.sleep(POLL_S * 5)
        assert states(handle) == {1: "AVAILABLE"}
        with PredictionClient(handle.target, "m") as client:
            assert client.predict([IMAGE])[0].version == 1
            shutil.copy(exported / "fav1" / "saved_model.pb", partial / "saved_model.pb")
            wait_for(lambda: states(handle).get(3) == "AVAILABLE", what="version 3")
            assert client.predict([IMAGE])[0].class_name == "class_1"
    finally:
        handle.stop(grace=1)


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(base, exported, caplog):
    handle = start_server(
        str(base), "m", poll_wait_seconds=POLL_S, max_num_load_retries=2, load_retry_interval_s=0.2
    )
    try:
        with caplog.at_level(logging.ERROR, logger="serving.servables"):
            broken = base / ".2.tmp-deadbeef"
            shutil.copytree(exported / "fav1", broken)
            (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
            os.rename(broken, base / "2")
            wait_for(lambda: states(handle).get(2) == "END", what="version 2 to fail")
        with PredictionClient(handle.target, "m") as client:
            (v2,) = [s for s in client.status() if s.version == 2]
            assert v2.error_code != "OK" and v2.error_message
            prediction = client.predict([IMAGE])[0]
        assert (prediction.version, prediction.class_name) == (1, "class_0")
        assert states(handle) == {1: "AVAILABLE", 2: "END"}
        failures = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
        assert len(failures) == 3 and all("model m version 2" in f for f in failures)  # 1 + 2
        assert "(retry 1 of 2 in 0.2 s)" in failures[0]
        assert "(not retried until its saved_model.pb changes)" in failures[-1]
        time.sleep(0.2 * 3)  # retries used up: not retried while unchanged
        assert sum("failed to load" in r.getMessage() for r in caplog.records) == 3
    finally:
        handle.stop(grace=1)


def test_a_version_whose_first_load_fails_becomes_available_after_a_retry(base, exported):
    """A transient failure (here variables/ still being copied when saved_model.pb is already
    there; on an object store, a read error) is retried like TF Serving's --max_num_load_retries;
    before, the version stayed failed until its saved_model.pb changed."""
    handle = start_server(
        str(base), "m", poll_wait_seconds=POLL_S, max_num_load_retries=5, load_retry_interval_s=0.5
    )
    try:
        staging = base / ".2.tmp-0badc0de"
        shutil.copytree(exported / "fav1", staging, ignore=shutil.ignore_patterns("variables"))
        os.rename(staging, base / "2")
        with PredictionClient(handle.target, "m") as client:

            def version_2():
                return {s.version: s for s in client.status()}.get(2)

            wait_for(lambda: version_2() and version_2().error_code != "OK", what="a failed load")
            v2 = version_2()
            assert v2.state == "LOADING" and "variables" in v2.error_message  # retrying
            assert client.predict([IMAGE])[0].version == 1
            shutil.copytree(exported / "fav1" / "variables", base / "2" / "variables")
            wait_for(lambda: states(handle).get(2) == "AVAILABLE", what="version 2 after a retry")
            assert client.predict([IMAGE])[0].class_name == "class_1"
    finally:
        handle.stop(grace=1)


def test_server_waits_for_a_first_version_and_is_not_serving_meanwhile(tmp_path, exported):
    base = tmp_path / "m"
    base.mkdir()
    handle = start_server(str(base), "m", poll_wait_seconds=POLL_S)
    try:
        with grpc.insecure_channel(handle.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="")
            assert (
                health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            client = PredictionClient(handle.target, "m", retries=0)
            with client, pytest.raises(ServingError) as err:
                client.predict([IMAGE])
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            push_version(str(exported / "fav2"), str(base), 7)
            assert handle.wait_until_serving(timeout=30)
            assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        handle.stop(grace=1)


def test_specific_version_policy_serves_only_the_listed_versions(base, exported):
    push_version(str(exported / "fav1"), str(base), 2)
    config = ModelConfig("m", str(base), policy="specific", versions=(1,))
    handle = start_server(models=[config], poll_wait_seconds=0)
    try:
        assert states(handle) == {1: "AVAILABLE"}
        with PredictionClient(handle.target, "m") as client:
            assert client.predict([IMAGE])[0].version == 1
    finally:
        handle.stop(grace=1)


def test_startup_errors_are_one_line(tmp_path, exported, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(exported / "fav0", broken / "1")
    (broken / "1" / "saved_model.pb").write_bytes(b"junk")
    with pytest.raises(PipelineError, match="model m version 1 failed to load"):
        start_server(str(broken), "m")

    missing = str(tmp_path / "nope")
    assert cli.main(["serve", "--model-base-path", missing, "--model-name", "m"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"transfer-pipeline serve: error: model base path {missing} (model m) does not exist"
    )
    with pytest.raises(PipelineError, match="exactly one of"):
        start_server()


def test_warmup_requests_are_replayed_and_a_failing_one_fails_the_load(tmp_path, exported, caplog):
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    good = tmp_path / "good"
    push_version(str(exported / "fav0"), str(good), 1)
    with caplog.at_level(logging.INFO, logger="serving.servables"):
        start_server(str(good), "m", poll_wait_seconds=0).stop(grace=0)
    assert any("1 warmup requests" in r.getMessage() for r in caplog.records)

    bad = tmp_path / "bad"
    push_version(str(exported / "fav0"), str(bad), 1)
    request = predict_pb2.PredictRequest()
    request.inputs["images"].string_val.append(b"not an image")
    request.inputs["images"].dtype = 7  # DT_STRING
    request.inputs["images"].tensor_shape.dim.add(size=1)
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(bad / "1" / "assets.extra" / "tf_serving_warmup_requests")) as w:
        w.write(record.SerializeToString())
    with pytest.raises(PipelineError, match="warmup request 1 failed: input 'images' holds"):
        start_server(str(bad), "m", poll_wait_seconds=0)
