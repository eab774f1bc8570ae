"""`transfer-pipeline serve`'s Prometheus page (serving/metrics.py) on a real server with a tiny
model: TF Serving's names, labels, buckets and exposition; requests counted over gRPC and REST
alike; bounded labels; the page gated by monitoring.config; rendering never blocks a prediction.
(Scraped by a real Prometheus in tests/test_monitoring.py.)"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import serving_models
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pipeline_components.core.errors import PipelineError
from serving import metrics as metrics_lib
from serving.batching import BatchingParameters
from serving.server import start_server

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[1]
MONITORING_CONFIG = REPO / "serving" / "config" / "monitoring.config"
IMAGES = [serving_models.encode_image(seed=i, size=(12, 12)) for i in range(3)]
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\} (?P<value>\S+)$")


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("metrics")
    serving_models.export_tiny_model(str(root / "m" / "1"), num_classes=3, favourite=1, seed=4)
    return root / "m"


@pytest.fixture(scope="module")
def server(model_base):
    handle = start_server(
        str(model_base),
        "m",
        poll_wait_seconds=0,
        rest_api_port=0,
        enable_batching=True,
        batching_parameters=BatchingParameters(
            max_batch_size=8, batch_timeout_micros=1000, num_batch_threads=1,
            allowed_batch_sizes=(4, 8),
        ),
        monitoring_config_file=str(MONITORING_CONFIG),
    )  # fmt: skip
    try:
        yield handle
    finally:
        handle.stop(grace=1)


def grpc_predict(target: str, images: list[bytes], model: str = "m") -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
        try:
            stub.Predict(request, timeout=30)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def http(url: str, body: bytes | None = None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


def rest_predict(base: str, model: str = "m") -> int:
    body = json.dumps({"instances": [{"b64": base64.b64encode(IMAGES[0]).decode()}]}).encode()
    return http(f"{base}/v1/models/{model}:predict", body)[0]


def page(handle) -> list[str]:
    status, body, content_type = http(handle.metrics_url)
    assert status == 200 and content_type.startswith("text/plain")
    return body.decode().splitlines()


def samples(lines: list[str], name: str) -> dict[str, float]:
    """{label text: value} of a metric's sample lines."""
    found = {}
    for line in lines:
        m = SAMPLE.match(line)
        if m and m["name"] == name:
            found[m["labels"]] = float(m["value"])
    return found


def test_requests_are_counted_as_tf_serving_counts_them(server):
    assert server.metrics_url == server.rest_url + "/monitoring/prometheus/metrics"
    for _ in range(2):
        assert grpc_predict(server.target, IMAGES[:2]) == grpc.StatusCode.OK
    assert grpc_predict(server.target, [b"not an image"]) == grpc.StatusCode.INVALID_ARGUMENT
    assert rest_predict(server.rest_url) == 200
    assert rest_predict(server.rest_url, "typo") == 404
    assert http(f"{server.rest_url}/v1/models/m")[0] == 200  # GetModelStatus: counted on REST
    lines = page(server)
    assert "# TYPE :tensorflow:serving:request_count counter" in lines  # no _total, no HELP
    assert samples(lines, ":tensorflow:serving:request_count") == {
        'model_name="m",status="OK"': 4,
        'model_name="m",status="INVALID_ARGUMENT"': 1,
        'model_name="_unknown_",status="NOT_FOUND"': 1,  # a name not configured: bounded
    }
    counts = samples(lines, ":tensorflow:serving:request_latency_count")
    assert counts == {  # answered OK only; the REST API label is the verb, "" for a GET
        'model_name="m",API="Predict",entrypoint="GRPC"': 2,
        'model_name="m",API="predict",entrypoint="REST"': 1,
        'model_name="m",API="",entrypoint="REST"': 1,
    }
    runtime = samples(lines, ":tensorflow:serving:runtime_latency_count")
    assert runtime == {'model_name="m",API="Predict",runtime="TF2"': 3}  # gRPC and REST runs
    ours = samples(lines, "transfer_pipeline_serving_requests_total")
    assert (
        ours['model_name="m",version="1",signature="serving_default",entrypoint="GRPC",status="OK"']
        == 2
    )
    assert (
        ours['model_name="m",version="",signature="",entrypoint="GRPC",status="INVALID_ARGUMENT"']
        == 1
    )


def test_histograms_have_tf_servings_buckets_in_its_format(server):
    assert grpc_predict(server.target, IMAGES[:1]) == grpc.StatusCode.OK
    lines = page(server)
    labels = 'model_name="m",API="Predict",entrypoint="GRPC"'
    buckets = [
        line for line in lines
        if line.startswith(f":tensorflow:serving:request_latency_bucket{{{labels},le=")
    ]  # fmt: skip
    les = [re.search(r'le="([^"]+)"', b)[1] for b in buckets]
    # Buckets::Exponential(10, 1.8, 33) as absl prints a double, then +Inf
    assert les[:6] == ["10", "18", "32.4", "58.32", "104.976", "188.957"]
    assert len(les) == 34 and les[-1] == "+Inf" and les[-2] == f"{10 * 1.8**32:.6g}"
    cumulative = [float(b.rsplit(" ", 1)[1]) for b in buckets]
    assert cumulative == sorted(cumulative)
    count = samples(lines, ":tensorflow:serving:request_latency_count")[labels]
    assert cumulative[-1] == count
    # batching: every request a task, every run a padded batch of an allowed size
    inputs = samples(lines, ":tensorflow:serving:batching_session:input_batch_size_count")
    processed = samples(lines, ":tensorflow:serving:batching_session:processed_batch_size_sum")
    assert inputs[""] >= 4 and processed[""] % 4 == 0
    padding = samples(lines, ":tensorflow:serving:batching_session:padding_size_count")
    assert set(padding) <= {'execution_batch_size="4"', 'execution_batch_size="8"'}
    queued = samples(lines, ":tensorflow:serving:batching_session:queuing_latency_count")
    assert queued == {'thread_pool_name=""': inputs[""]}
    assert samples(lines, ":tensorflow:serving:batching_session:wrapped_run_count")[""] >= 1
    loads = samples(lines, ":tensorflow:cc:saved_model:load_attempt_count")
    assert loads == {
        f'model_path="{Path(server.manager.models["m"].base_path) / "1"}",status="success"': 1
    }
    assert samples(lines, "transfer_pipeline_serving_model_version_state") == {
        'model_name="m",version="1",state="AVAILABLE"': 1
    }
    assert samples(lines, "transfer_pipeline_serving_available_versions") == {'model_name="m"': 1}


def test_a_hostile_client_cannot_grow_the_page(server):
    before = len(page(server))
    for i in range(40):
        assert rest_predict(server.rest_url, urllib.parse.quote(f"bogus-{i}-🐱")) == 404
        assert grpc_predict(server.target, IMAGES[:1], f"bogus-{i}") == grpc.StatusCode.NOT_FOUND
    lines = page(server)
    assert len(lines) <= before + 40  # new series only for new statuses, not per name
    assert not [line for line in lines if "bogus" in line]


def test_rendering_the_page_never_blocks_a_prediction(server, monkeypatch):
    """A page that cannot finish rendering (a stuck scrape) leaves predictions alone: it
    renders in its own thread, not on the event loop or a prediction worker."""
    release = threading.Event()
    render = server.metrics.render

    def stuck() -> bytes:
        release.wait(60)
        return render()

    monkeypatch.setattr(server.metrics, "render", stuck)
    scrape = threading.Thread(target=http, args=(server.metrics_url,), daemon=True)
    scrape.start()
    try:
        assert grpc_predict(server.target, IMAGES[:1]) == grpc.StatusCode.OK
        assert rest_predict(server.rest_url) == 200
        assert scrape.is_alive()  # still waiting for its page
    finally:
        release.set()
        scrape.join(30)


def test_without_monitoring_config_the_page_is_not_served(model_base, tmp_path):
    disabled = tmp_path / "off.config"
    disabled.write_text("prometheus_config { enable: false path: '/metrics' }\n")
    for config in (None, str(disabled)):
        handle = start_server(
            str(model_base), "m", poll_wait_seconds=0, rest_api_port=0,
            monitoring_config_file=config,
        )  # fmt: skip
        try:
            assert handle.metrics_url is None
            for path in ("/monitoring/prometheus/metrics", "/metrics"):
                assert http(handle.rest_url + path)[0] == 404
        finally:
            handle.stop(grace=1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("prometheus_config { enable: yes }", "not a valid MonitoringConfig text proto"),
        ('prometheus_config { enable: true path: "metrics" }', "must start with /"),
        ('prometheus_config { enable: true path: "/v1/models/m" }', "not with /v1/"),
    ],
)
def test_monitoring_config_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "monitoring.config"
    path.write_text(text)
    with pytest.raises(PipelineError) as e:
        metrics_lib.load_monitoring_config(str(path))
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_metrics_need_the_rest_port(model_base):
    with pytest.raises(PipelineError, match="served on the REST port: set --rest-api-port"):
        start_server(str(model_base), "m", monitoring_config_file=str(MONITORING_CONFIG))


def test_tf_servings_bucket_rule_and_default_path():
    """A value at a bucket's limit counts in the next bucket (TF's upper_bound), and an
    enabled config without a path serves at TF Serving's default."""
    histogram = metrics_lib.Histogram("h", "", (), (10.0, 20.0))
    for value in (9.9, 10.0, 20.0, 25.0):
        histogram.observe(value)
    lines = histogram.lines(tf_style=True)
    assert lines[1:4] == ['h_bucket{le="10"} 1', 'h_bucket{le="20"} 2', 'h_bucket{le="+Inf"} 4']
    assert metrics_lib.parse_monitoring_config("prometheus_config { enable: true }") == (
        "/monitoring/prometheus/metrics"
    )
