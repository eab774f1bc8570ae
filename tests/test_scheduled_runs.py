"""Months of scheduled runs: a code edit reaches serving, nested data re-runs ExampleGen, a
rollback sticks, and a new model after it is pushed (issue 14).

The pipeline runs in subprocesses from a copy of the package (PYTHONPATH), so an edit to the
copy's `trainer/export.py` is both what runs and what the code fingerprint reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_components import cli
from pipeline_components.core import codeprint

ROOT = Path(__file__).resolve().parents[1]
TRAINER = {
    "weights": "none",
    "image_size": [32, 32],
    "head": "global_average",
    "epochs": 1,
    "batch_size": 8,
    "steps_per_epoch": None,
    "augmentation": None,
}


def copy_package(dest: Path) -> Path:
    for name in codeprint.FIRST_PARTY:
        shutil.copytree(
            ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return dest


def write_config(tmp_path: Path, data: Path) -> Path:
    cfg = {
        "pipeline_name": "nightly",
        "pipeline_root": str(tmp_path / "root"),
        "data_root": str(data),
        "serving_dir": str(tmp_path / "serving"),
        "model_name": "shapes",
        "example_gen": {"num_shards": 1},
        "trainer": dict(TRAINER),
        "evaluator": {"min_accuracy": 0.0, "max_regression": 1.0},
        "infra_validator": {"num_examples": 2},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_from(package: Path, config: Path, cwd: Path) -> dict:
    """`transfer-pipeline run` in a subprocess importing `package`; returns its run.json."""
    env = {**os.environ, "PYTHONPATH": str(package), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline_components.cli", "run", "--config", str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = Path(yaml.safe_load(config.read_text())["pipeline_root"]) / "runs"
    newest = max(runs.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return json.loads((newest / "run.json").read_text())


MODEL_STEPS = ("ExampleGen", "Trainer", "Evaluator", "InfraValidator", "Pusher")


def statuses(record: dict) -> dict[str, str]:
    """The statuses of the components that make and push the model (data validation between
    ExampleGen and the Trainer re-runs on its own rules: tests/test_data_validation.py)."""
    return {n: c["status"] for n, c in record["components"].items() if n in MODEL_STEPS}


@pytest.mark.slow
def test_code_edit_nested_data_and_rollback_over_scheduled_runs(make_dataset, tmp_path, capsys):
    package = copy_package(tmp_path / "src")
    data = make_dataset(per_split=(5, 2, 2))
    config = write_config(tmp_path, data)
    serving = tmp_path / "serving" / "shapes"

    # night 1: everything runs, version 1 is pushed as stable
    first = run_from(package, config, tmp_path)
    assert set(statuses(first).values()) == {"completed"}
    assert first["push"]["version"] == 1 and first["serving"]["labels"] == {"stable": 1}
    assert len(first["code_fingerprint"]) == 64
    # every component that ran has its code recorded (the BulkInferrer is skipped: no input
    # set; the Tuner: no search space)
    ran = {c for c, e in first["components"].items() if e["status"] != "skipped"}
    assert set(first["code"]) == ran
    assert ran == set(first["components"]) - {"BulkInferrer", "Tuner"}
    report = Path(first["report"]).read_text()
    assert first["code_fingerprint"][:12] in report and first["code"]["Trainer"][:12] in report

    # a fix to export.py: the Trainer and everything after it run again, and the fix is served
    export_py = package / "pipeline_components" / "trainer" / "export.py"
    source = export_py.read_text()
    edited = source.replace(
        'limits = {"max_image_pixels": int(max_image_pixels)}',
        'limits = {"max_image_pixels": int(max_image_pixels), "fixed": True}',
    )
    assert edited != source
    export_py.write_text(edited)
    second = run_from(package, config, tmp_path)
    assert statuses(second) == {
        "ExampleGen": "cached",
        "Trainer": "completed",
        "Evaluator": "completed",
        "InfraValidator": "completed",
        "Pusher": "completed",
    }
    assert second["code"]["Trainer"] != first["code"]["Trainer"]
    assert second["code"]["ExampleGen"] == first["code"]["ExampleGen"]
    assert second["push"]["version"] == 2
    # same labels and signatures as version 1: the serving-contract check lets it through
    assert second["contract"]["compared_with"] == 1 and second["contract"]["differences"] == []
    limits = json.loads((serving / "2" / "assets" / "serving_limits.json").read_text())
    assert limits["fixed"] is True, "the edited export reached serving"

    # 3 a.m.: version 2 is rolled back; it leaves the base path but is kept
    rollback = ["rollback", "--serving-dir", str(tmp_path / "serving"), "--model-name", "shapes"]
    assert cli.main([*rollback, "--reason", "bad canary metrics"]) == 0
    assert sorted(os.listdir(serving)) == ["1"]
    assert (tmp_path / "serving" / "_rolled_back" / "shapes" / "2" / "saved_model.pb").exists()
    capsys.readouterr()
    versions = ["versions", "--serving-dir", str(tmp_path / "serving"), "--model-name", "shapes"]
    assert cli.main([*versions, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["labels"] == {"stable": 1}
    states = {r["version"]: (r["state"], r["labels"]) for r in listed["versions"]}
    assert states == {2: ("rolled_back", []), 1: ("served", ["stable"])}

    # the next night, unchanged data and code: everything cached, and nothing is pushed
    third = run_from(package, config, tmp_path)
    assert set(statuses(third).values()) == {"cached", "completed"}
    assert statuses(third)["Trainer"] == "cached"
    assert not third["push"]["pushed"]
    assert "rolled back (version 2" in third["push"]["reason"]
    assert third["serving"]["rolled_back"][0]["version"] == 2
    assert sorted(os.listdir(serving)) == ["1"], "the rolled-back model is not served again"
    models_config = (tmp_path / "serving" / "models.config").read_text()
    assert 'key: "stable"\n      value: 1' in models_config
    assert "Rolled back" in Path(third["report"]).read_text()

    # new images in a nested folder: ExampleGen reads them, so it runs again; the new model
    # is pushed, numbered above the rolled-back one
    nested = data / "train" / "circles" / "2019"
    nested.mkdir()
    shutil.copy(next((data / "train" / "circles").glob("*.jpg")), nested / "late.jpg")
    fourth = run_from(package, config, tmp_path)
    assert statuses(fourth)["ExampleGen"] == "completed"
    assert fourth["components"]["ExampleGen"]["result"]["splits"]["train"] == (
        first["components"]["ExampleGen"]["result"]["splits"]["train"] + 1
    )
    assert statuses(fourth)["Trainer"] == "completed"
    assert fourth["push"]["pushed"] and fourth["push"]["version"] == 3
    assert fourth["contract"]["compared_with"] == 1 and fourth["contract"]["differences"] == []
    assert fourth["serving"]["labels"] == {"stable": 3}
    assert sorted(os.listdir(serving)) == ["1", "3"]


def test_a_file_added_in_a_nested_folder_changes_examplegens_key(make_dataset):
    """ExampleGen reads <split>/<class>/** and its cache key lists exactly that: one listing."""
    from pipeline_components.core.component import ExecutionContext
    from pipeline_components.core.config import PipelineConfig
    from pipeline_components.example_gen import layout
    from pipeline_components.example_gen.component import COMPONENT
    from pipeline_components.example_gen.config import ExampleGenConfig

    data = make_dataset(per_split=(3, 1, 1))
    ctx = ExecutionContext(PipelineConfig(data_root=str(data)), ExampleGenConfig(), {}, "")
    before = COMPONENT.external_inputs(ctx)
    nested = data / "train" / "squares" / "2019" / "06"
    nested.mkdir(parents=True)
    shutil.copy(next((data / "train" / "squares").glob("*.jpg")), nested / "x.jpg")
    after = COMPONENT.external_inputs(ctx)
    assert after["data"]["num_files"] == before["data"]["num_files"] + 1
    assert after != before
    read = {s.relpath for s in layout.list_sources(str(data)).sources}
    assert "train/squares/2019/06/x.jpg" in read, "ExampleGen reads what the key lists"
