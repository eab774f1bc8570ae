"""`transfer-pipeline run`: the whole DAG on tiny generated data, caching, the gate, resume."""

import csv
import json
import os
import tempfile

import pytest
import yaml

from pipeline_components import cli
from pipeline_components.core import registry
from pipeline_components.evaluator import executor as evaluator
from pipeline_components.infra_validator.executor import serve_in_subprocess
from pipeline_components.orchestration import runner
from pipeline_components.trainer import executor as trainer
from serving.client import PredictionClient

TRAINER = {
    "weights": "none",
    "image_size": [32, 32],
    "head": "global_average",
    "epochs": 2,
    "batch_size": 8,
    "steps_per_epoch": None,
    "augmentation": None,
}


def write_config(tmp_path, data_root, name="p.yaml", **overrides):
    cfg = {
        "pipeline_name": "test",
        "pipeline_root": str(tmp_path / "root"),
        "data_root": str(data_root),
        "serving_dir": str(tmp_path / "serving"),
        "model_name": "shapes",
        "example_gen": {"num_shards": 2},
        "trainer": dict(TRAINER),
        "evaluator": {"min_accuracy": 0.0},
        "infra_validator": {"num_examples": 4},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(path, capsys, *extra):
    code = cli.main(["run", "--config", str(path), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def newest_record(tmp_path):
    runs = tmp_path / "root" / "runs"
    newest = max(runs.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return json.loads((newest / "run.json").read_text())


def assert_artifacts(record):
    comps = record["components"]
    eg, tr, ev = (comps[n]["output_dir"] for n in ("ExampleGen", "Trainer", "Evaluator"))
    for rel in ("labels.txt", "stats.json", "train", "validation", "test"):
        assert os.path.exists(os.path.join(eg, rel)), rel
    for rel in (
        "saved_model/saved_model.pb",
        "saved_model/assets/labels.txt",
        "saved_model/assets.extra/tf_serving_warmup_requests",
        "history.json",
        "plots/accuracy.png",
        "plots/loss.png",
        "logs",
        "checkpoints",
        "training_config.json",
    ):
        assert os.path.exists(os.path.join(tr, rel)), rel
    for rel in ("metrics.json", "blessing.json", "confusion_matrix.png", "errors.png"):
        assert os.path.exists(os.path.join(ev, rel)), rel
    report = record["report"]
    with open(report) as f:
        html = f.read()
    assert "data:image/png;base64," in html and record["run_id"] in html


@pytest.mark.slow
@pytest.mark.parametrize("classes", [("circles", "squares"), ("circles", "squares", "triangles")])
def test_end_to_end_then_fully_cached(make_dataset, tmp_path, capsys, classes):
    data = make_dataset(classes=classes, per_split=(8, 3, 3))
    path = write_config(tmp_path, data, batch_predict={"input": str(data / "test")})
    code, out, _ = run_cli(path, capsys)
    assert code == 0, out
    record = newest_record(tmp_path)
    assert record["status"] == "completed"
    statuses = {n: c["status"] for n, c in record["components"].items()}
    # no tuner: section, so no search; features cached (augmentation off): FeatureGen ran
    assert statuses.pop("Tuner") == "skipped" and statuses["FeatureGen"] == "completed"
    assert list(statuses.values()) == ["completed"] * 10
    assert record["push"]["pushed"] and record["push"]["version"] == 1
    assert record["infra_blessing"]["blessed"] and record["metrics"]["num_examples"] == 3 * len(
        classes
    )
    assert_artifacts(record)
    assert "pushed version 1" in out and "report: " in out
    pushed = tmp_path / "serving" / "shapes" / "1"
    assert (pushed / "saved_model.pb").exists()

    # the local server answers on the pushed model like the Evaluator predicted
    ev_dir = record["components"]["Evaluator"]["output_dir"]
    with open(os.path.join(ev_dir, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    images = [str(data / r["filename"]) for r in rows[:3]]
    with (
        tempfile.TemporaryDirectory() as work,
        serve_in_subprocess(str(pushed.parent), "shapes", 120, work) as target,
        PredictionClient(target, "shapes") as client,
    ):
        assert client.wait_until_available(60) == 1
        predictions = client.predict(images)
    for row, p in zip(rows, predictions, strict=False):
        assert p.class_name == row["predicted"]
        assert p.score == pytest.approx(float(row["score"]), abs=1e-5)

    # the BulkInferrer labelled batch_predict.input with the version just pushed, as the
    # Evaluator scored the same test images
    bulk = record["components"]["BulkInferrer"]
    assert bulk["result"]["model_version"] == 1
    assert bulk["result"]["num_predictions"] == len(rows) and bulk["result"]["num_errors"] == 0
    labelled = {}
    for part in sorted(os.listdir(bulk["output_dir"])):
        if part.startswith("predictions-"):
            with open(os.path.join(bulk["output_dir"], part)) as f:
                labelled.update((json.loads(line)["path"], json.loads(line)) for line in f)
    for row in rows:
        got = labelled[str(data / row["filename"])]
        assert got["class"] == row["predicted"] and got["model_version"] == 1
        assert got["score"] == pytest.approx(float(row["score"]), abs=1e-5)

    # unchanged data and config: everything cached, nothing new pushed (the ExampleValidator
    # checks the data once more, now against the pushed model's statistics)
    code, out, _ = run_cli(path, capsys)
    second = newest_record(tmp_path)
    assert code == 0 and second["run_id"] != record["run_id"]
    statuses = {n: c["status"] for n, c in second["components"].items()}
    assert statuses == {
        "ExampleGen": "cached",
        "StatisticsGen": "cached",
        "SchemaGen": "cached",
        "ExampleValidator": "completed",
        "FeatureGen": "cached",
        "Tuner": "skipped",
        "Trainer": "cached",
        "Evaluator": "cached",
        "InfraValidator": "cached",
        "Pusher": "completed",
        "BulkInferrer": "skipped",  # nothing new pushed
    }
    assert "no model was pushed" in second["components"]["BulkInferrer"]["reason"]
    assert not second["push"]["pushed"] and "already being served" in second["push"]["reason"]
    assert sorted(os.listdir(tmp_path / "serving" / "shapes")) == ["1"]

    # the InfraValidator alone, on the same artifacts, through its own subcommand
    comps = record["components"]
    out_dir = tmp_path / "infra-alone"
    code = cli.main(
        ["infra-validate", "--model", comps["Trainer"]["outputs"]["model"]]
        + ["--examples", comps["ExampleGen"]["output_dir"]]
        + ["--evaluation", comps["Evaluator"]["outputs"]["evaluation"]]
        + ["--blessing", comps["Evaluator"]["outputs"]["blessing"]]
        + ["--output", str(out_dir), "model_name=shapes", "num_examples=2"]
    )
    alone = json.loads((out_dir / "infra_blessing.json").read_text())
    assert code == 0 and alone["blessed"] and alone["num_examples"] == 2


@pytest.mark.slow
def test_model_missing_the_gate_is_not_pushed(make_dataset, tmp_path, capsys):
    data = make_dataset(per_split=(6, 2, 3))
    path = write_config(tmp_path, data, evaluator={"min_accuracy": 1.0})
    # a head left at its random initialisation cannot get every test image right
    code, out, _ = run_cli(path, capsys, "trainer.epochs=1", "trainer.learning_rate=1e-9")
    record = newest_record(tmp_path)
    assert code == 0, out  # a rightly unpushed model is the pipeline working
    assert record["status"] == "completed"
    assert record["blessing"]["blessed"] is False
    assert "< min_accuracy 1.0000" in record["blessing"]["reasons"][0]
    assert record["components"]["InfraValidator"]["status"] == "skipped"
    assert record["push"]["pushed"] is False
    assert record["push"]["reason"].startswith("model not blessed: accuracy")
    assert not (tmp_path / "serving" / "shapes").exists()
    assert "not pushed: model not blessed" in out


@pytest.mark.slow
def test_failed_run_resumes_without_retraining(make_dataset, tmp_path, monkeypatch):
    data = make_dataset(per_split=(6, 2, 2))
    cfg = registry.load_config(str(write_config(tmp_path, data)))

    def broken_evaluator(*args, **kwargs):
        raise RuntimeError("evaluator node preempted")

    monkeypatch.setattr(evaluator, "run_evaluator", broken_evaluator)
    with pytest.raises(runner.RunFailed) as failure:
        runner.run_pipeline(cfg)
    record = failure.value.record
    assert record["status"] == "failed"
    assert record["error"].startswith("Evaluator failed: RuntimeError: evaluator node preempted")
    assert record["components"]["Trainer"]["status"] == "completed"
    run_dir = tmp_path / "root" / "runs" / record["run_id"]
    assert "Traceback" in (run_dir / "error.log").read_text()
    assert (run_dir / "report.html").exists()  # a failed run still gets its page

    monkeypatch.undo()

    def must_not_train(*args, **kwargs):
        raise AssertionError("the Trainer ran again")

    monkeypatch.setattr(trainer, "run_trainer", must_not_train)
    resumed = runner.run_pipeline(cfg, resume=record["run_id"])
    assert resumed["run_id"] == record["run_id"] and resumed["status"] == "completed"
    assert resumed["components"]["Trainer"]["status"] == "completed"
    assert resumed["components"]["Evaluator"]["status"] == "completed"
    assert resumed["push"]["pushed"]


def test_interrupted_trainer_execution_is_resumed_in_place(make_dataset, tmp_path, monkeypatch):
    """A killed Trainer leaves checkpoints in its execution dir; the next run with the same
    inputs trains in that same dir (BackupAndRestore continues), not a fresh one."""
    data = make_dataset(per_split=(4, 2, 2))
    cfg = registry.load_config(str(write_config(tmp_path, data)))
    seen = []

    def killed_trainer(examples_dir, output_dir, config, **kwargs):
        seen.append(output_dir)
        os.makedirs(os.path.join(output_dir, "checkpoints"))
        raise KeyboardInterrupt  # SIGINT / preemption mid-training

    monkeypatch.setattr(trainer, "run_trainer", killed_trainer)
    with pytest.raises(KeyboardInterrupt):
        runner.run_pipeline(cfg)
    monkeypatch.setattr(evaluator, "run_evaluator", lambda *a, **k: 1 / 0)

    def second_trainer(examples_dir, output_dir, config, **kwargs):
        seen.append(output_dir)
        raise RuntimeError("stop here")

    monkeypatch.setattr(trainer, "run_trainer", second_trainer)
    with pytest.raises(runner.RunFailed):
        runner.run_pipeline(cfg)
    assert len(seen) == 2 and seen[0] == seen[1]


def test_config_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("pipeline_name: x\ntrainer: {epochs: two}\n")
    code, _, err = run_cli(path, capsys)
    assert code == 1
    assert err.strip() == (
        f"transfer-pipeline run: error: {path}: trainer.epochs: expected an integer, got 'two'"
    )
    path.write_text("pipline_name: x\n")
    code, _, err = run_cli(path, capsys)
    assert code == 1 and "unknown key 'pipline_name'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pipeline_root").exists()


def test_missing_data_root_fails_with_one_line_and_a_record(tmp_path, capsys):
    path = write_config(tmp_path, tmp_path / "no-such-data")
    code, out, err = run_cli(path, capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "ExampleGen failed" in err
    assert "no-such-data" in err
    record = newest_record(tmp_path)
    assert record["status"] == "failed" and record["components"]["ExampleGen"]["status"] == "failed"
    assert "run record:" in out
