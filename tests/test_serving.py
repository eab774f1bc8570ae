"""The local TF-Serving-compatible server, called with the project's client and bare stubs."""

from __future__ import annotations

import json
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_models import encode_image, export_tiny_model
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pipeline_components import cli
from pipeline_components.core.errors import PipelineError
from serving.client import PredictionClient, ServingError
from serving.servables import read_signature_defs
from serving.server import start_server

pytestmark = pytest.mark.timeout(120)

MODELS_CONFIG = """
model_config_list {{
  config {{
    name: "cls3"
    base_path: "{root}/cls3"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{ name: "binary" base_path: "{root}/binary" }}
}}
"""


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    export_tiny_model(str(root / "cls3" / "1"), num_classes=3, favourite=0, seed=0)
    export_tiny_model(str(root / "cls3" / "2"), num_classes=3, favourite=1, seed=1)
    export_tiny_model(str(root / "binary" / "1"), num_classes=2, favourite=1, seed=2)
    (root / "models.config").write_text(MODELS_CONFIG.format(root=root))
    return root


@pytest.fixture(scope="module")
def server(models_root):
    handle = start_server(model_config_file=str(models_root / "models.config"), port=0)
    try:
        yield handle
    finally:
        handle.stop(grace=1)


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def images_request(model, images, signature="serving_default", **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def in_process(path, images, signature="serving_default", key="images"):
    fn = tf.saved_model.load(str(path)).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{key: tf.constant(images)}).items()}


IMAGES = [
    encode_image(seed=10),
    encode_image(seed=11, size=(40, 30), fmt="jpeg"),
    encode_image(seed=12, size=(8, 8)),
]


# -- metadata and predictions ---------------------------------------------------------------


def test_metadata_matches_the_saved_model_signatures(server, stub, models_root):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "cls3"
    response = stub.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("cls3", 2)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    expected = read_signature_defs(str(models_root / "cls3" / "2"))
    assert dict(signature_map.signature_def) == expected

    with PredictionClient(server.target, "cls3") as client:
        metadata = client.metadata()
    signatures = metadata.signatures()
    assert metadata.version == 2
    assert signatures["serving_default"]["inputs"] == {
        "images": {"dtype": "DT_STRING", "shape": [-1]}
    }
    assert signatures["serving_default"]["outputs"] == {
        "probabilities": {"dtype": "DT_FLOAT", "shape": [-1, 3]},
        "scores": {"dtype": "DT_FLOAT", "shape": [-1]},
        "class_ids": {"dtype": "DT_INT64", "shape": [-1]},
        "classes": {"dtype": "DT_STRING", "shape": [-1]},
    }
    assert signatures["predict_pixels"]["inputs"]["pixels"] == {
        "dtype": "DT_FLOAT",
        "shape": [-1, 16, 16, 3],
    }


def test_predict_with_a_bare_stub_equals_the_saved_model_in_process(server, stub, models_root):
    response = stub.Predict(images_request("cls3", IMAGES), timeout=10)
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("cls3", 2, "serving_default")
    assert set(response.outputs) == {"probabilities", "scores", "class_ids", "classes"}
    assert len(response.outputs["probabilities"].float_val) == 9  # TF Serving's typed fields
    expected = in_process(models_root / "cls3" / "2", IMAGES)
    for name, value in expected.items():
        got = tf.make_ndarray(response.outputs[name])
        if value.dtype == object:
            assert got.tolist() == value.tolist()
        else:
            np.testing.assert_allclose(got, value, atol=1e-6)
    assert len(set(np.round(expected["scores"], 6))) == 3  # outputs depend on the pixels


def test_client_predictions_equal_in_process_and_name_classes(server, models_root):
    expected = in_process(models_root / "binary" / "1", IMAGES)
    labels = ["class_0", "class_1"]
    with PredictionClient(server.target, "binary", labels=labels) as client:
        predictions = client.predict(IMAGES)
    assert len(predictions) == 3
    for p, probs, score in zip(
        predictions, expected["probabilities"], expected["scores"], strict=True
    ):
        assert p.version == 1
        assert p.class_name == "class_1" and p.class_id == 1
        assert p.score == pytest.approx(float(score), abs=1e-6)
        assert list(p.probabilities) == labels
        np.testing.assert_allclose(list(p.probabilities.values()), probs, atol=1e-6)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)


def test_predict_pixels_signature_and_output_filter(server, stub, models_root):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "cls3"
    request.model_spec.signature_name = "predict_pixels"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(pixels))
    request.output_filter.append("probabilities")
    response = stub.Predict(request, timeout=10)
    assert list(response.outputs) == ["probabilities"]
    expected = in_process(models_root / "cls3" / "2", pixels, "predict_pixels", "pixels")
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), expected["probabilities"], atol=1e-6
    )


# -- versions and labels --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pin, version, favourite",
    [({}, 2, "class_1"), ({"version": 1}, 1, "class_0"), ({"version": 2}, 2, "class_1"),
     ({"version_label": "stable"}, 1, "class_0"), ({"version_label": "canary"}, 2, "class_1")],
)  # fmt: skip
def test_version_pinning_and_labels(server, pin, version, favourite):
    with PredictionClient(server.target, "cls3", **pin) as client:
        predictions = client.predict(IMAGES[:2])
        assert client.metadata().version == version
    assert [p.version for p in predictions] == [version, version]
    assert [p.class_name for p in predictions] == [favourite, favourite]


def test_model_status_and_health(server, channel):
    with PredictionClient(server.target, "cls3") as client:
        statuses = client.status()
        assert client.wait_until_available(timeout=5) == 2
    assert [(s.version, s.state, s.error_code) for s in statuses] == [
        (1, "AVAILABLE", "OK"),
        (2, "AVAILABLE", "OK"),
    ]
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "binary"
    request.model_spec.version.value = 1
    (status,) = models.GetModelStatus(request, timeout=10).model_version_status
    assert (status.version, status.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "cls3", "binary", "tensorflow.serving.PredictionService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- error codes ----------------------------------------------------------------------------


def bad_request(kind):
    if kind == "unknown model":
        return images_request("nope", IMAGES[:1])
    if kind == "path as model name":
        return images_request("../cls3", IMAGES[:1])
    if kind == "unknown version":
        return images_request("cls3", IMAGES[:1], version=9)
    if kind == "unknown label":
        return images_request("cls3", IMAGES[:1], label="beta")
    if kind == "unknown signature":
        return images_request("cls3", IMAGES[:1], signature="nope")
    if kind == "not an image":
        return images_request("cls3", [IMAGES[0], b"plain text, not an image"])
    if kind == "corrupt jpeg":
        return images_request("cls3", [IMAGES[1][:40]])
    request = images_request("cls3", IMAGES[:1])
    if kind == "wrong input name":
        request.inputs["pictures"].CopyFrom(request.inputs.pop("images"))
    elif kind == "wrong dtype":
        request.inputs["images"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    elif kind == "wrong rank":
        request.inputs["images"].CopyFrom(tf.make_tensor_proto([[IMAGES[0]]], dtype=tf.string))
    elif kind == "unknown output":
        request.output_filter.append("logits")
    return request


@pytest.mark.parametrize(
    "kind, code, message",
    [
        ("unknown model", "NOT_FOUND", "Servable not found for request: Latest(nope)"),
        ("path as model name", "NOT_FOUND", "Servable not found for request: Latest(../cls3)"),
        ("unknown version", "NOT_FOUND", "Servable not found for request: Specific(cls3, 9)"),
        ("unknown label", "INVALID_ARGUMENT", "Unrecognized servable version label: beta"),
        ("unknown signature", "FAILED_PRECONDITION", 'Serving signature key "nope" not found.'),
        ("not an image", "INVALID_ARGUMENT", "not an encoded JPEG, PNG, GIF or BMP image"),
        ("corrupt jpeg", "INVALID_ARGUMENT", "JPEG"),
        ("wrong input name", "INVALID_ARGUMENT",
         "input tensor alias not found in signature: pictures"),
        ("wrong dtype", "INVALID_ARGUMENT",
         "has dtype DT_FLOAT but signature serving_default expects DT_STRING"),
        ("wrong rank", "INVALID_ARGUMENT",
         "has shape [1, 1] but signature serving_default expects [-1]"),
        ("unknown output", "INVALID_ARGUMENT",
         "output tensor alias not found in signature: logits"),
    ],
)  # fmt: skip
def test_bad_requests_get_tf_serving_status_codes(server, stub, kind, code, message):
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(bad_request(kind), timeout=10)
    assert err.value.code().name == code
    assert message in err.value.details()
    assert "\n" not in err.value.details()
    # the server is unharmed
    assert stub.Predict(images_request("cls3", IMAGES[:1]), timeout=10).outputs["scores"]


def test_client_raises_one_line_serving_errors_with_the_code(server):
    client = PredictionClient(server.target, "cls3", version_label="beta", backoff_s=2.0)
    start = time.monotonic()
    with client, pytest.raises(ServingError) as err:
        client.predict(IMAGES[:1])
    assert time.monotonic() - start < 1.5  # not retried: only UNAVAILABLE is
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(err.value) == (
        f"TF Serving at {server.target}: INVALID_ARGUMENT: "
        "Unrecognized servable version label: beta"
    )


def test_other_apis_answer_like_tf_serving(server, stub, channel):
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "cls3"}), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for method, request in [
        (stub.Classify, classification_pb2.ClassificationRequest(model_spec={"name": "cls3"})),
        (stub.Regress, regression_pb2.RegressionRequest(model_spec={"name": "cls3"})),
        (stub.MultiInference, inference_pb2.MultiInferenceRequest()),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            method(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "use Predict" in err.value.details()
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"}), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Could not find any versions of model nope"
    with pytest.raises(grpc.RpcError) as err:
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_requests_over_the_size_limit_are_resource_exhausted(models_root):
    handle = start_server(str(models_root / "cls3"), "cls3", max_message_bytes=64 * 1024)
    try:
        with grpc.insecure_channel(handle.target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(images_request("cls3", [b"\xff\xd8\xff" + bytes(100_000)]), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.Predict(images_request("cls3", IMAGES[:1]), timeout=10).outputs["scores"]
    finally:
        handle.stop(grace=1)


def test_client_retries_unavailable_until_the_server_is_up(models_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handles = []
    starter = threading.Timer(
        0.3, lambda: handles.append(start_server(str(models_root / "binary"), "binary", port=port))
    )
    starter.start()
    try:
        with PredictionClient(f"127.0.0.1:{port}", "binary", retries=8, backoff_s=0.1) as client:
            assert client.predict(IMAGES[:1])[0].version == 1
    finally:
        starter.join()
        for handle in handles:
            handle.stop(grace=1)


# -- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def image_files(tmp_path):
    paths = []
    for i, data in enumerate(IMAGES[:2]):
        suffix = "png" if data.startswith(b"\x89PNG") else "jpg"
        path = tmp_path / f"img{i}.{suffix}"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def test_cli_predict_prints_a_table_and_json(server, image_files, capsys):
    argv = ["predict", "--server", server.target, "--model-name", "cls3", *image_files]
    assert cli.main([*argv, "--version", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["file", "class", "score"]
    for line, path in zip(lines[1:], image_files, strict=True):
        file, name, score = line.split()
        assert (file, name) == (path, "class_0") and 0 < float(score) <= 1

    assert cli.main([*argv, "--json", "--version-label", "canary"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in records] == image_files
    assert {r["class"] for r in records} == {"class_1"} and {r["version"] for r in records} == {2}
    assert set(records[0]["probabilities"]) == {"0", "1", "2"}


def test_cli_predict_missing_file_and_unreachable_server_are_one_line_errors(
    server, image_files, capsys
):
    argv = ["predict", "--server", server.target, "--model-name", "cls3"]
    assert cli.main([*argv, image_files[0], "/no/such/image.jpg"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "transfer-pipeline predict: error: image file /no/such/image.jpg does not exist"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    assert cli.main(["predict", "--server", dead, "--model-name", "cls3", image_files[0]]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err == f"transfer-pipeline predict: error: cannot reach TF Serving at {dead} (UNAVAILABLE)"
    )


def test_client_rejects_conflicting_pins_and_mismatched_labels(server):
    with pytest.raises(PipelineError, match="not both"):
        PredictionClient(server.target, "cls3", version=1, version_label="stable")
    client = PredictionClient(server.target, "cls3", labels=["a", "b"])
    with client, pytest.raises(PipelineError, match="3 class probabilities but 2 labels"):
        client.predict(IMAGES[:1])


def test_predict_through_the_server_is_not_slowed_by_time_outs(server):
    # a regression guard for accidental sleeps/polls on the request path
    with PredictionClient(server.target, "cls3") as client:
        client.predict(IMAGES[:1])
        start = time.monotonic()
        for _ in range(20):
            client.predict(IMAGES[:1])
    assert (time.monotonic() - start) / 20 < 0.25


def test_port_in_use_is_a_one_line_error(server, models_root):
    with pytest.raises(PipelineError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        start_server(str(models_root / "binary"), "binary", port=server.port)


def self_signed_certificate() -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) for localhost / 127.0.0.1."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_client_over_tls_with_root_certificates(models_root, tmp_path):
    key_pem, cert_pem = self_signed_certificate()
    credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    handle = start_server(
        str(models_root / "binary"), "binary", host="localhost", server_credentials=credentials
    )
    try:
        (tmp_path / "ca.pem").write_bytes(cert_pem)
        target = f"localhost:{handle.port}"
        with PredictionClient(target, "binary", root_certificates=str(tmp_path / "ca.pem")) as c:
            assert c.predict(IMAGES[:1])[0].class_name == "class_1"
        plaintext = PredictionClient(target, "binary", retries=0, timeout=5)
        with plaintext, pytest.raises(ServingError) as err:
            plaintext.predict(IMAGES[:1])
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        handle.stop(grace=1)
