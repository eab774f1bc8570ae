"""Names from any alphabet (issue 26, defect 1): class folders such as `dogs 🐶` (outside the
Basic Multilingual Plane), `кошки` and `名前 with space` go through a whole run, and every file
that holds a class name or a path gives back exactly the string that went in; the console never
dies printing one, whatever its encoding."""

from __future__ import annotations

import csv
import glob
import html
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from pipeline_components import cli
from pipeline_components.core import artifacts, data_schema, examples
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen import convert, image_check, layout
from pipeline_components.tools import sample_data

NAMES = {"circles": "dogs 🐶", "squares": "кошки", "triangles": "名前 with space"}
LABELS = sorted(NAMES.values())  # labels.txt order: sorted folder names


def named_dataset(root: Path, per_split=(8, 3, 3)) -> Path:
    """sample_data's shapes, each class folder renamed to a name of NAMES."""
    sample_data.generate(str(root), tuple(NAMES), per_split, (32, 32), "jpg", 0)
    for split in os.listdir(root):
        for shape, name in NAMES.items():
            os.rename(root / split / shape, root / split / name)
    return root


# ------------------------------------------------------------------------- fast unit tests


def test_schema_round_trips_names_outside_the_bmp_and_writes_them_as_themselves():
    names = [*LABELS, 'quote " back\\slash', "tab\tnel\x85ls\u2028", " lead", "trail ", "null"]
    schema = {
        "version": 1,
        "classes": names,
        "formats": ["jpeg"],
        "channels": [3],
        "max_fraction_outside": 0.0,
        "image": {},
        "splits": {"train": {"class_shares": {n: {"min": 0.1, "max": 0.9} for n in names}}},
    }
    text = data_schema.render(schema)
    assert data_schema.loads(text) == schema  # json.dumps wrote \ud83d\udc36: 2 lone surrogates
    assert '"dogs 🐶"' in text and '"кошки"' in text  # readable, not escaped
    text.encode("utf-8")  # nothing unencodable (a lone surrogate) in the file


def test_labels_files_are_read_exactly(tmp_path):
    # str.strip() and splitlines() changed names that end in a space or hold U+3000, U+0085
    names = ["dogs 🐶", "trail ", " lead", "全角\u3000", "x\xa0"]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    assert examples.read_labels(str(tmp_path)) == names
    assert artifacts.parse_labels("a\r\nb 🐶\r\n") == ["a", "b 🐶"]  # CRLF written by hand


def test_class_folders_that_cannot_be_written_are_refused_naming_them(tmp_path):
    for split in ("train", "test"):
        for name in ("ok", "fine 🐶"):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "a.jpg").write_bytes(b"x")
    assert layout.list_sources(str(tmp_path)).labels == ["fine 🐶", "ok"]
    bad = os.path.join(os.fsencode(tmp_path), b"train", b"caf\xe9")  # Latin-1, not UTF-8
    os.makedirs(bad)
    with open(os.path.join(bad, b"a.jpg"), "wb") as f:
        f.write(b"x")
    with pytest.raises(PipelineError) as e:
        layout.list_sources(str(tmp_path))
    assert str(e.value) == (
        f"class folder {tmp_path}/train/caf\\xe9: the name is not valid UTF-8; rename it"
    )
    os.rename(bad, tmp_path / "train" / "two\nlines")
    with pytest.raises(PipelineError, match=r"train/two\\nlines: the name holds the control"):
        layout.list_sources(str(tmp_path))


def test_a_file_name_that_is_not_utf8_is_skipped_as_bad():
    name = os.fsdecode(b"cats/caf\xe9.jpg")
    src = layout.SourceFile("train/" + name, "train", "train", 0)
    result, record = convert.convert_file("/nonexistent", ["cats", "dogs"], src)
    assert record is None and result.bad and result.reason == "file name is not valid UTF-8"
    assert image_check.shown(name) == "cats/caf\\xe9.jpg"


def test_a_c_locale_without_utf8_mode_is_named_as_the_cause(tmp_path):
    (tmp_path / "dogs 🐶").mkdir()
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = (
        "import os, sys; from pipeline_components.example_gen.image_check import name_problem;"
        "print(name_problem(os.listdir(sys.argv[1])[0]))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True,
                          capture_output=True, text=True)  # fmt: skip
    assert done.stdout.strip() == (
        "is UTF-8 but this process reads file names as ascii (run it with PYTHONUTF8=1 or a "
        "UTF-8 locale)"
    )


# ------------------------------------------------------------------------------ end to end


def _run_pipeline_piped(config: Path) -> subprocess.CompletedProcess:
    """`transfer-pipeline run` with its output piped to an ASCII-only stream (the encoding a
    console gets from PYTHONIOENCODING=ascii or a non-UTF-8 locale)."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    cmd = [sys.executable, "-m", "pipeline_components.cli", "run", "--config", str(config)]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=600)


def _predict(target: str, images: list[str], labels: str, *extra: str) -> str:
    """`transfer-pipeline predict` as a user runs it: LANG=C, PYTHONIOENCODING unset, piped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONIOENC"))}
    env["LANG"] = "C"
    cmd = [sys.executable, "-m", "pipeline_components.cli", "predict", *images]
    cmd += ["--server", target, "--model-name", "m", "--labels", labels, *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0 and b"Error" not in done.stderr, done.stderr.decode()[-2000:]
    return done.stdout.decode("utf-8")


def _read_shards(folder: str, pattern: str) -> list[str]:
    return [Path(p).read_text(encoding="utf-8") for p in sorted(glob.glob(f"{folder}/{pattern}"))]


def _assert_batch_outputs(out_dir: str, data: Path) -> None:
    """PredictionLogs and the JSONL rows of one BulkInferrer output."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    rows = [json.loads(line) for t in _read_shards(out_dir, "predictions-*.jsonl") for line in
            t.splitlines()]  # fmt: skip
    assert len(rows) == 9
    for row in rows:
        assert row["class"] in LABELS and list(row["probabilities"]) == LABELS
        assert row["path"].startswith(str(data / "test")) and os.path.exists(row["path"])
        assert Path(row["path"]).parent.name == row["path"].split("/")[-2] in LABELS
    logs = sorted(glob.glob(f"{out_dir}/prediction_logs-*.tfrecord"))
    classes = []
    for record in tf.data.TFRecordDataset(logs):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        classes.append(log.predict_log.response.outputs["classes"].string_val[0].decode("utf-8"))
    assert sorted(classes) == sorted(r["class"] for r in rows)


@pytest.mark.slow
def test_names_from_any_alphabet_round_trip_through_a_whole_run(tmp_path):
    from pipeline_components.infra_validator.executor import serve_in_subprocess

    data = named_dataset(tmp_path / "données 🐶")  # the path holds them too
    cfg = {
        "pipeline_name": "names",
        "pipeline_root": str(tmp_path / "root"),
        "data_root": str(data),
        "serving_dir": str(tmp_path / "serving"),
        "model_name": "m",
        "example_gen": {"num_shards": 2},
        "trainer": {"weights": "none", "image_size": [32, 32], "head": "global_average",
                    "epochs": 1, "batch_size": 8, "steps_per_epoch": None, "augmentation": None},
        "evaluator": {"min_accuracy": 0.0},
        "infra_validator": {"num_examples": 4},
        "batch_predict": {"input": str(data / "test")},
    }  # fmt: skip
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")

    done = _run_pipeline_piped(config)
    out, err = done.stdout.decode("ascii"), done.stderr.decode("ascii", "replace")
    assert done.returncode == 0, err[-3000:]
    assert "UnicodeEncodeError" not in err
    assert "dogs \\U0001f436" in out  # the class table, escaped for the ASCII console

    runs = tmp_path / "root" / "runs"
    run_dir = next(runs.iterdir())
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert record["status"] == "completed", record
    comps = {name: c["output_dir"] for name, c in record["components"].items()}
    assert record["components"]["ExampleGen"]["result"]["labels"] == LABELS
    assert record["config"]["data_root"] == str(data)

    # ExampleGen: labels.txt byte for byte, stats.json
    labels_bytes = ("\n".join(LABELS) + "\n").encode("utf-8")
    assert Path(comps["ExampleGen"], "labels.txt").read_bytes() == labels_bytes
    stats = json.loads(Path(comps["ExampleGen"], "stats.json").read_text(encoding="utf-8"))
    assert stats["labels"] == LABELS and stats["data_root"] == str(data)
    assert list(stats["splits"]["train"]["per_class"]) == LABELS
    # StatisticsGen, SchemaGen
    statistics = json.loads(Path(comps["StatisticsGen"], "statistics.json").read_text("utf-8"))
    assert statistics["labels"] == LABELS
    assert sorted(statistics["splits"]["test"]["classes"]) == LABELS
    schema_text = Path(comps["SchemaGen"], "schema.yaml").read_text(encoding="utf-8")
    schema = yaml.safe_load(schema_text)
    assert schema["classes"] == LABELS and "dogs 🐶" in schema_text
    assert sorted(schema["splits"]["train"]["class_shares"]) == LABELS
    # the model and the Evaluator
    model_labels = Path(comps["Trainer"], "saved_model", "assets", "labels.txt")
    assert model_labels.read_bytes() == labels_bytes
    # (and example_gen.exif_transpose, on by default, reached the exported model)
    preprocessing = Path(comps["Trainer"], "saved_model", "assets", "preprocessing.json")
    recorded = json.loads(preprocessing.read_text())["exif_transpose"]
    assert recorded is stats["exif_transpose"] is True
    with open(Path(comps["Evaluator"], "predictions.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [k for k in rows[0] if k.startswith("p_")] == [f"p_{n}" for n in LABELS]
    assert {r["label"] for r in rows} == set(LABELS) and {r["predicted"] for r in rows} <= set(
        LABELS
    )
    assert {r["filename"].split("/")[1] for r in rows} == set(LABELS)
    # the report
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    for name in LABELS:
        assert html.escape(name) in report

    # the BulkInferrer of the run (JSONL + PredictionLogs), and one alone writing CSV
    _assert_batch_outputs(comps["BulkInferrer"], data)
    csv_out = tmp_path / "batch-csv"
    base = str(tmp_path / "serving" / "m")
    argv = [
        "batch-predict",
        "--model",
        base,
        "--input",
        str(data / "test"),
        "--output-format",
        "csv",
    ]
    assert cli.main([*argv, "--output", str(csv_out)]) == 0
    table = list(csv.reader(io.StringIO("".join(_read_shards(str(csv_out), "predictions-*.csv")))))
    assert table[0][:3] == ["path", "class", "score"] and table[0][3:6] == [
        f"p_{n}" for n in LABELS
    ]
    assert {r[1] for r in table[1:] if r[0] != "path"} <= set(LABELS)

    # KFP parameters: the data_root default and the config every task starts from
    from kfp_local import load

    spec_path = tmp_path / "p.kfp.yaml"
    volumes = f"kfp.volumes={{pipeline: {tmp_path}}}"
    argv = ["compile-kfp", "--config", str(config), "--output", str(spec_path)]
    assert cli.main([*argv, "--image", "registry.example.com/tp:1", volumes]) == 0
    spec, _ = load(spec_path)
    params = spec.root.input_definitions.parameters
    assert params["data_root"].default_value.string_value == str(data)
    nullable = params["batch_predict_input"].default_value.string_value  # YAML text
    assert yaml.safe_load(nullable) == str(data / "test")

    # the client: table and JSON, LANG=C, output piped
    images = [str(data / "test" / "dogs 🐶" / n) for n in sorted(os.listdir(data / "test" /
              "dogs 🐶"))[:2]]  # fmt: skip
    with tempfile.TemporaryDirectory() as work, serve_in_subprocess(base, "m", 120, work) as target:
        table_out = _predict(target, images, str(model_labels))
        as_json = json.loads(_predict(target, images, str(model_labels), "--json"))
    assert [r["file"] for r in as_json] == images
    for r in as_json:
        assert r["class"] in LABELS and list(r["probabilities"]) == LABELS
        row = next(line for line in table_out.splitlines() if line.startswith(r["file"]))
        assert row.split("  ")[-2].strip() == r["class"]  # the names as they are
