"""TF Serving's REST API of `transfer-pipeline serve`, the TF-free client (serving/client_lite)
and `transfer-pipeline predict`: the same answers over gRPC, REST through the real `curl` binary
and the client without TensorFlow; TF Serving's HTTP codes; requests that fit the server."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest
import serving_models
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pipeline_components import cli
from serving.batching import BatchingParameters
from serving.client import PredictionClient
from serving.server import start_server
from serving.services import ServerLimits

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
SHIPPED_BATCHING = REPO / "serving" / "config" / "batching_parameters.txt"
LABELS = ["cat 🐱", "dog", "Ёж"]  # any alphabet, byte-exact through every format
IMAGES = [serving_models.encode_image(seed=100 + i, size=(10 + i % 7, 14)) for i in range(20)]


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rest")
    serving_models.export_tiny_model(str(root / "m" / "1"), num_classes=3, favourite=1, seed=4)
    return root / "m"


@pytest.fixture(scope="module")
def server(model_base):
    handle = start_server(str(model_base), "m", poll_wait_seconds=0, rest_api_port=0)
    try:
        yield handle
    finally:
        handle.stop(grace=1)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def curl(url: str, body: bytes | None, tmp_path: Path) -> tuple[int, dict]:
    """The real curl binary; (HTTP code, JSON answer)."""
    command = ["curl", "-sS", "-o", str(tmp_path / "answer.json"), "-w", "%{http_code}", url]
    if body is not None:
        (tmp_path / "body.json").write_bytes(body)
        command += ["-H", "Content-Type: application/json"]
        command += ["--data-binary", "@" + str(tmp_path / "body.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout), json.loads((tmp_path / "answer.json").read_bytes())


LITE_SCRIPT = textwrap.dedent("""
    import json, sys
    from serving.client_lite import PredictionClient
    target, files = sys.argv[1], sys.argv[2:]
    with PredictionClient(target, "m", labels=LABELS, max_batch_size=8) as client:
        predictions = client.predict(files)
    print(json.dumps({
        "probabilities": [list(p.probabilities.values()) for p in predictions],
        "classes": [p.class_name for p in predictions],
        "labels": list(predictions[0].probabilities),
        "imported": sorted(m for m in ("tensorflow", "numpy") if m in sys.modules),
    }))
""").replace("LABELS", repr(LABELS))


def lite_predict(target: str, files: list[str]) -> dict:
    """serving.client_lite in a fresh interpreter of this venv (TensorFlow is installed here,
    so the answer says which heavy modules the client imported: none)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", LITE_SCRIPT, target, *files],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, data in enumerate(IMAGES):
        path = folder / f"{i:02d} фото.png"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def test_grpc_rest_through_curl_and_the_tf_free_client_give_the_same_probabilities(
    server, image_files, tmp_path
):
    with grpc.insecure_channel(server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(IMAGES, dtype=tf.string))
        grpc_probs = tf.make_ndarray(stub.Predict(request, timeout=30).outputs["probabilities"])
    assert grpc_probs.shape == (20, 3)

    body = json.dumps({"instances": [b64(image) for image in IMAGES]}).encode()
    code, answer = curl(f"{server.rest_url}/v1/models/m:predict", body, tmp_path)
    assert code == 200
    rest_probs = np.array([row["probabilities"] for row in answer["predictions"]])
    np.testing.assert_allclose(rest_probs, grpc_probs, atol=1e-6)
    columnar_body = json.dumps({"inputs": [b64(i) for i in IMAGES]}).encode()
    url = f"{server.rest_url}/v1/models/m/versions/1:predict"
    code, columnar = curl(url, columnar_body, tmp_path)
    assert code == 200
    np.testing.assert_allclose(columnar["outputs"]["probabilities"], grpc_probs, atol=1e-6)

    for target in (server.rest_url, server.target):  # the TF-free client: REST, then gRPC
        lite = lite_predict(target, image_files)
        assert lite["imported"] == [], target
        np.testing.assert_allclose(lite["probabilities"], grpc_probs, atol=1e-6)
        assert lite["labels"] == LABELS
        assert lite["classes"] == [f"class_{i}" for i in grpc_probs.argmax(axis=1)]


def test_status_and_metadata_over_rest_match_grpc(server, tmp_path):
    with grpc.insecure_channel(server.target) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m"}), timeout=10
        )
        metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec={"name": "m"}, metadata_field=["signature_def"]
            ),
            timeout=10,
        )
    code, rest_status = curl(f"{server.rest_url}/v1/models/m", None, tmp_path)
    assert code == 200
    assert rest_status == json_format.MessageToDict(
        status, always_print_fields_with_no_presence=True
    )
    assert rest_status["model_version_status"][0]["state"] == "AVAILABLE"
    code, rest_metadata = curl(f"{server.rest_url}/v1/models/m/versions/1/metadata", None, tmp_path)
    assert code == 200
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signature_map)
    assert rest_metadata["model_spec"] == {"name": "m", "version": "1", "signature_name": ""}
    assert rest_metadata["metadata"]["signature_def"] == json_format.MessageToDict(
        signature_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    sigs = rest_metadata["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"


# -- every REST error row, with TF Serving's HTTP codes -----------------------------------------


@pytest.fixture(scope="module")
def strict_server(model_base):
    """Small limits, and batching with max_batch_size 4: the rows below hit each of them."""
    limits = ServerLimits(max_message_bytes=200_000, rest_max_json_depth=8)
    handle = start_server(
        str(model_base), "m", poll_wait_seconds=0, rest_api_port=0, limits=limits,
        enable_batching=True, batching_parameters=BatchingParameters(max_batch_size=4),
        model_config_file=None,
    )  # fmt: skip
    try:
        yield handle
    finally:
        handle.stop(grace=1)


def post(url: str, path: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


IMAGE = IMAGES[0]
ERROR_ROWS = {
    # row: (path, body, HTTP code, words in the error)
    "unknown model": ("/v1/models/nope:predict", {"instances": [b64(IMAGE)]}, 404,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": ("/v1/models/m/versions/9:predict", {"instances": [b64(IMAGE)]}, 404,
                        "Specific(m, 9)"),
    "unknown label": ("/v1/models/m/labels/gold:predict", {"instances": [b64(IMAGE)]}, 400,
                      "Unrecognized servable version label: gold"),
    "bad JSON": ("/v1/models/m:predict", b'{"instances": [', 400, "JSON Parse error"),
    "empty body": ("/v1/models/m:predict", b"", 400, "The document is empty"),
    "not an object": ("/v1/models/m:predict", [1, 2], 400, "Is not object"),
    "neither instances nor inputs": ("/v1/models/m:predict", {"x": 1}, 400,
                                     "Missing 'inputs' or 'instances' key"),
    "wrong input name": ("/v1/models/m:predict", {"inputs": {"imagez": [b64(IMAGE)]}}, 400,
                         "Missing named input: images in 'inputs' object."),
    "wrong input name in instances": (
        "/v1/models/m:predict", {"signature_name": "predict_pixels", "instances": [{"pix": 1.0}]},
        400, "does not have named input: pix"),
    "wrong type": ("/v1/models/m:predict", {"instances": [3.5]}, 400,
                   "is not of expected type: string"),
    "bad base64": ("/v1/models/m:predict", {"instances": [{"b64": "!!"}]}, 400,
                   "Unable to base64 decode"),
    "not an image": ("/v1/models/m:predict", {"instances": [b64(b"plain text, not an image")]}, 400,
                     "not an encoded JPEG, PNG, GIF or BMP image"),
    "pixel bomb": ("/v1/models/m:predict", {"instances": [b64(serving_models.png_bomb(23_000))]},
                   400, "pixels (max_image_pixels)"),
    "more instances than the batch allows": (
        "/v1/models/m:predict", {"instances": [b64(IMAGE)] * 5}, 400,
        "Task size 5 is larger than maximum input batch size 4"),
    "unknown signature": ("/v1/models/m:predict", {"signature_name": "x", "inputs": []}, 400,
                          'Serving signature key "x" not found.'),
    "nested too deep": ("/v1/models/m:predict", {"inputs": [[[[[[[[[[b64(IMAGE)]]]]]]]]]]}, 400,
                        "nested deeper than 8 levels (--rest-max-json-depth)"),
    "body over the limit": ("/v1/models/m:predict", {"instances": [b64(b"x" * 200_000)]}, 413,
                            "over the limit of 200000 bytes (--max-message-bytes)"),
    "classify": ("/v1/models/m:classify", {"examples": []}, 501, "not implemented"),
    "GET on :predict": ("/v1/models/m:predict", None, 400, "Malformed request: GET"),
    "no model name": ("/v1/models", None, 400, "Missing model name in request."),
    "not the API": ("/v2/models/m", None, 404, "no such resource"),
}  # fmt: skip


@pytest.mark.parametrize("row", list(ERROR_ROWS))
def test_rest_errors_have_tf_serving_codes_and_one_line(strict_server, row):
    path, body, code, words = ERROR_ROWS[row]
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    status, answer = post(strict_server.rest_url, path, data, "GET" if body is None else "POST")
    assert (status, list(answer)) == (code, ["error"]), answer
    assert words in answer["error"] and "\n" not in answer["error"]


def test_empty_columnar_request_answers_empty_outputs(server):
    status, answer = post(server.rest_url, "/v1/models/m:predict", b'{"inputs": []}')
    assert status == 200
    assert answer == {
        "outputs": {"class_ids": [], "classes": [], "probabilities": [], "scores": []}
    }


# -- the TF-free client, alone in a fresh venv ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_client_package_installs_alone_without_tensorflow_and_predicts_over_rest(
    server, model_base, image_files, tmp_path
):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, pip = venv / "bin" / "python", venv / "bin" / "pip"
    install = subprocess.run(
        [str(pip), "install", "--quiet", "--disable-pip-version-check",
         str(REPO / "serving" / "client_lite")],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    tf_import = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True,
                               env=env, timeout=60)  # fmt: skip
    assert tf_import.returncode != 0 and b"No module named 'tensorflow'" in tf_import.stderr
    done = subprocess.run(
        [str(venv / "bin" / "transfer-pipeline-predict"), "--server", server.rest_url,
         "--model-name", "m", "--output-format", "jsonl", "--max-batch-size", "8",
         *image_files[:10]],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["file"] for r in records] == image_files[:10]
    fn = tf.saved_model.load(str(model_base / "1")).signatures["serving_default"]
    expected = fn(images=tf.constant(IMAGES[:10]))["probabilities"].numpy()
    got = [list(r["probabilities"].values()) for r in records]
    np.testing.assert_allclose(got, expected, atol=1e-6)


# -- requests that fit the server -------------------------------------------------------------


def test_predict_sends_100_images_to_a_server_with_the_shipped_batching_file(
    model_base, tmp_path, capsys
):
    """The shipped batching file caps a request at 32 images: 100 images used to be refused
    (transfer-pipeline predict sent 64 per request)."""
    images = [serving_models.encode_image(seed=300 + i, size=(8, 8 + i % 5)) for i in range(100)]
    files = []
    for i, data in enumerate(images):
        files.append(str(tmp_path / f"{i:03d}.png"))
        Path(files[-1]).write_bytes(data)
    handle = start_server(
        str(model_base), "m", poll_wait_seconds=0, rest_api_port=0, enable_batching=True,
        batching_parameters=str(SHIPPED_BATCHING),
    )  # fmt: skip
    fn = tf.saved_model.load(str(model_base / "1")).signatures["serving_default"]
    expected = fn(images=tf.constant(images))["probabilities"].numpy()
    try:
        for target in (handle.target, handle.rest_url):
            argv = ["predict", "--server", target, "--model-name", "m", "--output-format", "jsonl"]
            assert cli.main([*argv, str(tmp_path)]) == 0  # a folder: its 100 images, sorted
            out, err = capsys.readouterr()
            records = [json.loads(line) for line in out.splitlines()]
            assert [r["file"] for r in records] == files
            assert not any("error" in r for r in records)
            got = [list(r["probabilities"].values()) for r in records]
            np.testing.assert_allclose(got, expected, atol=1e-6)
            assert "100/100 images" in err  # progress on stderr: 4 requests
    finally:
        handle.stop(grace=1)


def test_a_bad_image_among_many_is_its_own_error_and_the_others_are_answered(
    server, image_files, tmp_path, capsys
):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    files = [*image_files[:6], str(bad), *image_files[6:9]]
    with PredictionClient(server.rest_url, "m", max_batch_size=4) as client:
        results = client.predict_each(files)
    assert [type(r).__name__ for r in results] == ["Prediction"] * 6 + ["PredictionFailure"] + [
        "Prediction"
    ] * 3
    assert "INVALID_ARGUMENT" in results[6].message

    argv = ["predict", "--server", server.target, "--model-name", "m", "--output-format", "csv"]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    assert cli.main([*argv, "--labels", str(labels), *files]) == 1
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert rows[0] == "file,class,class_id,score,version,error," + ",".join(
        f"probability:{label}" for label in LABELS
    )
    assert len(rows) == 11 and "INVALID_ARGUMENT" in rows[7] and rows[7].startswith(str(bad))
    assert "1 of 10 images failed" in err


def test_label_flag_and_deprecated_spellings(server, image_files, capsys):
    """An unknown label is an error of the whole call (one line, not one per image); the old
    --batch-size still works and says so."""
    argv = ["predict", "--server", server.rest_url, "--model-name", "m", *image_files[:5]]
    expected = (
        f"transfer-pipeline predict: error: TF Serving at {server.rest_url}: INVALID_ARGUMENT: "
        "Unrecognized servable version label: gold"
    )
    assert cli.main([*argv, "--version-label", "gold"]) == 1
    assert capsys.readouterr().err.strip() == expected
    assert cli.main([*argv, "--batch-size", "2", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6
    assert err.strip() == (
        "transfer-pipeline predict: --batch-size is deprecated and goes in the next release: "
        "use --max-batch-size"
    )


def test_curl_is_installed():
    assert shutil.which("curl"), "apt-get install -y curl"
