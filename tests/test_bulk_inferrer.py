"""batch-predict (the BulkInferrer): a folder of images labelled on Beam, equal to what the model
server answers; bad files as error rows; TFRecord input, CSV, version selection, one-line
errors."""

import csv
import io
import json
import logging
import re
import struct
import zlib

import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from evalfixtures import export_threshold_model, solid_png, write_split
from pipeline_components import cli
from pipeline_components.bulk_inferrer import executor as bulk
from pipeline_components.core.beam import BeamSetup
from pipeline_components.core.errors import PipelineError
from serving.client import PredictionClient
from serving.server import start_server

MULTI = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def encode(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def image(red, fmt="PNG", size=(20, 24)):
    arr = np.zeros((*size, 3), dtype=np.uint8)
    arr[..., 0] = red
    arr[..., 1:] = 128
    return encode(arr, fmt)


def png_bomb(width=30000, height=30000) -> bytes:
    """A valid PNG header claiming width x height pixels (a few hundred bytes)."""

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """serving/m/{1,2}: two versions that disagree on some images."""
    root = tmp_path_factory.mktemp("served")
    export_threshold_model(root / "m" / "1", 0.3)
    export_threshold_model(root / "m" / "2", 0.6)
    return root / "m"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 good images three levels deep (PNG and JPEG), a truncated JPEG, a text file and a
    hidden .DS_Store."""
    root = tmp_path_factory.mktemp("images") / "incoming"
    reds = np.random.default_rng(1).permutation(256)[:12]  # distinct images
    good = []
    for i, red in enumerate(reds):
        sub = root.joinpath(*["a", "b", "c"][: i % 3 + 1])
        sub.mkdir(parents=True, exist_ok=True)
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        path = sub / f"img {i}.{ext}"  # a space in the name
        path.write_bytes(image(int(red), fmt))
        good.append(str(path))
    jpeg = image(200, "JPEG")
    (root / "a" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "a" / "b" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return {"root": root, "good": sorted(good)}


def read_rows(out, suffix=".jsonl"):
    rows = []
    for part in sorted(out.glob(f"predictions-*{suffix}")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line]
    return sorted(rows, key=lambda r: r["path"])


def read_errors(out):
    rows = []
    for part in sorted(out.glob("errors-*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line]
    return sorted(rows, key=lambda r: r["path"])


def read_prediction_logs(out):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for part in sorted(out.glob("prediction_logs-*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(part)).as_numpy_iterator():
            logs.append(prediction_log_pb2.PredictionLog.FromString(record))
    return logs


def batch_predict(args, capsys):
    code = cli.main(["batch-predict", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.mark.slow
def test_folder_labelled_as_the_server_answers_on_one_and_two_workers(
    served, folder, tmp_path, capsys
):
    out = tmp_path / "out"
    args = ["--model", str(served), "--input", str(folder["root"]), "--output", str(out)]
    code, stdout, err = batch_predict(args, capsys)
    assert code == 0, err
    assert "labelled 12 images with m version 2" in stdout and "2 error(s)" in stdout

    rows = read_rows(out)
    assert [r["path"] for r in rows] == folder["good"]  # one row per good image, any depth
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("m", 2)}
    with (
        start_server(str(served), "m", port=0) as server,
        PredictionClient(server.target, "m", version=2, labels=["blue", "red"]) as client,
    ):
        answers = client.predict(folder["good"])
    for row, answer in zip(rows, answers, strict=True):
        assert answer.version == 2
        assert row["class"] == answer.class_name and row["class_id"] == answer.class_id
        assert row["score"] == pytest.approx(answer.score, abs=1e-5)
        for name, p in answer.probabilities.items():
            assert row["probabilities"][name] == pytest.approx(p, abs=1e-5)
    assert {r["class"] for r in rows} == {"blue", "red"}

    errors = read_errors(out)
    assert [e["path"] for e in errors] == [
        str(folder["root"] / "a" / "b" / "notes.txt"),
        str(folder["root"] / "a" / "broken.jpg"),
    ]
    assert errors[0]["reason"] == "not an image (not a JPEG, PNG, GIF, BMP or WebP file)"
    assert errors[1]["reason"].startswith("undecodable: Invalid JPEG data")

    # PredictionLogs: TF Serving's request (the image bytes) and response for every image
    logs = {
        log.predict_log.request.inputs["images"].string_val[0]: log.predict_log
        for log in read_prediction_logs(out)
    }
    assert len(logs) == 12
    for row in rows:
        with open(row["path"], "rb") as f:
            entry = logs[f.read()]
        assert (
            entry.response.model_spec.name == "m" and entry.response.model_spec.version.value == 2
        )
        assert list(entry.response.outputs["probabilities"].float_val) == pytest.approx(
            list(row["probabilities"].values()), abs=1e-7
        )
        assert entry.response.outputs["classes"].string_val[0].decode() == row["class"]

    summary = json.loads((out / "summary.json").read_text())
    counts = {c: sum(r["class"] == c for r in rows) for c in ("blue", "red")}
    assert summary["per_class"] == counts and summary["num_errors"] == 2
    assert summary["counters"]["batch_predict.predicted"] == 12
    assert summary["counters"]["batch_predict.hidden_files_skipped"] == 1

    # the same job on two worker processes: the same rows and errors
    out2 = tmp_path / "out2"
    args2 = ["--model", str(served), "--input", str(folder["root"]), "--output", str(out2)]
    code, _, err = batch_predict([*args2, "--", *MULTI], capsys)
    assert code == 0, err
    assert read_rows(out2) == rows and read_errors(out2) == errors


def test_header_checks_make_bombs_and_non_images_errors_before_decoding(tmp_path):
    good = image(10)
    files = {
        "ok.png": good,
        "bomb.png": png_bomb(),
        "empty.jpg": b"",
        "cut.png": good[:20],
        "photo.webp": encode(np.zeros((8, 8, 3), np.uint8), "WEBP"),
        ".hidden.png": good,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    spec = bulk.resolve_input(str(tmp_path))
    assert spec == bulk.InputSpec("files", (str(tmp_path / "**"),))
    with test_pipeline.TestPipeline() as p:
        read = p | bulk.ReadImages(spec, max_image_pixels=40_000_000)
        assert_that(read.images, equal_to([(str(tmp_path / "ok.png"), good)]), label="Images")
        assert_that(
            read[bulk.ERRORS],
            equal_to(
                [
                    (str(tmp_path / "bomb.png"), "too large: 30000x30000 > 40000000 pixels"),
                    (str(tmp_path / "empty.jpg"), "empty file (0 bytes)"),
                    (str(tmp_path / "cut.png"), "corrupt image: truncated PNG header"),
                    (
                        str(tmp_path / "photo.webp"),
                        "unsupported image format webp (serving_default takes JPEG, PNG, GIF "
                        "or BMP)",
                    ),
                ]
            ),
            label="Errors",
        )


def test_examplegen_tfrecords_to_csv_with_a_shared_model(served, tmp_path, capsys):
    items = [(solid_png(r), int(r > 0.5)) for r in (0.1, 0.4, 0.7, 0.9)]
    data = write_split(tmp_path / "examples", "test", items, ["blue", "red"], shards=2)
    write_split(tmp_path / "examples", "train", items[:2], ["blue", "red"], shards=1)
    out = tmp_path / "out"
    args = ["--model", str(served), "--input", str(data), "--output", str(out), "--version", "1"]
    # --model-copies: the model lives in a process of its own, shared (Beam's MultiProcessShared)
    extra = ["--output-format", "csv", "--num-shards", "1", "--model-copies", "1"]
    code, _, err = batch_predict([*args, *extra], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "errors-00000-of-00001.jsonl",
        "prediction_logs-00000-of-00001.tfrecord",
        "predictions-00000-of-00001.csv",
        "summary.json",
    ]
    rows = list(csv.DictReader((out / "predictions-00000-of-00001.csv").open()))
    assert list(rows[0]) == [
        "path", "class", "score", "p_blue", "p_red", "model_name", "model_version"
    ]  # fmt: skip
    by_path = {r["path"]: r for r in rows}
    assert sorted(by_path) == sorted(
        [
            f"test/{'red' if r > 0.5 else 'blue'}/{i:03d}.png"
            for i, r in enumerate((0.1, 0.4, 0.7, 0.9))
        ]
        + ["train/blue/000.png", "train/blue/001.png"]
    )  # every split, named by image/filename
    # version 1 (threshold 0.3) calls redness 0.4 red
    assert by_path["test/blue/001.png"]["class"] == "red"
    assert {r["model_version"] for r in rows} == {"1"}
    assert float(by_path["test/red/003.png"]["p_red"]) > 0.99
    assert json.loads((out / "summary.json").read_text())["input_kind"] == "tfrecords"


def test_model_and_version_selection(served, tmp_path):
    assert bulk.resolve_model(str(served)).version == 2
    one = bulk.resolve_model(str(served), version=1)
    assert (one.path, one.name, one.labels) == (str(served / "1"), "m", ("blue", "red"))
    plain = bulk.resolve_model(str(served / "1"))
    assert (plain.name, plain.version) == ("m", 1)
    config = tmp_path / "models.config"
    labels = "version_labels { key: 'stable' value: 1 } version_labels { key: 'canary' value: 2 }"
    config.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{served}" '
        f"model_version_policy {{ all {{}} }} {labels} }} }}"
    )
    assert (
        bulk.resolve_model(
            str(served), version_label="stable", model_config_file=str(config)
        ).version
        == 1
    )
    cases = [
        (dict(version=3), "version 3 of .* does not exist \\(versions: 1, 2\\)"),
        (dict(version_label="stable"), "needs --model-config-file"),
        (dict(version_label="beta", model_config_file=str(config)), "label 'beta' is not defined"),
        (dict(version=1, version_label="stable"), "not both"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PipelineError, match=message):
            bulk.resolve_model(str(served), **kwargs)
    with pytest.raises(PipelineError, match="neither a SavedModel nor a model base path"):
        bulk.resolve_model(str(tmp_path))


def test_bad_command_lines_are_one_line_errors(served, folder, tmp_path, capsys):
    out = tmp_path / "out"
    model, images = ["--model", str(served)], ["--input", str(folder["root"])]
    cases = [
        (["--model", str(tmp_path / "nope"), *images], "neither a SavedModel"),
        ([*model, "--input", str(tmp_path / "missing")], "does not exist"),
        ([*model, "--input", str(tmp_path / "*.png")], "matches no files"),
        ([*model, *images, "--output-format", "xml"], "output_format"),
        ([*model, *images, "--batch-size", "0"], "batch_size: must be in [1, 65536], got 0"),
        (["--model", str(served / "2"), *images, "--version", "1"], "is a SavedModel"),
    ]
    for args, message in cases:
        code, _, err = batch_predict([*args, "--output", str(out)], capsys)
        assert code == 1, message
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_off_by_default_in_a_pipeline_run(tmp_path):
    """The component is skipped unless batch_predict.input is set, or when nothing was pushed."""
    from pipeline_components.bulk_inferrer.component import COMPONENT
    from pipeline_components.bulk_inferrer.config import BatchPredictConfig
    from pipeline_components.core.artifacts import PUSHED_MODEL, Artifact
    from pipeline_components.core.component import ExecutionContext

    push = tmp_path / "push.json"
    push.write_text(json.dumps({"pushed": False, "reason": "model not blessed"}))
    inputs = {"push": Artifact(PUSHED_MODEL, str(push))}
    ctx = ExecutionContext(None, BatchPredictConfig(), inputs, "")
    assert COMPONENT.skip_reason(ctx) == "batch_predict.input is not set"
    ctx.config = BatchPredictConfig(input=str(tmp_path))
    assert "no model was pushed in this run (model not blessed)" in COMPONENT.skip_reason(ctx)
    push.write_text(json.dumps({"pushed": True, "version": 3, "path": str(tmp_path)}))
    assert COMPONENT.skip_reason(ctx) is None


def test_the_job_reports_its_progress_while_it_runs(served, folder, tmp_path, caplog):
    """Its counters every beam.progress_seconds (here 0.05 s) while the job runs (issue 28)."""
    caplog.set_level(logging.INFO, "pipeline_components.core.beam")
    options = bulk.BatchPredictOptions(beam_setup=BeamSetup(("--runner=DirectRunner",), 0.05))
    summary = bulk.run_batch_predict(
        bulk.resolve_model(str(served)), str(folder["root"]), str(tmp_path / "out"), options
    )
    assert summary["num_predictions"] == 12
    lines = [m for m in caplog.messages if m.startswith("BulkInferrer: ")]
    assert lines, "no progress line"
    for line in lines:
        found = re.fullmatch(
            r"BulkInferrer: (\d+) images read, (\d+) labelled, (\d+) errors .*", line
        )
        assert found, line
        assert int(found[2]) <= 12 and int(found[1]) <= 14
    read = [int(re.search(r": (\d+)", line)[1]) for line in lines]  # type: ignore[index]
    assert read == sorted(read) and read[-1] > 0, lines
